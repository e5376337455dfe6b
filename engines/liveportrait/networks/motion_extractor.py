"""M: the motion extractor, a ConvNeXt-V2-tiny with seven linear heads (keys under ``detector.``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = {"kp": 63, "scale": 1, "pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63}


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation over (H, W) of an NHWC tensor."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.sqrt((x * x).sum(dim=(1, 2), keepdim=True))
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, in_chans: int = 3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_bins: int = 66,
                 num_kp: int = 21):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNormChannelsFirst(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNormChannelsFirst(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])]) for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        sizes = dict(HEADS, kp=3 * num_kp, exp=3 * num_kp, pitch=num_bins, yaw=num_bins, roll=num_bins)
        for name, size in sizes.items():
            self.add_module(f"fc_{name}", nn.Linear(dims[-1], size))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {name: getattr(self, f"fc_{name}")(x) for name in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}


class MotionExtractor(nn.Module):
    """Image (B,3,256,256) in [0,1] -> raw heads {pitch, yaw, roll (B,66), t (B,3), exp (B,63), scale (B,1), kp (B,63)}."""

    def __init__(self, num_kp: int = 21, num_bins: int = 66, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        self.detector = ConvNeXtV2(depths=tuple(depths), dims=tuple(dims), num_bins=num_bins, num_kp=num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)

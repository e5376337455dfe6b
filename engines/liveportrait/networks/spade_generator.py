"""G: the SPADE decoder, warped feature (B,256,64,64) -> image (B,3,512,512) in [0,1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avatarstream.engines.liveportrait.networks.spectral_norm import SpectralNormConv2d


class SPADE(nn.Module):
    """Instance norm modulated by a per-pixel (1 + gamma, beta) predicted from the segmentation map."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128):
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEDecoder(nn.Module):
    def __init__(self, upscale: int = 2, max_features: int = 512, block_expansion: int = 64, out_channels: int = 64,
                 num_down_blocks: int = 2, spade_hidden: int = 128):
        super().__init__()
        input_channels = block_expansion * 2 ** num_down_blocks  # 256
        label_nc = input_channels
        self.fc = nn.Conv2d(input_channels, 2 * input_channels, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * input_channels, 2 * input_channels, label_nc, spade_hidden))
        self.up_0 = SPADEResnetBlock(2 * input_channels, input_channels, label_nc, spade_hidden)
        self.up_1 = SPADEResnetBlock(input_channels, out_channels, label_nc, spade_hidden)
        self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * upscale * upscale, 3, padding=1),
                                      nn.PixelShuffle(upscale_factor=upscale))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))

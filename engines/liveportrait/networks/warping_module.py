"""W: dense motion from keypoints, 3-D warp of the appearance volume, and the 2-D feature for G.

Inputs: ``feature_3d`` (B,32,16,64,64), ``kp_driving`` and ``kp_source`` (B,21,3).
Output dict: ``out`` (B,256,64,64), ``deformation`` (B,16,64,64,3), ``occlusion_map`` (B,1,64,64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avatarstream.engines.liveportrait.grid_sample import grid_sample_3d, make_coordinate_grid
from avatarstream.engines.liveportrait.networks.blocks import DownBlock3d, SameBlock2d, UpBlock3d

KP_VARIANCE = 0.01


class Encoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else min(max_features, block_expansion * 2 ** i),
                        min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            in_filters = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(in_filters, min(max_features, block_expansion * 2 ** i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """Keypoints -> per-voxel deformation (softmax mix of 21 translations + identity) and an occlusion map."""

    def __init__(self, block_expansion: int = 32, num_blocks: int = 5, max_features: int = 1024, num_kp: int = 21,
                 feature_channel: int = 32, reshape_depth: int = 16, compress: int = 4, estimate_occlusion_map: bool = True,
                 spatial_size: tuple[int, int] = (64, 64)):
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
                          if estimate_occlusion_map else None)
        self.register_buffer("identity_grid", make_coordinate_grid(reshape_depth, *spatial_size),
                             persistent=False)

    def _grid(self, d: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        grid = self.identity_grid
        if tuple(grid.shape[:3]) != (d, h, w):
            grid = make_coordinate_grid(d, h, w)
        return grid.to(device=like.device, dtype=torch.float32)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, d, h, w = feature.shape
        k = self.num_kp
        feature = F.relu(self.norm(self.compress(feature)))  # (B,4,D,H,W)
        # Keypoints, grids and heatmaps stay float32 under autocast (fp16 would move the sampling points
        # by up to ~0.26 px of the 64-wide volume); only the convolutions run in half precision.
        grid = self._grid(d, h, w, feature).reshape(1, 1, d, h, w, 3)
        kp_d = kp_driving.float().reshape(b, k, 1, 1, 1, 3)
        kp_s = kp_source.float().reshape(b, k, 1, 1, 1, 3)
        # Sparse motions: slot 0 is the identity (background), slot k translates keypoint k back to the source.
        sparse_motion = torch.cat([grid.expand(b, 1, d, h, w, 3), grid - kp_d + kp_s], dim=1)  # (B,K+1,D,H,W,3)
        c = feature.shape[1]
        repeated = feature.unsqueeze(1).expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w)
        deformed = grid_sample_3d(repeated.float(), sparse_motion.reshape(b * (k + 1), d, h, w, 3)).reshape(b, k + 1, c, d, h, w)
        # Heatmaps: Gaussian around each driving keypoint minus the same around the source keypoint.
        gauss_d = torch.exp(-0.5 * ((grid - kp_d) ** 2).sum(-1) / KP_VARIANCE)
        gauss_s = torch.exp(-0.5 * ((grid - kp_s) ** 2).sum(-1) / KP_VARIANCE)
        heatmap = torch.cat([torch.zeros_like(gauss_d[:, :1]), gauss_d - gauss_s], dim=1).unsqueeze(2)
        prediction = self.hourglass(torch.cat([heatmap, deformed], dim=2).reshape(b, -1, d, h, w))
        mask = torch.softmax(self.mask(prediction).float(), dim=1).unsqueeze(-1)  # (B,K+1,D,H,W,1), fp32
        deformation = (sparse_motion * mask).sum(dim=1)  # (B,D,H,W,3)
        out = {"deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512, num_down_blocks: int = 2,
                 reshape_channel: int = 32, estimate_occlusion_map: bool = True, dense_motion_params: dict | None = None):
        super().__init__()
        params = dict(block_expansion=32, max_features=1024, num_blocks=5, reshape_depth=16, compress=4)
        params.update(dense_motion_params or {})
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, feature_channel=reshape_channel,
                                                       estimate_occlusion_map=estimate_occlusion_map, **params)
        self.third = SameBlock2d(max_features, block_expansion * (2 ** num_down_blocks), lrelu=True)
        self.fourth = nn.Conv2d(block_expansion * (2 ** num_down_blocks), block_expansion * (2 ** num_down_blocks), 1)

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = grid_sample_3d(feature_3d.float(), dense["deformation"])  # fp32 grid and volume, even under autocast
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(b, c * d, h, w)))
        if "occlusion_map" in dense:
            out = out * dense["occlusion_map"]
        return {"out": out, **dense}

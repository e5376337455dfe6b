"""F: the appearance feature extractor, image (B,3,256,256) in [0,1] -> feature volume (B,32,16,64,64)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from avatarstream.engines.liveportrait.networks.blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16, num_resblocks: int = 6):
        super().__init__()
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        blocks = []
        for i in range(num_down_blocks):
            blocks.append(DownBlock2d(min(max_features, block_expansion * 2 ** i),
                                      min(max_features, block_expansion * 2 ** (i + 1))))
        self.down_blocks = nn.ModuleList(blocks)
        out_features = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.second = nn.Conv2d(out_features, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential(OrderedDict(
            (f"3dr{i}", ResBlock3d(reshape_channel)) for i in range(num_resblocks)))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        x = self.first(source_image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        b, _, h, w = x.shape
        x = x.reshape(b, self.reshape_channel, self.reshape_depth, h, w)
        return self.resblocks_3d(x)

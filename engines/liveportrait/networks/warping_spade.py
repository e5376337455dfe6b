"""W followed by G as one module: (feature_3d, kp_driving, kp_source) -> image (B,3,512,512) in [0,1].

The per-frame part of LivePortrait, in the input order FasterLivePortrait's ``warping_spade.onnx`` uses.
"""

from __future__ import annotations

import torch
from torch import nn


class WarpingSpade(nn.Module):
    def __init__(self, warping_module: nn.Module, spade_generator: nn.Module):
        super().__init__()
        self.warping_module = warping_module
        self.spade_generator = spade_generator

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        warped = self.warping_module(feature_3d, kp_driving=kp_driving, kp_source=kp_source)["out"]
        return self.spade_generator(warped)

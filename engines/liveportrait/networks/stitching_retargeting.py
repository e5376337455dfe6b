"""S: the stitching and eye/lip retargeting MLPs (Linear -> ReLU -> ... -> Linear, keys ``mlp.N``)."""

from __future__ import annotations

import torch
from torch import nn

# name in the stitching file -> (input, hidden sizes, output)
CONFIGS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "retarget_shoulder": (126, (128, 128, 64), 65),  # stitching
    "retarget_mouth": (65, (128, 128, 64), 63),  # lip
    "retarget_eye": (66, (256, 256, 128, 128, 64), 63),  # eye
}


class StitchingRetargetingNetwork(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        size = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(size, hidden), nn.ReLU(inplace=True)]
            size = hidden
        layers.append(nn.Linear(size, output_size))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def named(cls, name: str) -> "StitchingRetargetingNetwork":
        input_size, hidden, output = CONFIGS[name]
        return cls(input_size, hidden, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

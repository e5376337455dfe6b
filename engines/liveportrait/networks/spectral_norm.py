"""Convolutions stored with spectral normalisation, as ``torch.nn.utils.spectral_norm`` saves them.

The state_dict holds ``weight_orig``, ``weight_u`` (out) and ``weight_v`` (in*kh*kw). At inference the
effective weight is ``weight_orig / sigma`` with ``sigma = u . (W_mat v)``; there is no power iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpectralNormConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.padding = padding
        self.weight_orig = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        w_mat = self.weight_orig.detach().reshape(out_channels, -1)
        u = F.normalize(torch.randn(out_channels), dim=0)
        v = F.normalize(torch.randn(w_mat.shape[1]), dim=0)
        for _ in range(15):  # a trained file carries converged vectors; start random ones close to them
            v = F.normalize(w_mat.t() @ u, dim=0)
            u = F.normalize(w_mat @ v, dim=0)
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)

    def weight(self) -> torch.Tensor:
        w_mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        sigma = torch.dot(self.weight_u, torch.mv(w_mat, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)

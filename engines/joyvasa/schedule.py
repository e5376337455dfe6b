"""JoyVASA's variance schedule (DiffPoseTalk ``VarianceSchedule``, cosine mode): pure math.

Arrays have length T + 1 with a padding entry at t = 0 (ARCHITECTURE.md 2.3):

1. abar(x) = cos^2(((x / T) + s) / (1 + s) * pi / 2), x = 0..T, normalised by abar(0), s = 0.008
2. beta_t = clip(1 - abar_t / abar_{t-1}, 1e-4, 0.999); prepend beta_0 = 0
3. alpha = 1 - beta; alpha_bar = cumulative product (in log space)
4. sigma_flex = sqrt(beta); sigma_inflex_t = sqrt((1 - abar_{t-1}) / (1 - abar_t) * beta_t), sigma_inflex_0 = 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COSINE_S = 0.008


@dataclass(frozen=True)
class VarianceSchedule:
    betas: torch.Tensor  # (T + 1,)
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    sigmas_flex: torch.Tensor
    sigmas_inflex: torch.Tensor

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps (read from a checkpoint as len(betas) - 1)."""
        return int(self.betas.shape[0]) - 1

    def sigma(self, t: int, flexibility: float = 0.0) -> float:
        return float(self.sigmas_flex[t] * flexibility + self.sigmas_inflex[t] * (1.0 - flexibility))


def cosine_schedule(num_steps: int, s: float = COSINE_S) -> VarianceSchedule:
    """The reference cosine schedule, computed in float32 like the original."""
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")
    x = torch.arange(num_steps + 1, dtype=torch.float32) / num_steps + s
    abar = torch.cos(x / (1 + s) * math.pi / 2).pow(2)
    abar = abar / abar[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(1e-4, 0.999)
    return schedule_from_betas(torch.cat([torch.zeros(1), betas]))


def schedule_from_betas(betas: torch.Tensor) -> VarianceSchedule:
    """Derive alphas, alpha_bars and sigmas from padded betas (beta_0 = 0)."""
    betas = betas.to(torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), 0).exp()
    sigmas_flex = torch.sqrt(betas)
    sigmas_inflex = torch.zeros_like(betas)
    sigmas_inflex[1:] = torch.sqrt((1 - alpha_bars[:-1]) / (1 - alpha_bars[1:]) * betas[1:])
    return VarianceSchedule(betas, alphas, alpha_bars, sigmas_flex, sigmas_inflex)

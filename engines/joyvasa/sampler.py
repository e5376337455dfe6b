"""x0-prediction DDPM posterior sampling with classifier-free guidance (ARCHITECTURE.md 2.3): pure math.

For t = T..1::

    z ~ N(0, I) if t > 1 else 0
    [u, c] = model([x_t, x_t], t)         # unconditional and conditional halves in one batch
    x0 = u + w (c - u)                    # incremental CFG, w = cfg_scale
    x_{t-1} = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) * x_t
            + (1 - alpha_t) sqrt(abar_{t-1}) / (1 - abar_t) * x0 + sigma_t z

The model callback receives the doubled batch and the integer step and returns x0 predictions of
the same shape; the sampler never sees a network.
"""

from __future__ import annotations

from typing import Callable

import torch

from avatarstream.engines.joyvasa.schedule import VarianceSchedule

DEFAULT_CFG_SCALE = 2.0  # JoyVASA README examples

GuidedModel = Callable[[torch.Tensor, int], torch.Tensor]


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """u + w (c - u)."""
    return uncond + scale * (cond - uncond)


def posterior_coefficients(schedule: VarianceSchedule, t: int) -> tuple[float, float, float]:
    """(coefficient of x_t, coefficient of x0, sigma_t) of the step t -> t-1."""
    abar, abar_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t - 1])
    alpha = float(schedule.alphas[t])
    c_xt = (1 - abar_prev) * alpha**0.5 / (1 - abar)
    c_x0 = (1 - alpha) * abar_prev**0.5 / (1 - abar)
    return c_xt, c_x0, schedule.sigma(t, 0.0)


@torch.no_grad()
def sample(model: GuidedModel, x_T: torch.Tensor, schedule: VarianceSchedule, *, cfg_scale: float = DEFAULT_CFG_SCALE,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the full reverse chain from ``x_T`` (B, ...) and return x_0.

    Noise z is drawn on the generator's device (CPU by default) in the order t = T..2, one tensor of
    x_T's shape per step, so results are reproducible across devices for one seed.
    """
    x_t = x_T
    for t in range(schedule.num_steps, 0, -1):
        out = model(torch.cat([x_t, x_t], 0), t)
        uncond, cond = out.chunk(2, 0)
        x0 = classifier_free_guidance(uncond, cond, cfg_scale)
        c_xt, c_x0, sigma = posterior_coefficients(schedule, t)
        x_t = c_xt * x_t + c_x0 * x0
        if t > 1:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            z = torch.randn(x_T.shape, generator=generator, device=gen_device, dtype=torch.float32)
            x_t = x_t + sigma * z.to(x_t.device, x_t.dtype)
    return x_t

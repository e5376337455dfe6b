"""Calibrating a VAE that has no published latent statistics (a randomly initialised one).

A trained VAE (Stable Diffusion's) comes with two properties latent diffusion relies on:

* a narrow posterior: ``latent_dist.sample()`` is nearly ``mode()``, so training targets encoded
  with ``sample()`` are the image's latents plus a little augmentation;
* a published latent scaling factor (SD: 0.18215), 1 / std of its latents on training images
  (the latent-diffusion recipe), which brings the latents to unit std, the scale the noise
  schedule assumes.

A random VAE (the tiny config, training from scratch without ``--base``) has neither: its
posterior std is ~1, three times the spread of its means (~0.33), so ``sample()``-encoded
targets are mostly noise no model can predict; and SD's 0.18215 leaves its latents at std
~0.06, nearly pure noise at every timestep. ``narrow_posterior`` gives it a trained VAE's
narrow posterior; ``latent_std`` measures the training latents' std from which the trainer
sets the scaling factor.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

NARROW_LOG_VARIANCE = -30.0  # posterior std 3e-7: sample() == mode() to float precision
ENCODE_BATCH = 16


@torch.no_grad()
def posterior_std(vae: nn.Module, size: int = 64) -> float:
    """Mean ``latent_dist.std`` of ``vae`` on a mid-grey ``size`` x ``size`` image."""
    p = next(vae.parameters())
    x = torch.zeros(1, vae.config.in_channels, size, size, device=p.device, dtype=p.dtype)
    return float(vae.encode(x).latent_dist.std.float().mean())


@torch.no_grad()
def narrow_posterior(vae: nn.Module) -> float:
    """Make a random VAE's posterior as narrow as a trained VAE's; returns its std before.

    The log-variance half of ``quant_conv`` is set to the constant ``NARROW_LOG_VARIANCE``, so
    ``latent_dist.sample()`` equals ``mode()`` (as it nearly does for SD's trained VAE); the
    means are untouched."""
    before = posterior_std(vae)
    conv = vae.quant_conv
    half = conv.out_channels // 2
    conv.weight[half:] = 0.0
    conv.bias[half:] = NARROW_LOG_VARIANCE
    return before


@torch.no_grad()
def encode_means(vae: nn.Module, frames: np.ndarray) -> torch.Tensor:
    """Unscaled latent means ``(N, C, h, w)`` of uint8 RGB ``frames`` ``(N, H, W, 3)``."""
    p = next(vae.parameters())
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(p.device).permute(0, 3, 1, 2).to(p.dtype) / 127.5 - 1.0
    return torch.cat([vae.encode(x[i: i + ENCODE_BATCH]).latent_dist.mode() for i in range(0, len(x), ENCODE_BATCH)])


def latent_std(vae: nn.Module, frames: Iterable[np.ndarray]) -> float:
    """Standard deviation of the unscaled latent means of every frame in ``frames`` (batches of frames);
    the latent-diffusion scaling factor is its inverse."""
    batches = [f for f in frames if len(f)]
    if not batches:
        raise ValueError("latent_std needs at least one frame")
    return float(torch.cat([encode_means(vae, f).float().flatten() for f in batches]).std())

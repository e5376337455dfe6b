"""Loopy's three-pass classifier-free guidance (pure math).

Each denoising step runs the network three times, differing only in dropped conditions:

* ``eps_all``   -- reference image + motion frames + audio
* ``eps_ref``   -- audio dropped
* ``eps_base``  -- audio and reference (with its motion frames) dropped

and combines them as

    eps = eps_base + reference_ratio * (eps_ref - eps_base) + audio_ratio * (eps_all - eps_ref)

(paper defaults: audio ratio 5, reference ratio 3). With both ratios 1 it reduces to ``eps_all``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidancePass:
    name: str
    audio: bool
    reference: bool


# Order of the passes in the batched network call.
GUIDANCE_PASSES: tuple[GuidancePass, ...] = (
    GuidancePass("all", audio=True, reference=True),
    GuidancePass("no_audio", audio=False, reference=True),
    GuidancePass("no_audio_no_reference", audio=False, reference=False),
)


def pass_masks(batch: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Audio and reference keep-masks ``(3 * batch,)`` for a batch stacked pass by pass."""
    audio = torch.tensor([p.audio for p in GUIDANCE_PASSES], device=device).repeat_interleave(batch)
    reference = torch.tensor([p.reference for p in GUIDANCE_PASSES], device=device).repeat_interleave(batch)
    return audio, reference


def combine_guidance(eps_all: torch.Tensor, eps_ref: torch.Tensor, eps_base: torch.Tensor,
                     audio_ratio: float = 5.0, reference_ratio: float = 3.0) -> torch.Tensor:
    """Combine the three noise predictions (see module docstring)."""
    return eps_base + reference_ratio * (eps_ref - eps_base) + audio_ratio * (eps_all - eps_ref)


def split_and_combine(eps: torch.Tensor, audio_ratio: float, reference_ratio: float) -> torch.Tensor:
    """``eps`` stacks the passes along dim 0 in ``GUIDANCE_PASSES`` order."""
    eps_all, eps_ref, eps_base = eps.chunk(len(GUIDANCE_PASSES), dim=0)
    return combine_guidance(eps_all, eps_ref, eps_base, audio_ratio, reference_ratio)

"""Temporal segment module (TSM): which past frames become the motion-frame latents.

Paper arithmetic: with stride ``s`` and expand ratio ``r``, segment ``k`` (``k = 1`` is the
segment right before the current clip) covers ``s * r**(k-1)`` frames and contributes ``s``
motion latents, one per group of ``r**(k-1)`` consecutive frames. Defaults ``s=4, r=2`` and
5 segments cover 4+8+16+32+64 = 124 past frames with 20 latents: recent motion densely,
older motion sparsely.

Inside a group the latent is taken by ``uniform`` sampling (the group's last frame, i.e.
every ``r**(k-1)``-th frame), ``average`` (mean of the group's frames) or ``random`` (one
frame of the group). Frames before the start of the video do not exist: they are masked
(zero latents). Pure index math plus one gather; no network code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatarstream.engines.loopy.config import TemporalSegmentConfig

SAMPLING_MODES = ("uniform", "average", "random")


@dataclass(frozen=True)
class MotionFrameGroup:
    """Past frames summarised by one motion latent; ``frames`` ascend in time and may be negative."""

    segment: int  # 1 = nearest the current clip
    frames: tuple[int, ...]


def segment_groups(clip_start: int, cfg: TemporalSegmentConfig) -> list[MotionFrameGroup]:
    """The ``cfg.num_latents`` frame groups before frame ``clip_start``, oldest first."""
    if cfg.stride < 1 or cfg.expand_ratio < 1 or cfg.num_segments < 1:
        raise ValueError(f"invalid TSM config {cfg}")
    groups: list[MotionFrameGroup] = []
    end = clip_start  # exclusive end of the segment being built (walking back in time)
    for k in range(1, cfg.num_segments + 1):
        group_len = cfg.expand_ratio ** (k - 1)
        seg_start = end - cfg.stride * group_len
        seg = [MotionFrameGroup(k, tuple(range(seg_start + g * group_len, seg_start + (g + 1) * group_len)))
               for g in range(cfg.stride)]
        groups = seg + groups
        end = seg_start
    return groups


def sample_indices(groups: list[MotionFrameGroup], mode: str = "uniform",
                   rng: np.random.Generator | None = None) -> list[list[int]]:
    """For each group, the frame indices whose latents are averaged into its motion latent.

    Indices < 0 (before the video) are dropped; an empty list means the latent is masked.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown TSM sampling {mode!r}; choose one of {SAMPLING_MODES}")
    out: list[list[int]] = []
    for g in groups:
        valid = [f for f in g.frames if f >= 0]
        if mode == "uniform":
            out.append([g.frames[-1]] if g.frames[-1] >= 0 else [])
        elif mode == "average":
            out.append(valid)
        else:
            if rng is None:
                rng = np.random.default_rng()
            out.append([int(rng.choice(valid))] if valid else [])
    return out


def gather_motion_latents(history: torch.Tensor | list[torch.Tensor], clip_start: int,
                          cfg: TemporalSegmentConfig, mode: str | None = None,
                          rng: np.random.Generator | None = None,
                          latent_shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion latents ``(num_latents, C, h, w)`` and a validity mask ``(num_latents,)``.

    ``history[i]`` is the latent of frame ``i`` and ``len(history)`` the number of frames made so
    far (a window object that only keeps the last ``cfg.total_frames`` latents works too); it must
    reach ``clip_start``. Masked latents are zeros.
    """
    n_hist = len(history)
    if n_hist < clip_start:
        raise ValueError(f"history has {n_hist} frames but the clip starts at frame {clip_start}")
    if n_hist == 0 and latent_shape is None:
        raise ValueError("latent_shape is needed when the history is empty")
    shape = tuple(latent_shape) if latent_shape is not None else tuple(history[n_hist - 1].shape)
    ref = history[n_hist - 1] if n_hist else torch.zeros(())
    picks = sample_indices(segment_groups(clip_start, cfg), mode or cfg.sampling, rng)
    latents = torch.zeros((len(picks),) + shape, dtype=ref.dtype, device=ref.device)
    mask = torch.zeros(len(picks), dtype=torch.bool)
    for i, idx in enumerate(picks):
        if idx:
            latents[i] = torch.stack([history[j] for j in idx]).mean(0)
            mask[i] = True
    return latents, mask

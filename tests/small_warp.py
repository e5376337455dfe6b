"""LivePortrait's warping + SPADE stage in the narrow test configuration (``LivePortraitConfig.small()``), seeded,
and seeded inputs for it: what the export tests trace, run and compare."""

from __future__ import annotations

import torch

from avatarstream.engines.liveportrait.config import LivePortraitConfig, build_network
from avatarstream.engines.liveportrait.stages import WarpSpadeStage


def small_warp_stage() -> WarpSpadeStage:
    """The stage with the small networks' weights drawn after ``torch.manual_seed(0)``, in eval mode."""
    torch.manual_seed(0)
    cfg = LivePortraitConfig.small()
    return WarpSpadeStage(build_network("warping_module", cfg), build_network("spade_generator", cfg)).eval()


def warp_inputs(batch: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(feature volume ``batch x 16 x 4 x size x size``, driving keypoints, source keypoints) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    kp_source = torch.rand(batch, 21, 3, generator=g) * 1.6 - 0.8
    return (torch.randn(batch, 16, 4, size, size, generator=g),
            kp_source + 0.05 * torch.randn(batch, 21, 3, generator=g), kp_source)

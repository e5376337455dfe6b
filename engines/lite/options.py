"""The lite engine's options and capabilities, declared without importing the engine (``engines.registry``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from avatarstream.engines.base import EngineCapabilities, EngineOptions

CAPABILITIES = EngineCapabilities(
    name="lite",
    sizes=range(64, 2049),  # any square size: warp maps are computed per size
    default_size=512,
    controls={
        "expression_intensity": (0.0, 2.0),  # mouth / brow gain
        "head_motion_scale": (0.0, 3.0),
        "blink_rate": (0.0, 5.0),  # 1 = a blink every 2-6 s
    },
)


@dataclass(frozen=True)
class LiteOptions(EngineOptions):
    """``load_engine("lite", ...)`` options."""

    engine: ClassVar[str] = "lite"

    seed: int = 0  # motion variation (blinks, head sway); the same seed gives the same video


OPTIONS = LiteOptions

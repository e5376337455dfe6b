"""The loopy engine's options and capabilities, declared without importing torch (``engines.registry``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from avatarstream.engines.base import EngineCapabilities, EngineError, EngineOptions

CAPABILITIES = EngineCapabilities(
    name="loopy",
    sizes=(),  # frames come out at the weights' resolution (512 for the full model)
    default_size=None,
    streams=False,  # video diffusion, far slower than real time: files only
    offline_render=True,
    needs_weights=True,
)


@dataclass(frozen=True)
class LoopyOptions(EngineOptions):
    """``load_engine("loopy", ...)`` options (docs/loopy.md)."""

    engine: ClassVar[str] = "loopy"

    weights: Path | None = None  # a Loopy weights directory written by 'avatar train loopy' (required)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    steps: int | None = None  # DDIM steps; None: the sampling steps in the weights' loopy.json (25 for the full model)
    seed: int = 0
    work_dir: Path | None = None  # where finished clips are kept for resuming; None: next to the output

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise EngineError(f"the loopy engine's steps must be at least 1, got {self.steps}")


OPTIONS = LoopyOptions

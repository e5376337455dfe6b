"""The joyvasa engine's options and capabilities, declared without importing torch (``engines.registry``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from avatarstream.engines.base import EngineCapabilities, EngineError, EngineOptions

CAPABILITIES = EngineCapabilities(
    name="joyvasa",
    sizes=(256, 512),
    default_size=512,
    exported_stages=True,  # the renderer's stages run on 'avatar export' runtimes (--backend / --engines-dir)
    needs_weights=True,
    controls={"expression_intensity": (0.0, 2.0)},  # scales the JoyVASA driving multiplier (1.10)
)


@dataclass(frozen=True)
class JoyVasaOptions(EngineOptions):
    """``load_engine("joyvasa", ...)`` options (docs/joyvasa.md)."""

    engine: ClassVar[str] = "joyvasa"

    weights: Path | None = None  # the official pretrained_weights/ tree (required)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    backend: str = "torch"  # engines.runtimes.backend_choice text for the renderer's stages
    engines_dir: Path | None = None  # 'avatar export --out DIR' (needed by a non-torch backend)
    crop: bool = True  # render a LivePortrait face crop and paste it back (False: the whole framed portrait)
    fp16: bool | None = None  # None: fp16 on GPU, fp32 on CPU
    batch_size: int | None = None  # frames rendered per renderer call; None: 8 on GPU, 1 on CPU
    chunk_frames: int = 10  # motion frames generated per diffusion step
    lookahead_ms: float = 80.0  # audio after a chunk that conditions it
    cfg_scale: float | None = None  # None: the JoyVASA release's classifier-free guidance scale
    pe_mode: str = "constant"  # positional-encoding mode of the motion generator
    seed: int = 0
    liveportrait_config: Any = None  # a LivePortraitConfig for other network widths (tests); None: the official ones

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise EngineError(f"the joyvasa engine's batch_size must be at least 1, got {self.batch_size}")


OPTIONS = JoyVasaOptions

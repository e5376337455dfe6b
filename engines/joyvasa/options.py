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
    exported_stages=True,
    offline_render=True,  # render_file: the reference's offline motion algorithm (avatar render)  # the renderer's stages run on 'avatar export' runtimes (--backend / --engines-dir)
    needs_weights=True,
    controls={"expression_intensity": (0.0, 2.0)},  # scales the JoyVASA driving multiplier (1.10)
)


@dataclass(frozen=True)
class Preset:
    """The settings around the networks, taken together from one official configuration (docs/joyvasa.md)."""

    name: str
    cfg_scale: float  # classifier-free guidance of the motion generator
    crop_scale: float  # LivePortrait source crop: square side = landmarks' extent x crop_scale
    crop_vy: float  # crop centre moved by crop_vy x side along the face's vertical axis
    driving_multiplier: float  # x_d = x_s + (x_d - x_s) * multiplier, after stitching
    paste_back: bool  # render the face crop and paste it into the portrait with the reference's mask
    stitching: bool  # LivePortrait's stitching network (the reference pastes back only with it)


# JoyVASA's ``inference.py`` motion defaults (ArgumentConfig: cfg 2.8, multiplier 1.10, no relative-motion
# hull for humans) with its crop switches on, as its CLI allows:
#   python inference.py -r IMAGE -a AUDIO --flag_do_crop --flag_pasteback --flag_stitching --scale 2.3
# The crop scale is LivePortrait's (2.3, also JoyVASA's gradio app default) instead of inference.py's 3.0:
# the networks were trained on 2.3 crops, and 3.0 pads close-ups with black (docs/joyvasa.md has figures).
# The engine's frames show the portrait around the face, which needs the crop and paste-back; the
# reference pastes back only together with stitching. Live and offline share it: they differ only in
# how motion is generated (streaming chunks vs the reference's 100-frame windows).
OFFICIAL_CROP_PRESET = Preset(name="joyvasa-inference-crop", cfg_scale=2.8, crop_scale=2.3, crop_vy=-0.125,
                              driving_multiplier=1.10, paste_back=True, stitching=True)
LIVE_PRESET = OFFICIAL_CROP_PRESET  # open_stream (avatar serve)
OFFLINE_PRESET = OFFICIAL_CROP_PRESET  # render_file (avatar render)
PE_MODES = ("constant", "per_position")  # the denoiser's positional encodings (engines.joyvasa.network)
# The shared motion worker (engines.joyvasa.motion_worker): windows denoised together in one DiT call per step,
# and how long the worker waits, when nothing is in flight, for other sessions' windows to join the first one.
MOTION_MAX_BATCH = 8
MOTION_MAX_WAIT_MS = 2.0


@dataclass(frozen=True)
class JoyVasaOptions(EngineOptions):
    """``load_engine("joyvasa", ...)`` options (docs/joyvasa.md)."""

    engine: ClassVar[str] = "joyvasa"

    weights: Path | None = None  # the official pretrained_weights/ tree (required)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    backend: str = "torch"  # engines.runtimes.backend_choice text for the renderer's stages
    engines_dir: Path | None = None  # 'avatar export --out DIR' (needed by a non-torch backend)
    crop: bool = True  # render a LivePortrait face crop (cut from the original picture), stitch and paste it back
    # (False: the reference's flag_do_crop=False: the whole framed portrait is the network input, no stitching)
    # paste-back keeps the picture's own detail where the render equals the source crop (an unchanged render pastes
    # back to the picture itself; changed regions get the reference formula: engines.liveportrait.source.PasteBack);
    # False: the reference's paste-back formula bit for bit
    paste_detail: bool = True
    crop_scale: float | None = None  # None: the preset's (2.3, LivePortrait; JoyVASA inference.py uses 3.0)
    fp16: bool | None = None  # None: fp16 on GPU, fp32 on CPU
    batch_size: int | None = None  # frames rendered per renderer call; None: 8 on GPU, 1 on CPU
    chunk_frames: int = 10  # motion frames generated per diffusion step
    lookahead_ms: float = 80.0  # audio after a chunk that conditions it
    cfg_scale: float | None = None  # None: the preset's (2.8, JoyVASA inference.py)
    # positional encoding the motion generator was trained with: "constant" (every JoyVASA commit before
    # 74290f6, which the released weights predate) or "per_position" (HEAD). None: the checkpoint's
    # args.pe_mode when it records one, else "constant" (joyvasa.checkpoint.resolve_pe_mode; shown by
    # 'avatar weights check'); docs/joyvasa.md says how to decide with real weights
    pe_mode: str | None = None
    seed: int = 0
    motion_max_batch: int = MOTION_MAX_BATCH  # streams' motion windows denoised together (1: one at a time)
    motion_max_wait_ms: float = MOTION_MAX_WAIT_MS  # wait for other streams' windows when the worker is idle
    liveportrait_config: Any = None  # a LivePortraitConfig for other network widths (tests); None: the official ones

    def __post_init__(self) -> None:
        if self.crop_scale is not None and not 1.0 <= self.crop_scale <= 5.0:
            raise EngineError(f"the joyvasa engine's crop_scale must be in [1, 5], got {self.crop_scale}")
        if self.pe_mode is not None and self.pe_mode not in PE_MODES:
            raise EngineError(f"the joyvasa engine's pe_mode must be one of {', '.join(PE_MODES)}, got {self.pe_mode!r}")
        if self.motion_max_batch < 1:
            raise EngineError(f"the joyvasa engine's motion_max_batch must be at least 1, got {self.motion_max_batch}")
        if not 0.0 <= self.motion_max_wait_ms <= 1000.0:
            raise EngineError(f"the joyvasa engine's motion_max_wait_ms must be in [0, 1000], got {self.motion_max_wait_ms}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EngineError(f"the joyvasa engine's batch_size must be at least 1, got {self.batch_size}")


OPTIONS = JoyVasaOptions

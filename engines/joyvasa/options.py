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
    """The settings around the networks, each equal to one official JoyVASA configuration (docs/joyvasa.md).

    The official switches ``flag_do_crop``, ``flag_pasteback`` and ``flag_stitching`` are on or off together
    here: the engine's frames are the portrait, so a crop is always pasted back, and the reference pastes back
    only together with stitching (``live_portrait_wmg_pipeline.py``)."""

    name: str
    configuration: str  # the official configuration it equals (command line, or app and its defaults)
    cfg_scale: float  # classifier-free guidance of the motion generator
    do_crop: bool  # a LivePortrait face crop as the network input (False: the whole picture, resized)
    crop_scale: float  # LivePortrait source crop: square side = landmarks' extent x crop_scale
    crop_vy: float  # crop centre moved by crop_vy x side along the face's vertical axis
    paste_back: bool  # paste the rendered crop into the portrait with the reference's mask
    stitching: bool  # LivePortrait's stitching network, before the multiplier
    driving_multiplier: float  # x_d = x_s + (x_d - x_s) * multiplier, after stitching
    relative_motion: bool  # flag_relative_motion: for humans, the convex-hull multiplier (animals: always)
    normalize_lip: bool  # flag_normalize_lip: close the source's lips first (lip retargeting MLP)
    source_max_dim: int  # the picture's longer side is limited to this before cropping

    def __post_init__(self) -> None:
        if not self.do_crop == self.paste_back == self.stitching:
            raise EngineError(f"preset {self.name}: crop, paste-back and stitching must be on or off together "
                              f"(got {self.do_crop}, {self.paste_back}, {self.stitching})")
        if self.relative_motion or self.normalize_lip:
            raise EngineError(f"preset {self.name}: flag_relative_motion for humans and flag_normalize_lip (which "
                              "needs LivePortrait's 203-point landmark model) are not implemented")


# ``avatar render`` (render_file): JoyVASA's inference.py as its README runs it for a human portrait,
#   python inference.py -r IMAGE -a AUDIO --animation_mode human --cfg_scale 2.0
# every other value its default (JoyVASA src/config/argument_config.py, ArgumentConfig):
OFFLINE_PRESET = Preset(
    name="joyvasa-inference-readme",
    configuration="JoyVASA inference.py -r IMAGE -a AUDIO --animation_mode human --cfg_scale 2.0 (README)",
    cfg_scale=2.0,  # README.md command line --cfg_scale 2.0 (ArgumentConfig.cfg_scale default 2.8)
    do_crop=False,  # ArgumentConfig.flag_do_crop = False
    crop_scale=3.0,  # ArgumentConfig.scale = 3.0 (unused while flag_do_crop is off)
    crop_vy=-0.125,  # ArgumentConfig.vy_ratio = -0.125 (unused while flag_do_crop is off)
    paste_back=False,  # ArgumentConfig.flag_pasteback = False
    stitching=False,  # ArgumentConfig.flag_stitching = False
    driving_multiplier=1.10,  # ArgumentConfig.driving_multiplier = 1.10
    relative_motion=False,  # ArgumentConfig.flag_relative_motion = False
    normalize_lip=False,  # ArgumentConfig.flag_normalize_lip = False
    source_max_dim=1280,  # ArgumentConfig.source_max_dim = 1280
)
# ``avatar serve`` (open_stream): the same inference.py with its three crop switches, every other value its default:
#   python inference.py -r IMAGE -a AUDIO --animation_mode human --flag_do_crop --flag_pasteback --flag_stitching
# (the official configuration with a face crop pasted into the portrait that the engine runs exactly: JoyVASA's
# gradio app also turns on flag_normalize_lip and flag_relative_motion, which the engine does not implement).
LIVE_PRESET = Preset(
    name="joyvasa-inference-crop",
    configuration="JoyVASA inference.py -r IMAGE -a AUDIO --animation_mode human --flag_do_crop --flag_pasteback "
                  "--flag_stitching",
    cfg_scale=2.8,  # ArgumentConfig.cfg_scale = 2.8
    do_crop=True,  # --flag_do_crop (ArgumentConfig.flag_do_crop)
    crop_scale=3.0,  # ArgumentConfig.scale = 3.0 (passed to CropConfig.scale by inference.py's partial_fields)
    crop_vy=-0.125,  # ArgumentConfig.vy_ratio = -0.125
    paste_back=True,  # --flag_pasteback (ArgumentConfig.flag_pasteback)
    stitching=True,  # --flag_stitching (ArgumentConfig.flag_stitching)
    driving_multiplier=1.10,  # ArgumentConfig.driving_multiplier = 1.10
    relative_motion=False,  # ArgumentConfig.flag_relative_motion = False
    normalize_lip=False,  # ArgumentConfig.flag_normalize_lip = False
    source_max_dim=1280,  # ArgumentConfig.source_max_dim = 1280
)
PE_MODES = ("constant", "per_position")  # the denoiser's positional encodings (engines.joyvasa.network)
# The shared motion worker (engines.joyvasa.motion_worker): windows denoised together in one DiT call per step,
# and how long the worker waits, when nothing is in flight, for other sessions' windows to join the first one.
MOTION_MAX_BATCH = 8
MOTION_MAX_WAIT_MS = 2.0
# The streaming motion generator's chunk (frames per 50-step motion window) and lookahead (ms of audio after the
# chunk), per ``latency`` option (docs/joyvasa.md, "Delay"). A frame's motion waits for the rest of its chunk and the
# lookahead audio: (chunk - 1 + ceil(lookahead / 40)) x 40 ms, before its window's compute and the server's
# lip-sync margin. "default": 11 frames = 440 ms, one window per 400 ms of audio (2.5 windows/s per session).
# "low": 2 + 1 frames, so 2 frames = 80 ms; the smallest chunk that keeps one lookahead frame (the audio encoder's
# reflect-padded edge is not the chunk's own frames) at 12.5 windows/s per session: 5x the DiT calls, each window
# 3 frames instead of 12, and each must finish within 80 ms of audio. chunk 1 / lookahead 0 would wait 0 ms but
# needs 25 windows/s (10x) and conditions every frame on padded audio.
STREAM_LATENCIES: dict[str, tuple[int, float]] = {"default": (10, 80.0), "low": (2, 40.0)}


@dataclass(frozen=True)
class JoyVasaOptions(EngineOptions):
    """``load_engine("joyvasa", ...)`` options (docs/joyvasa.md)."""

    engine: ClassVar[str] = "joyvasa"

    weights: Path | None = None  # the official pretrained_weights/ tree (required)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    backend: str = "torch"  # engines.runtimes.backend_choice text for the renderer's stages
    engines_dir: Path | None = None  # 'avatar export --out DIR' (needed by a non-torch backend)
    # None: the preset's flag_do_crop (live: on, offline: off). True: render a LivePortrait face crop (cut from the
    # original picture), stitch and paste it back (inference.py's --flag_do_crop --flag_pasteback --flag_stitching);
    # False: the reference's flag_do_crop=False: the whole framed portrait is the network input, no stitching
    crop: bool | None = None
    # paste-back keeps the picture's own detail where the render equals the source crop (an unchanged render pastes
    # back to the picture itself; changed regions get the reference formula: engines.liveportrait.source.PasteBack);
    # False: the reference's paste-back formula bit for bit
    paste_detail: bool = True
    crop_scale: float | None = None  # None: the preset's (3.0, JoyVASA inference.py; LivePortrait and the gradio app: 2.3)
    fp16: bool | None = None  # None: fp16 on GPU, fp32 on CPU
    batch_size: int | None = None  # frames rendered per renderer call; None: 8 on GPU, 1 on CPU
    # the streaming chunk and lookahead by name (STREAM_LATENCIES): "default" (10 frames, 80 ms) or "low"
    # (2 frames, 40 ms: 80 ms instead of 440 ms of waiting, 5x the DiT calls); 'avatar serve --latency low' selects
    # "low". chunk_frames / lookahead_ms, when given, must agree with it (or leave latency at "default")
    latency: str = "default"
    chunk_frames: int = 10  # motion frames generated per diffusion step (with latency "low": 2)
    lookahead_ms: float = 80.0  # audio after a chunk that conditions it (with latency "low": 40)
    cfg_scale: float | None = None  # None: the preset's (live 2.8, offline 2.0)
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
        if self.latency not in STREAM_LATENCIES:
            raise EngineError(f"the joyvasa engine's latency must be one of {', '.join(STREAM_LATENCIES)}, "
                              f"got {self.latency!r}")
        if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise EngineError(f"the joyvasa engine's chunk_frames must be a whole number of frames >= 1, "
                              f"got {self.chunk_frames!r}")
        if not isinstance(self.lookahead_ms, (int, float)) or not 0.0 <= self.lookahead_ms <= 4000.0:
            raise EngineError(f"the joyvasa engine's lookahead_ms must be in [0, 4000], got {self.lookahead_ms!r}")
        if self.latency != "default" and (self.chunk_frames, self.lookahead_ms) not in (
                STREAM_LATENCIES["default"], STREAM_LATENCIES[self.latency]):
            chunk, lookahead = STREAM_LATENCIES[self.latency]
            raise EngineError(f"the joyvasa engine's latency {self.latency!r} sets chunk_frames={chunk} and "
                              f"lookahead_ms={lookahead:g}; got chunk_frames={self.chunk_frames} and "
                              f"lookahead_ms={self.lookahead_ms:g} as well (give one or the other)")
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

    def stream_settings(self) -> tuple[int, float]:
        """(chunk_frames, lookahead_ms) of the streaming generator: ``latency``'s, unless set apart from the default."""
        if self.latency != "default":
            return STREAM_LATENCIES[self.latency]
        return self.chunk_frames, float(self.lookahead_ms)


OPTIONS = JoyVasaOptions

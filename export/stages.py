"""The exportable neural stages: which network, which tensors in and out, which axes are dynamic.

Each stage wraps the teammates' networks (``engines.liveportrait.networks``, ``engines.joyvasa``) in a module
with a tensor-only ``forward`` whose positional inputs and tuple outputs match ``input_names``/``output_names``.
The graph split follows FasterLivePortrait (ARCHITECTURE.md section 3): appearance extractor, motion extractor,
warping + SPADE fused, stitching MLPs, plus JoyVASA's audio encoder (a streaming chunk) and one DiT denoising
call with the unconditional and conditional halves batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from avatarstream.engines.base import SAMPLES_PER_FRAME, EngineError
from avatarstream.export.tensorrt_build import ProfileShapes

MAX_RENDER_BATCH = 16
MAX_DIT_WINDOWS = 8  # guided windows per denoising call (2 rows each)


@dataclass(frozen=True)
class StageSpec:
    """How to build, feed and export one stage."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    build: Callable[["NetworkSource"], nn.Module]
    example_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]  # (batch, generator) -> inputs
    profiles: Callable[[], dict[str, ProfileShapes]]  # TensorRT optimisation profile per dynamic input
    fp32_only: bool = False  # kept FP32 in --fp16 exports (audio encoder, motion extractor: bins -> angles)
    uses_grid_sample: bool = False
    bench_batches: tuple[int, ...] = (1,)
    family: str = "liveportrait"


@dataclass
class NetworkSource:
    """Where stage networks come from: the official checkpoints under ``weights`` (the ``pretrained_weights`` root)
    or seeded random weights of the real shapes. Networks are built once and shared by the stages."""

    weights: Path | None = None
    seed: int = 0
    variant: str = "human"
    _liveportrait: object | None = None
    _joyvasa: nn.Module | None = None

    def liveportrait(self):
        """``engines.liveportrait.checkpoint.LivePortraitNetworks`` (F, M, W, G, stitching, lip, eye)."""
        from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks, load_networks

        if self._liveportrait is None:
            if self.weights is None:
                self._liveportrait = LivePortraitNetworks.random(self.seed)
            else:
                self._liveportrait = load_networks(self.weights, self.variant)
        return self._liveportrait

    def joyvasa(self) -> nn.Module:
        """``engines.joyvasa.network.DitTalkingHead`` (HuBERT audio encoder + denoising transformer)."""
        from avatarstream.engines.joyvasa.checkpoint import load_motion_generator, random_motion_generator

        if self._joyvasa is None:
            if self.weights is None:
                self._joyvasa = random_motion_generator(self.seed)
            else:
                self._joyvasa, _info = load_motion_generator(find_joyvasa_checkpoint(Path(self.weights)))
        return self._joyvasa


def find_joyvasa_checkpoint(root: Path) -> Path:
    """The JoyVASA motion generator file under ``root`` (``JoyVASA/motion_generator/*.pt`` in the HF layout)."""
    from avatarstream.engines.joyvasa.checkpoint import DEFAULT_FILE_NAME

    for candidate in (root / "JoyVASA" / "motion_generator" / DEFAULT_FILE_NAME, root / "motion_generator" / DEFAULT_FILE_NAME,
                      root / DEFAULT_FILE_NAME):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob(DEFAULT_FILE_NAME))
    if not found:
        raise EngineError(f"no {DEFAULT_FILE_NAME} under {root} (expected JoyVASA/motion_generator/{DEFAULT_FILE_NAME})")
    return found[0]


# ---------------------------------------------------------------------------------------------- wrappers


class AppearanceStage(nn.Module):
    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.extractor(img)


MOTION_OUTPUTS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


class MotionStage(nn.Module):
    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.extractor(img)
        return tuple(out[k] for k in MOTION_OUTPUTS)


class WarpSpadeStage(nn.Module):
    """W + G fused: (feature_3d, kp_driving, kp_source) -> image (B,3,512,512) in [0, 1]."""

    def __init__(self, warping: nn.Module, generator: nn.Module) -> None:
        super().__init__()
        self.warping, self.generator = warping, generator

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        return self.generator(self.warping(feature_3d, kp_driving, kp_source)["out"])


class MlpStage(nn.Module):
    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class AudioEncoderStage(nn.Module):
    """A streaming chunk of 16 kHz audio (B, L), L a multiple of 640 -> (B, L/640, 256) mapped 25 fps features:
    HuBERT (transformers), the reference 50 -> 25 fps interpolation and ``audio_feature_map``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.feature_map = model.audio_encoder, model.audio_feature_map

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        from avatarstream.engines.joyvasa.audio_encoder import encode_audio

        return self.feature_map(encode_audio(self.encoder, audio))


class DenoiseStage(nn.Module):
    """One DiT denoising call; the batch holds the unconditional and conditional halves (2N rows) -> x0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model.denoising_net

    def forward(self, x_t: torch.Tensor, audio: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor,
                step: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, audio, prev_motion, prev_audio, step)


def _denoise_inputs(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``batch`` guided windows -> 2*batch rows: [unconditional..., conditional...] as ``guided_denoiser`` builds."""
    x_t = torch.randn(batch, 100, 70, generator=g)
    audio = torch.randn(batch, 100, 256, generator=g)
    null = 0.1 * torch.randn(1, 1, 256, generator=g).expand(batch, 100, 256)
    prev_motion = torch.randn(batch, 25, 70, generator=g)
    prev_audio = torch.randn(batch, 25, 256, generator=g)
    step = torch.randint(1, 51, (1,), generator=g).expand(2 * batch).contiguous()
    return (torch.cat([x_t, x_t]), torch.cat([null, audio]), torch.cat([prev_motion, prev_motion]),
            torch.cat([prev_audio, prev_audio]), step)


# ---------------------------------------------------------------------------------------------- specs


def _image(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 3, 256, 256, generator=g),)


def _render_inputs(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    feature = torch.randn(batch, 32, 16, 64, 64, generator=g)
    kp_source = (torch.rand(batch, 21, 3, generator=g) * 1.6 - 0.8)
    kp_driving = kp_source + 0.05 * torch.randn(batch, 21, 3, generator=g)
    return feature, kp_driving, kp_source


def _batch_profile(names_shapes: dict[str, tuple[int, ...]], max_batch: int, opt_batch: int = 1):
    def profiles() -> dict[str, ProfileShapes]:
        return {n: ProfileShapes((1, *s), (opt_batch, *s), (max_batch, *s)) for n, s in names_shapes.items()}

    return profiles


def _mlp_spec(name: str, attribute: str, width: int) -> StageSpec:
    return StageSpec(
        name=name, input_names=("x",), output_names=("delta",),
        dynamic_axes={"x": {0: "batch"}, "delta": {0: "batch"}},
        build=lambda src: MlpStage(getattr(src.liveportrait(), attribute)),
        example_inputs=lambda b, g: (torch.randn(b, width, generator=g) * 0.3,),
        profiles=_batch_profile({"x": (width,)}, MAX_RENDER_BATCH), bench_batches=(1, 16),
    )


AUDIO_CHUNK_FRAMES = 100  # JoyVASA encodes 4 s windows; streaming chunks may be shorter (dynamic length)

STAGES: dict[str, StageSpec] = {
    "appearance_feature_extractor": StageSpec(
        name="appearance_feature_extractor", input_names=("img",), output_names=("f_s",),
        dynamic_axes={"img": {0: "batch"}, "f_s": {0: "batch"}},
        build=lambda src: AppearanceStage(src.liveportrait().appearance_feature_extractor),
        example_inputs=_image, profiles=_batch_profile({"img": (3, 256, 256)}, 4), bench_batches=(1,),
    ),
    "motion_extractor": StageSpec(
        name="motion_extractor", input_names=("img",), output_names=MOTION_OUTPUTS,
        dynamic_axes={"img": {0: "batch"}, **{k: {0: "batch"} for k in MOTION_OUTPUTS}},
        build=lambda src: MotionStage(src.liveportrait().motion_extractor),
        example_inputs=_image, profiles=_batch_profile({"img": (3, 256, 256)}, 4), fp32_only=True, bench_batches=(1,),
    ),
    "warping_spade": StageSpec(
        name="warping_spade", input_names=("feature_3d", "kp_driving", "kp_source"), output_names=("image",),
        dynamic_axes={"feature_3d": {0: "batch"}, "kp_driving": {0: "batch"}, "kp_source": {0: "batch"},
                      "image": {0: "batch"}},
        build=lambda src: WarpSpadeStage(src.liveportrait().warping_module, src.liveportrait().spade_generator),
        example_inputs=_render_inputs,
        profiles=_batch_profile({"feature_3d": (32, 16, 64, 64), "kp_driving": (21, 3), "kp_source": (21, 3)},
                                MAX_RENDER_BATCH, opt_batch=4),
        uses_grid_sample=True, bench_batches=(1, 2, 4, 8, 16),
    ),
    "stitching": _mlp_spec("stitching", "stitching", 126),
    "stitching_lip": _mlp_spec("stitching_lip", "lip", 65),
    "stitching_eye": _mlp_spec("stitching_eye", "eye", 66),
    "audio_encoder": StageSpec(
        name="audio_encoder", input_names=("audio",), output_names=("features",),
        dynamic_axes={"audio": {0: "batch", 1: "samples"}, "features": {0: "batch", 1: "frames"}},
        build=lambda src: AudioEncoderStage(src.joyvasa()),
        example_inputs=lambda b, g: (0.1 * torch.randn(b, AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME, generator=g),),
        profiles=lambda: {"audio": ProfileShapes((1, 8 * SAMPLES_PER_FRAME), (1, AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME),
                                                 (2, 2 * AUDIO_CHUNK_FRAMES * SAMPLES_PER_FRAME))},
        fp32_only=True, bench_batches=(1,), family="joyvasa",
    ),
    "dit_denoise": StageSpec(
        name="dit_denoise", input_names=("x_t", "audio", "prev_motion", "prev_audio", "step"), output_names=("x0",),
        dynamic_axes={n: {0: "batch2"} for n in ("x_t", "audio", "prev_motion", "prev_audio", "step", "x0")},
        build=lambda src: DenoiseStage(src.joyvasa()), example_inputs=_denoise_inputs,
        profiles=lambda: {
            "x_t": ProfileShapes((2, 100, 70), (2, 100, 70), (2 * MAX_DIT_WINDOWS, 100, 70)),
            "audio": ProfileShapes((2, 100, 256), (2, 100, 256), (2 * MAX_DIT_WINDOWS, 100, 256)),
            "prev_motion": ProfileShapes((2, 25, 70), (2, 25, 70), (2 * MAX_DIT_WINDOWS, 25, 70)),
            "prev_audio": ProfileShapes((2, 25, 256), (2, 25, 256), (2 * MAX_DIT_WINDOWS, 25, 256)),
            "step": ProfileShapes((2,), (2,), (2 * MAX_DIT_WINDOWS,)),
        },
        bench_batches=(1, 2, 4), family="joyvasa",
    ),
}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> StageSpec:
    if name not in STAGES:
        raise EngineError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]

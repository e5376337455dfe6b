"""LivePortrait's exportable stages: appearance extractor, motion extractor, warping + SPADE fused, stitching MLPs.

Each stage wraps one of the networks (``engines.liveportrait.networks``) in a module with a tensor-only
``forward`` whose positional inputs and tuple outputs match ``input_names``/``output_names``. The graph split
follows FasterLivePortrait (ARCHITECTURE.md section 3).
"""

from __future__ import annotations

import torch
from torch import nn

from avatarstream.engines.runtimes.stage_spec import ProfileShapes, StageSpec

MAX_RENDER_BATCH = 16


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


LIVEPORTRAIT_STAGES: dict[str, StageSpec] = {
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
}

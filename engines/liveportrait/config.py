"""Network hyper-parameters (the official ``models.yaml``) and a builder for the four networks + S."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from avatarstream.engines.liveportrait.networks import (AppearanceFeatureExtractor, MotionExtractor, SPADEDecoder,
                                           StitchingRetargetingNetwork, WarpingNetwork)
from avatarstream.engines.liveportrait.networks.stitching_retargeting import CONFIGS as STITCHING_CONFIGS


@dataclass(frozen=True)
class LivePortraitConfig:
    """Constructor arguments of each network. The defaults are the official ones (every checkpoint uses them)."""

    appearance_feature_extractor: dict = field(default_factory=lambda: dict(
        image_channel=3, block_expansion=64, num_down_blocks=2, max_features=512, reshape_channel=32,
        reshape_depth=16, num_resblocks=6))
    motion_extractor: dict = field(default_factory=lambda: dict(num_kp=21, num_bins=66))
    warping_module: dict = field(default_factory=lambda: dict(
        num_kp=21, block_expansion=64, max_features=512, num_down_blocks=2, reshape_channel=32,
        estimate_occlusion_map=True,
        dense_motion_params=dict(block_expansion=32, max_features=1024, num_blocks=5, reshape_depth=16, compress=4)))
    spade_generator: dict = field(default_factory=lambda: dict(
        upscale=2, block_expansion=64, max_features=512, num_down_blocks=2))

    @classmethod
    def small(cls) -> "LivePortraitConfig":
        """A narrow variant with the same structure and tensor ranks (fast CPU tests of the pipeline logic)."""
        return cls(
            appearance_feature_extractor=dict(block_expansion=8, max_features=64, reshape_channel=16, reshape_depth=4,
                                              num_resblocks=1),
            motion_extractor=dict(num_kp=21, num_bins=66, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
            warping_module=dict(block_expansion=8, max_features=64, reshape_channel=16, dense_motion_params=dict(
                block_expansion=4, max_features=32, num_blocks=5, reshape_depth=4, compress=1)),
            spade_generator=dict(block_expansion=8, max_features=64, out_channels=8, spade_hidden=16),
        )


NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "appearance_feature_extractor": AppearanceFeatureExtractor,
    "motion_extractor": MotionExtractor,
    "warping_module": WarpingNetwork,
    "spade_generator": SPADEDecoder,
}


def build_network(name: str, config: LivePortraitConfig | None = None) -> nn.Module:
    config = config or LivePortraitConfig()
    return NETWORK_CLASSES[name](**getattr(config, name))


def build_stitching() -> dict[str, StitchingRetargetingNetwork]:
    return {name: StitchingRetargetingNetwork.named(name) for name in STITCHING_CONFIGS}

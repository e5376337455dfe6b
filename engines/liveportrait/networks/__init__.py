"""LivePortrait networks, key-for-key compatible with the official state_dicts."""

from avatarstream.engines.liveportrait.networks.appearance_feature_extractor import AppearanceFeatureExtractor
from avatarstream.engines.liveportrait.networks.motion_extractor import MotionExtractor
from avatarstream.engines.liveportrait.networks.spade_generator import SPADEDecoder
from avatarstream.engines.liveportrait.networks.stitching_retargeting import StitchingRetargetingNetwork
from avatarstream.engines.liveportrait.networks.warping_module import WarpingNetwork

__all__ = ["AppearanceFeatureExtractor", "MotionExtractor", "SPADEDecoder", "StitchingRetargetingNetwork", "WarpingNetwork"]

"""LivePortrait networks, key-for-key compatible with the official state_dicts."""

from engines.liveportrait.networks.appearance_feature_extractor import AppearanceFeatureExtractor
from engines.liveportrait.networks.motion_extractor import MotionExtractor
from engines.liveportrait.networks.spade_generator import SPADEDecoder
from engines.liveportrait.networks.stitching_retargeting import StitchingRetargetingNetwork
from engines.liveportrait.networks.warping_module import WarpingNetwork

__all__ = ["AppearanceFeatureExtractor", "MotionExtractor", "SPADEDecoder", "StitchingRetargetingNetwork", "WarpingNetwork"]

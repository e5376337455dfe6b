"""Strict loading of the official LivePortrait ``.pth`` files, and writing random ones in the same layout.

Directory layout (the ``KwaiVGI/LivePortrait`` model repo downloaded into ``ROOT``)::

    ROOT/liveportrait/base_models/{appearance_feature_extractor,motion_extractor,warping_module,spade_generator}.pth
    ROOT/liveportrait/retargeting_models/stitching_retargeting_module.pth
    ROOT/liveportrait_animals/base_models/*.pth          animal v1.0 (what JoyVASA uses)
    ROOT/liveportrait_animals/base_models_v1.1/*.pth     animal v1.1 (LivePortrait's animal default)
    ROOT/liveportrait_animals/retargeting_models/stitching_retargeting_module.pth

The four base files are raw state_dicts; the stitching file is a dict of three state_dicts whose
inner keys may carry a DDP ``module.`` prefix. Animals use the *human* stitching file, as the
reference does ("use human temporarily").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avatarstream.engines.base import EngineError, MissingWeightsError
from avatarstream.engines.liveportrait.config import NETWORK_CLASSES, LivePortraitConfig, build_network, build_stitching
from avatarstream.engines.liveportrait.networks.stitching_retargeting import StitchingRetargetingNetwork

BASE_NETWORKS = tuple(NETWORK_CLASSES)  # appearance_feature_extractor, motion_extractor, warping_module, spade_generator
VARIANT_DIRS: dict[str, str] = {
    "human": "liveportrait/base_models",
    "animal-v1.0": "liveportrait_animals/base_models",
    "animal-v1.1": "liveportrait_animals/base_models_v1.1",
}
HUMAN_STITCHING = "liveportrait/retargeting_models/stitching_retargeting_module.pth"
ANIMAL_STITCHING = "liveportrait_animals/retargeting_models/stitching_retargeting_module.pth"
STITCHING_PARTS = ("retarget_shoulder", "retarget_mouth", "retarget_eye")


def check_variant(variant: str) -> str:
    if variant not in VARIANT_DIRS:
        raise EngineError(f"unknown LivePortrait variant {variant!r}; choose one of {', '.join(VARIANT_DIRS)}")
    return variant


def variant_files(variant: str) -> list[str]:
    """Paths, relative to the weights root, that ``load_networks(root, variant)`` reads."""
    base = VARIANT_DIRS[check_variant(variant)]
    return [f"{base}/{name}.pth" for name in BASE_NETWORKS] + [HUMAN_STITCHING]


def missing_files(root: str | Path, variant: str) -> list[str]:
    return [rel for rel in variant_files(variant) if not (Path(root) / rel).is_file()]


def require_files(root: str | Path, variant: str) -> None:
    missing = missing_files(root, variant)
    if missing:
        raise MissingWeightsError(
            f"LivePortrait {variant} weights missing in {root}: {', '.join(missing)} "
            f"(fetch them with: avatar weights download --dest {root})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a raw state_dict file (tensors only, ``weights_only``); clear errors for other content."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, wrong format, pickled code ...
        raise EngineError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise EngineError(f"{path} does not hold a state_dict (got {type(obj).__name__})")
    return dict(obj)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with a message that names wrong, missing and extra keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = f" ... (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise EngineError(f"{what} does not match the LivePortrait network: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
    return module


def read_stitching(path: str | Path) -> dict[str, StitchingRetargetingNetwork]:
    """The stitching file's three MLPs, ``module.`` removed from their keys, each loaded strictly."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EngineError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, Mapping) or any(part not in obj for part in STITCHING_PARTS):
        found = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise EngineError(f"{path} is not a stitching/retargeting file: expected keys {STITCHING_PARTS}, found {found}")
    nets = build_stitching()
    for part in STITCHING_PARTS:
        inner = {k.replace("module.", ""): v for k, v in obj[part].items()}
        load_strict(nets[part], inner, f"{path} [{part}]")
    return nets


@dataclass
class LivePortraitNetworks:
    """The four LivePortrait networks plus the stitching / lip / eye MLPs, in eval mode."""

    appearance_feature_extractor: nn.Module
    motion_extractor: nn.Module
    warping_module: nn.Module
    spade_generator: nn.Module
    stitching: StitchingRetargetingNetwork
    lip: StitchingRetargetingNetwork
    eye: StitchingRetargetingNetwork

    def modules(self) -> list[nn.Module]:
        return [self.appearance_feature_extractor, self.motion_extractor, self.warping_module, self.spade_generator,
                self.stitching, self.lip, self.eye]

    def to(self, device: str | torch.device) -> "LivePortraitNetworks":
        for m in self.modules():
            m.to(device).eval().requires_grad_(False)
        return self

    @classmethod
    def random(cls, seed: int = 0, config: LivePortraitConfig | None = None) -> "LivePortraitNetworks":
        """Deterministic random weights of the real (or ``config``) shapes."""
        torch.manual_seed(seed)
        nets = {name: build_network(name, config) for name in BASE_NETWORKS}
        s = build_stitching()
        return cls(**nets, stitching=s["retarget_shoulder"], lip=s["retarget_mouth"], eye=s["retarget_eye"]).to("cpu")


def load_networks(root: str | Path, variant: str = "human", *, device: str = "cpu",
                  config: LivePortraitConfig | None = None) -> LivePortraitNetworks:
    """Strictly load one variant's four networks and the (human) stitching file from ``root``."""
    root = Path(root)
    require_files(root, variant)
    base = root / VARIANT_DIRS[variant]
    nets = {}
    for name in BASE_NETWORKS:
        path = base / f"{name}.pth"
        nets[name] = load_strict(build_network(name, config), read_state_dict(path), str(path))
    s = read_stitching(root / HUMAN_STITCHING)
    return LivePortraitNetworks(**nets, stitching=s["retarget_shoulder"], lip=s["retarget_mouth"],
                                eye=s["retarget_eye"]).to(device)


def write_random_checkpoints(root: str | Path, seed: int = 0, variants: tuple[str, ...] = ("human",),
                             config: LivePortraitConfig | None = None) -> list[Path]:
    """Write deterministic random weights in the official layout (raw state_dicts; stitching with ``module.``).

    Used by tests, benchmarks and exporters where the real files cannot be downloaded.
    """
    root = Path(root)
    written: list[Path] = []
    for i, variant in enumerate(variants):
        nets = LivePortraitNetworks.random(seed + i, config)
        out_dir = root / VARIANT_DIRS[check_variant(variant)]
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in BASE_NETWORKS:
            path = out_dir / f"{name}.pth"
            torch.save(getattr(nets, name).state_dict(), path)
            written.append(path)
        stitching_rel = HUMAN_STITCHING if variant == "human" else ANIMAL_STITCHING
        modules = {"retarget_shoulder": nets.stitching, "retarget_mouth": nets.lip, "retarget_eye": nets.eye}
        stitching = {part: {f"module.{k}": v for k, v in modules[part].state_dict().items()} for part in STITCHING_PARTS}
        for rel in (stitching_rel, HUMAN_STITCHING):  # animals read the human stitching file
            path = root / rel
            if rel == stitching_rel or not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(stitching, path)
                written.append(path)
    return written

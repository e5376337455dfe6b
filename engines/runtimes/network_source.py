"""Where the stages' networks come from: the official checkpoints or seeded random weights of the real shapes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.checkpoint import DEFAULT_FILE_NAME, load_motion_generator, random_motion_generator
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks, load_networks


@dataclass
class NetworkSource:
    """Where stage networks come from: the official checkpoints under ``weights`` (the ``pretrained_weights`` root)
    or seeded random weights of the real shapes. Networks are built once and shared by the stages."""

    weights: Path | None = None
    seed: int = 0
    variant: str = "human"
    _liveportrait: LivePortraitNetworks | None = None
    _joyvasa: nn.Module | None = None

    def liveportrait(self) -> LivePortraitNetworks:
        """``engines.liveportrait.checkpoint.LivePortraitNetworks`` (F, M, W, G, stitching, lip, eye)."""
        if self._liveportrait is None:
            if self.weights is None:
                self._liveportrait = LivePortraitNetworks.random(self.seed)
            else:
                self._liveportrait = load_networks(self.weights, self.variant)
        return self._liveportrait

    def joyvasa(self) -> nn.Module:
        """``engines.joyvasa.network.DitTalkingHead`` (HuBERT audio encoder + denoising transformer)."""
        if self._joyvasa is None:
            if self.weights is None:
                self._joyvasa = random_motion_generator(self.seed)
            else:
                self._joyvasa, _info = load_motion_generator(find_joyvasa_checkpoint(Path(self.weights)))
        return self._joyvasa


def find_joyvasa_checkpoint(root: Path) -> Path:
    """The JoyVASA motion generator file under ``root`` (``JoyVASA/motion_generator/*.pt`` in the HF layout)."""
    for candidate in (root / "JoyVASA" / "motion_generator" / DEFAULT_FILE_NAME, root / "motion_generator" / DEFAULT_FILE_NAME,
                      root / DEFAULT_FILE_NAME):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob(DEFAULT_FILE_NAME))
    if not found:
        raise EngineError(f"no {DEFAULT_FILE_NAME} under {root} (expected JoyVASA/motion_generator/{DEFAULT_FILE_NAME})")
    return found[0]

"""Inputs for sessions on the bar test engine (``tests/realtime/conftest.py``): a plain grey portrait, and
speech-like audio whose envelope is plain to see."""

from __future__ import annotations

import numpy as np

from avatarstream.engines.base import Portrait


def portrait() -> Portrait:
    """A 128 x 128 mid-grey picture: the bar engine draws over it and needs no face."""
    return Portrait(np.full((128, 128, 3), 128, np.uint8))


def bursts(seconds: float, rate: int = 16000) -> np.ndarray:
    """A 220 Hz tone at 0.5 gated on/off every 200 ms: a clear envelope."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t) * ((t // 0.2) % 2 == 0)).astype(np.float32)

"""Fixtures for the real-time server tests: a small test-double engine for exact timing tests that do not
need the real face pipeline (the shared real-engine loader, ``engine_loader``, is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pytest

from avatarstream.engines.base import SAMPLES_PER_FRAME, AvatarFrame, Portrait


class BarStream:
    """Test double: grey frame with a dark bar whose height follows the frame's audio RMS.

    Real ``EngineStream`` semantics: frame n needs ``lookahead_frames`` frames of audio after it.
    """

    def __init__(self, size: int, lookahead_frames: int = 1) -> None:
        self.size = size
        self.lookahead_frames = lookahead_frames
        self._audio = np.zeros(0, np.float32)
        self._next = 0  # next frame index to emit
        self._consumed = 0  # samples before _audio[0]
        self.interrupts = 0
        self.controls: dict[str, Any] = {}

    def _render(self, n: int, chunk: np.ndarray) -> AvatarFrame:
        rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) if chunk.size else 0.0
        level = min(1.0, rms * 8)
        img = np.full((self.size, self.size, 3), 200, np.uint8)
        h = int(level * self.size * 0.4)
        c = self.size // 2
        img[c - h // 2 - 2:c + h // 2 + 2, c - self.size // 6:c + self.size // 6] = 20
        return AvatarFrame(n, img, speaking=level > 0.05, mouth_open=level)

    def feed(self, audio: np.ndarray) -> list[AvatarFrame]:
        self._audio = np.concatenate([self._audio, np.asarray(audio, np.float32)])
        out = []
        while (self._next + 1 + self.lookahead_frames) * SAMPLES_PER_FRAME <= self._consumed + self._audio.size:
            start = self._next * SAMPLES_PER_FRAME - self._consumed
            out.append(self._render(self._next, self._audio[start:start + SAMPLES_PER_FRAME]))
            self._next += 1
        drop = self._next * SAMPLES_PER_FRAME - self._consumed
        self._audio = self._audio[drop:]
        self._consumed += drop
        return out

    def flush(self) -> list[AvatarFrame]:
        return self.feed(np.zeros((self.lookahead_frames + 1) * SAMPLES_PER_FRAME, np.float32))

    def interrupt(self) -> None:
        self.interrupts += 1
        self._audio[:] = 0

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        self.controls.update(controls)
        return {k: "not supported by the bar test engine" for k in controls if k != "bar"}

    def close(self) -> None:
        self._audio = np.zeros(0, np.float32)


class BarEngine:
    name = "bar"

    def __init__(self, lookahead_frames: int = 1) -> None:
        self.lookahead_frames = lookahead_frames
        self.streams: list[BarStream] = []

    def open_stream(self, portrait: Portrait, *, size: int = 512, controls=None) -> BarStream:
        s = BarStream(size, self.lookahead_frames)
        self.streams.append(s)
        return s


@pytest.fixture
def bar_engine() -> BarEngine:
    return BarEngine()

"""The contract between the real-time server and every avatar engine.

Time model (shared by all engines and by ``realtime/``):

* Engines take mono float32 audio at ``SAMPLE_RATE`` (16 kHz) in [-1, 1].
* Video runs at ``FPS`` (25). Frame ``n`` shows the face for the audio samples
  ``[n * SAMPLES_PER_FRAME, (n + 1) * SAMPLES_PER_FRAME)`` of the stream fed so far.
* An engine may need ``lookahead_frames`` frames of audio *after* frame ``n``
  before it can emit frame ``n`` (feature context, motion windows). The server
  delays the returned audio by that amount so lips and sound line up.

``realtime/`` never imports torch; it only sees these dataclasses and protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


class EngineError(Exception):
    """A problem the user can fix (bad image, missing weights, bad audio).

    The message is shown to the user as is; the HTTP layer maps it to 4xx.
    """


class NoFaceError(EngineError):
    """The portrait has no detectable face (human or animal)."""


class MissingWeightsError(EngineError):
    """A neural engine's checkpoint files are absent; the message names them."""


@dataclass(frozen=True)
class Portrait:
    """A source image as the engines receive it."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    name: str = "portrait"
    kind: str = "auto"  # "human", "animal" or "auto"

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise EngineError("portrait image must be an H x W x 3 uint8 RGB array")
        if min(img.shape[:2]) < 64:
            raise EngineError(f"portrait image is too small ({img.shape[1]}x{img.shape[0]}); need at least 64x64")


@dataclass(frozen=True)
class AvatarFrame:
    """One rendered video frame on the session clock."""

    index: int  # frame number n on the stream clock (see module docstring)
    image: np.ndarray  # H x W x 3 uint8 RGB
    speaking: bool = False  # the engine judged this frame's audio to be speech
    mouth_open: float = 0.0  # engine's own mouth-opening estimate in [0, 1] (diagnostics)


@dataclass
class StageTimes:
    """Milliseconds spent per pipeline stage, accumulated by an engine stream."""

    ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + ms
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def mean_ms(self) -> dict[str, float]:
        return {k: self.ms[k] / max(1, self.calls[k]) for k in self.ms}


@runtime_checkable
class EngineStream(Protocol):
    """A per-session, stateful audio -> frames stream. Not thread-safe: one caller."""

    lookahead_frames: int
    size: int  # output frames are size x size

    def feed(self, audio: np.ndarray) -> list[AvatarFrame]:
        """Append audio (float32 mono 16 kHz, any length) and return the frames now complete.

        Frames come out in order, each index exactly once, indices starting at 0.
        """

    def flush(self) -> list[AvatarFrame]:
        """End of input: pad with silence as needed and return every remaining frame."""

    def interrupt(self) -> None:
        """Drop audio/motion not yet rendered; the face returns to idle motion.

        Frame indices keep counting: the clock never goes backwards.
        """

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """Apply live controls; return {name: reason} for those not supported."""

    def close(self) -> None:
        """Free resources."""


@runtime_checkable
class AvatarEngine(Protocol):
    """An engine family (lite, joyvasa, ...): prepares portraits, opens streams."""

    name: str

    def open_stream(self, portrait: Portrait, *, size: int = 512, controls: Mapping[str, Any] | None = None) -> EngineStream:
        ...


def check_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Validate and normalise engine input audio; raise EngineError with a clear message."""
    if sample_rate != SAMPLE_RATE:
        raise EngineError(f"audio must be {SAMPLE_RATE} Hz, got {sample_rate} Hz (resample first)")
    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise EngineError(f"audio must be mono (1-D), got shape {a.shape}")
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype != np.float32:
        a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise EngineError("audio contains NaN or infinite samples")
    return a


def validate_controls(
    controls: Mapping[str, Any], supported: Mapping[str, tuple[float, float]], engine_name: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Split live controls into accepted numeric values and {name: reason} for the rejected ones.

    ``supported`` maps each control an engine understands to its inclusive (low, high) range.
    """
    ok: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for name, value in controls.items():
        if name not in supported:
            rejected[name] = f"not supported by the {engine_name} engine (supported: {', '.join(supported)})"
            continue
        lo, hi = supported[name]
        try:
            v = float(value)
        except (TypeError, ValueError):
            rejected[name] = f"must be a number in [{lo}, {hi}]"
            continue
        if not np.isfinite(v) or not lo <= v <= hi:
            rejected[name] = f"must be in [{lo}, {hi}], got {value!r}"
            continue
        ok[name] = v
    return ok, rejected

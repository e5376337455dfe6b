"""Engine calibration: what one active session's engine costs, measured when the engine loads.

Admission needs the CPU an active session costs before any session has been measured (a burst
of viewers right after start). ``calibrate`` renders frames of the engine on the loaded portrait
the way a session does (40 ms of audio per frame, one stream, one thread calling it) and reads
the process CPU time around it::

    cores at 25 fps = CPU seconds / frames rendered x 25

It counts only the engine (no encoding, no transport): a lower bound that admission replaces with
the measured cost of a running session half a window after the first one starts. The first
``warm_frames`` are rendered before the measurement starts (first-call allocations are no
steady cost); the measured part stops after ``frames`` frames or once ``max_wall_s`` have passed
(a slow engine calibrates on fewer frames, never fewer than one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME, AvatarEngine, Portrait

CALIBRATION_FRAMES = 25  # frames measured (1 s of video)
CALIBRATION_WARM_FRAMES = 3  # frames rendered before measuring
CALIBRATION_MAX_WALL_S = 2.0  # the measured part stops here, whatever the engine's speed
CALIBRATION_SEED = 0  # the audio fed: seeded noise under a 3 Hz envelope (the mouth moves)


@dataclass(frozen=True)
class Calibration:
    """``frames`` frames of ``engine`` at ``size`` px took ``cpu_s`` seconds of process CPU."""

    engine: str
    size: int
    frames: int
    cpu_s: float

    def __post_init__(self) -> None:
        if self.frames < 1 or self.cpu_s < 0:
            raise ValueError(f"a calibration needs >= 1 frame and CPU time >= 0, got {self.frames}, {self.cpu_s}")

    @property
    def cpu_ms_per_frame(self) -> float:
        return self.cpu_s / self.frames * 1000

    @property
    def cores(self) -> float:
        """CPU cores the engine needs to render ``FPS`` frames a second."""
        return self.cpu_s / self.frames * FPS

    def describe(self) -> str:
        return (f"{self.engine} at {self.size} px rendered {self.frames} frame(s) in {self.cpu_ms_per_frame:.1f} ms "
                f"of CPU each: {self.cores:.3f} cores at {FPS} fps (the engine only, before encoding)")


def calibration_audio(frames: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``frames`` x 40 ms of 16 kHz float32 audio: noise whose loudness rises and falls at 3 Hz."""
    n = frames * SAMPLES_PER_FRAME
    t = np.arange(n) / (SAMPLES_PER_FRAME * FPS)
    envelope = 0.15 * (1 - np.cos(2 * np.pi * 3 * t))
    return (np.random.default_rng(seed).standard_normal(n) * envelope).astype(np.float32)


def calibrate(engine: AvatarEngine, portrait: Portrait, *, engine_name: str, size: int,
              frames: int = CALIBRATION_FRAMES, warm_frames: int = CALIBRATION_WARM_FRAMES,
              max_wall_s: float = CALIBRATION_MAX_WALL_S,
              cpu_time: Callable[[], float] = time.process_time,
              clock: Callable[[], float] = time.monotonic) -> Calibration:
    """Render frames on one stream of ``engine`` and measure their CPU (blocking: call it off the loop)."""
    stream = engine.open_stream(portrait, size=size)
    try:
        audio = calibration_audio(warm_frames + frames + stream.lookahead_frames + 1)
        fed = 0
        for _ in range(warm_frames):
            stream.feed(audio[fed:fed + SAMPLES_PER_FRAME])
            fed += SAMPLES_PER_FRAME
        rendered, started, cpu0 = 0, clock(), cpu_time()
        while rendered < frames and fed < audio.size and (rendered == 0 or clock() - started < max_wall_s):
            rendered += len(stream.feed(audio[fed:fed + SAMPLES_PER_FRAME]))
            fed += SAMPLES_PER_FRAME
        if rendered == 0:
            rendered = len(stream.flush())
        return Calibration(engine_name, size, max(1, rendered), max(0.0, cpu_time() - cpu0))
    finally:
        stream.close()

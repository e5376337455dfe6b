"""Engine calibration: what one active session's engine costs, measured when the engine loads.

Admission needs the CPU an active session costs before any session has been measured (a burst
of viewers right after start). ``calibrate`` renders frames of the engine on the loaded portrait
the way a session does (40 ms of audio per frame, one stream, one thread calling it), hands each
frame to the ``FrameWork`` the server passes in (what a viewer costs per frame beyond the engine:
the WebRTC transport's video encode, ``realtime/http/app.py``; the session layer knows no
transport), and reads the process CPU time around both::

    cores at 25 fps = CPU seconds / frames rendered x 25

It leaves out what it cannot run alone (packetisation, audio, the clock): admission replaces it
with the measured cost of a running session half a window after the first one starts. The first
``warm_frames`` are rendered before the measurement starts (first-call allocations are no
steady cost); the measured part stops after ``frames`` frames or once ``max_wall_s`` have passed
(a slow engine calibrates on fewer frames, never fewer than one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME, AvatarEngine, AvatarFrame, Portrait

CALIBRATION_FRAMES = 25  # frames measured (1 s of video)
CALIBRATION_WARM_FRAMES = 3  # frames rendered before measuring
CALIBRATION_MAX_WALL_S = 2.0  # the measured part stops here, whatever the engine's speed
CALIBRATION_SEED = 0  # the audio fed: seeded noise under a 3 Hz envelope (the mouth moves)


@dataclass(frozen=True)
class FrameWork:
    """Work each rendered frame costs beyond the engine, run in the calibration (``name``: what it is)."""

    name: str  # e.g. "vp8 encoding"
    run: Callable[[AvatarFrame], object]


@dataclass(frozen=True)
class Calibration:
    """``frames`` frames of ``engine`` at ``size`` px (and ``work`` on each) took ``cpu_s`` seconds of process CPU."""

    engine: str
    size: int
    frames: int
    cpu_s: float
    work: str = ""  # the FrameWork's name, "" for the engine alone

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

    @property
    def counts(self) -> str:
        """What the figure covers, in words."""
        return f"the engine and {self.work}" if self.work else "the engine only"

    def describe(self) -> str:
        return (f"{self.engine} at {self.size} px: {self.frames} frame(s) at {self.cpu_ms_per_frame:.1f} ms of CPU "
                f"each ({self.counts}): {self.cores:.3f} cores at {FPS} fps")


def calibration_audio(frames: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``frames`` x 40 ms of 16 kHz float32 audio: noise whose loudness rises and falls at 3 Hz."""
    n = frames * SAMPLES_PER_FRAME
    t = np.arange(n) / (SAMPLES_PER_FRAME * FPS)
    envelope = 0.15 * (1 - np.cos(2 * np.pi * 3 * t))
    return (np.random.default_rng(seed).standard_normal(n) * envelope).astype(np.float32)


def calibrate(engine: AvatarEngine, portrait: Portrait, *, engine_name: str, size: int,
              work: FrameWork | None = None, frames: int = CALIBRATION_FRAMES, warm_frames: int = CALIBRATION_WARM_FRAMES,
              max_wall_s: float = CALIBRATION_MAX_WALL_S,
              cpu_time: Callable[[], float] = time.process_time,
              clock: Callable[[], float] = time.monotonic) -> Calibration:
    """Render frames on one stream of ``engine`` (each then handed to ``work``) and measure their CPU
    (blocking: call it off the loop)."""
    stream = engine.open_stream(portrait, size=size)
    try:
        audio = calibration_audio(warm_frames + frames + stream.lookahead_frames + 1)
        fed = 0
        def render(out: list[AvatarFrame]) -> int:
            if work is not None:
                for frame in out:
                    work.run(frame)
            return len(out)

        for _ in range(warm_frames):
            render(stream.feed(audio[fed:fed + SAMPLES_PER_FRAME]))
            fed += SAMPLES_PER_FRAME
        rendered, started, cpu0 = 0, clock(), cpu_time()
        while rendered < frames and fed < audio.size and (rendered == 0 or clock() - started < max_wall_s):
            rendered += render(stream.feed(audio[fed:fed + SAMPLES_PER_FRAME]))
            fed += SAMPLES_PER_FRAME
        if rendered == 0:
            rendered = render(stream.flush())
        return Calibration(engine_name, size, max(1, rendered), max(0.0, cpu_time() - cpu0),
                           "" if work is None else work.name)
    finally:
        stream.close()

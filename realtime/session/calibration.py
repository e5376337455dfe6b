"""Engine calibration: what one active session costs, measured when the engine loads.

Admission needs the CPU an active session costs before any session has been measured (a burst
of viewers right after start). ``calibrate`` renders frames of the engine on the loaded portrait
the way a session does (40 ms of audio per frame, one stream on a worker thread of its own), hands each
frame and its 40 ms of audio to each ``FrameWork`` the server passes in (what a watched session
costs per frame beyond the engine, done for real by the transport: with WebRTC its video encode,
its Opus encode, and the RTP packetisation, SRTP and sending of both, ``realtime/transports/webrtc/
media_work.py``; the session layer knows no transport), and reads the process CPU time around
each step::

    cores at 25 fps = CPU seconds / frames rendered x 25     (the engine's and each term's, summed)

The measured frames are paced as a session paces them, one every 40 ms (``tick_s``), not back to
back: the same work spaced in time costs more CPU (caches and branch predictors cold again, the
thread woken each time; lite at 512 px with the WebRTC terms, 6 alternating runs each on a 2-core
machine at load 2.9-3.5: 0.140-0.157 cores back to back, 0.182-0.186 paced), and a session only
ever runs paced. So the calibration takes ``frames x 40 ms`` of wall time (1 s) for ~0.2 s of CPU.
It runs as a session runs, on an event loop of its own woken every tick: the engine's feeds on
their own thread, the terms a session runs off its loop (``FrameWork.off_loop``: the video encode)
on the executor, the others (the Opus encode, RTP + SRTP) on the loop, so the thread hand-offs and
the wake-ups are in the figure too.

It leaves out the event loop's share of a running session (the clock's wake-ups, the senders'
coroutines, RTCP): admission replaces the figure with the measured cost of a running session
half a window after the first one starts. The first ``warm_frames`` are rendered (and worked on)
before the measurement starts (first-call allocations are no steady cost); the measured part
stops after ``frames`` frames or once ``max_wall_s`` have passed (a slow engine calibrates on
fewer frames, never fewer than one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME, AvatarEngine, AvatarFrame, Portrait

CALIBRATION_FRAMES = 25  # frames measured (1 s of video)
CALIBRATION_WARM_FRAMES = 3  # frames rendered before measuring
CALIBRATION_MAX_WALL_S = 2.0  # the measured part stops here, whatever the engine's speed
CALIBRATION_SEED = 0  # the audio fed: seeded noise under a 3 Hz envelope (the mouth moves)


@dataclass(frozen=True)
class FrameWork:
    """Work each rendered frame costs beyond the engine, run in the calibration (``name``: what it is):
    ``run(frame, audio)`` with the frame's 40 ms of 16 kHz float32 audio (``SAMPLES_PER_FRAME`` samples)."""

    name: str  # e.g. "vp8 encoding"
    run: Callable[[AvatarFrame, np.ndarray], object]
    off_loop: bool = False  # a session runs it on an executor thread (a video encode), not on its event loop


class CalibrationWork(Protocol):
    """What a transport hands a calibration: its per-frame terms, and ``close()`` to release what they hold
    (encoders, sockets) once the calibration is done. The server passes a factory of these (``app.py``)."""

    def terms(self) -> Sequence[FrameWork]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Calibration:
    """``frames`` frames of ``engine`` at ``size`` px (and the work on each) took ``cpu_s`` seconds of process
    CPU, of which ``terms`` gives each ``FrameWork``'s share (name, CPU seconds), in order."""

    engine: str
    size: int
    frames: int
    cpu_s: float
    terms: tuple[tuple[str, float], ...] = ()  # the work's terms; the engine's share is the rest

    def __post_init__(self) -> None:
        if self.frames < 1 or self.cpu_s < 0:
            raise ValueError(f"a calibration needs >= 1 frame and CPU time >= 0, got {self.frames}, {self.cpu_s}")

    @property
    def cpu_ms_per_frame(self) -> float:
        return self.cpu_s / self.frames * 1000

    @property
    def cores(self) -> float:
        """CPU cores an active session needs to render (and work on) ``FPS`` frames a second."""
        return self.cpu_s / self.frames * FPS

    @property
    def work(self) -> str:
        """The terms' names, in words ("" for the engine alone)."""
        return _in_words([name for name, _ in self.terms])

    @property
    def counts(self) -> str:
        """What the figure covers, in words."""
        return _in_words(["the engine", *(name for name, _ in self.terms)]) if self.terms else "the engine only"

    def cores_by_term(self) -> dict[str, float]:
        """Cores at ``FPS`` of the engine (what the terms leave) and of each term."""
        per = FPS / self.frames
        engine = max(0.0, self.cpu_s - sum(cpu for _, cpu in self.terms))
        return {"engine": engine * per, **{name: cpu * per for name, cpu in self.terms}}

    def describe(self) -> str:
        split = ", ".join(f"{name} {cores:.3f}" for name, cores in self.cores_by_term().items())
        return (f"{self.engine} at {self.size} px: {self.frames} frame(s) at {self.cpu_ms_per_frame:.1f} ms of CPU "
                f"each ({self.counts}): {self.cores:.3f} cores at {FPS} fps" + (f" ({split})" if self.terms else ""))


def _in_words(names: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else ""


def calibration_audio(frames: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``frames`` x 40 ms of 16 kHz float32 audio: noise whose loudness rises and falls at 3 Hz."""
    n = frames * SAMPLES_PER_FRAME
    t = np.arange(n) / (SAMPLES_PER_FRAME * FPS)
    envelope = 0.15 * (1 - np.cos(2 * np.pi * 3 * t))
    return (np.random.default_rng(seed).standard_normal(n) * envelope).astype(np.float32)


def calibrate(engine: AvatarEngine, portrait: Portrait, *, engine_name: str, size: int,
              work: Sequence[FrameWork] = (), frames: int = CALIBRATION_FRAMES,
              warm_frames: int = CALIBRATION_WARM_FRAMES, max_wall_s: float = CALIBRATION_MAX_WALL_S,
              tick_s: float = 1 / FPS, cpu_time: Callable[[], float] = time.process_time,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> Calibration:
    """Render frames on one stream of ``engine`` (each then handed to every ``work`` term, in order), one
    every ``tick_s`` as a session's clock asks for them, and measure their CPU, each term's apart.

    Blocking, about ``frames x tick_s`` of wall time: call it off the server's loop. It runs its own
    event loop, structured as a session: the stream on a worker thread of its own (as the engine
    pump's), each ``off_loop`` term on the loop's executor, the others on the loop, which sleeps
    (``sleep``) until the next tick."""
    return asyncio.run(_calibrate(engine, portrait, engine_name, size, work, frames, warm_frames, max_wall_s,
                                  tick_s, cpu_time, clock, sleep))


async def _calibrate(engine: AvatarEngine, portrait: Portrait, engine_name: str, size: int,
                     work: Sequence[FrameWork], frames: int, warm_frames: int, max_wall_s: float, tick_s: float,
                     cpu_time: Callable[[], float], clock: Callable[[], float],
                     sleep: Callable[[float], Awaitable[object]]) -> Calibration:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="calibration-engine") as engine_thread:
        stream = await loop.run_in_executor(engine_thread, lambda: engine.open_stream(portrait, size=size))
        try:
            audio = calibration_audio(warm_frames + frames + stream.lookahead_frames + 1)
            spent = [0.0] * len(work)
            fed = 0

            async def render(out: list[AvatarFrame], measure: bool) -> int:
                for frame in out:
                    start = frame.index * SAMPLES_PER_FRAME
                    slot = audio[start:start + SAMPLES_PER_FRAME]
                    if slot.size < SAMPLES_PER_FRAME:  # a flushed frame past the audio fed: silence
                        slot = np.concatenate([slot, np.zeros(SAMPLES_PER_FRAME - slot.size, np.float32)])
                    for i, term in enumerate(work):
                        before = cpu_time() if measure else 0.0
                        if term.off_loop:
                            await loop.run_in_executor(None, term.run, frame, slot)
                        else:
                            term.run(frame, slot)
                        if measure:
                            spent[i] += cpu_time() - before
                return len(out)

            async def feed() -> list[AvatarFrame]:
                nonlocal fed
                chunk = audio[fed:fed + SAMPLES_PER_FRAME]
                fed += SAMPLES_PER_FRAME
                return await loop.run_in_executor(engine_thread, stream.feed, chunk)

            for _ in range(warm_frames):
                await render(await feed(), measure=False)
            rendered, ticks, started, cpu0 = 0, 0, clock(), cpu_time()
            while rendered < frames and fed < audio.size and (rendered == 0 or clock() - started < max_wall_s):
                rendered += await render(await feed(), measure=True)
                ticks += 1
                wait = started + ticks * tick_s - clock()  # the next tick starts 40 ms after this one did
                if wait > 0 and rendered < frames:
                    await sleep(wait)
            if rendered == 0:
                rendered = await render(await loop.run_in_executor(engine_thread, stream.flush), measure=True)
            total = max(0.0, cpu_time() - cpu0)
            return Calibration(engine_name, size, max(1, rendered), total,
                               tuple((term.name, min(total, max(0.0, cpu))) for term, cpu in zip(work, spent)))
        finally:
            await loop.run_in_executor(engine_thread, stream.close)

"""``FrameSink``: a viewer on the transport contract (``realtime.transports.base``) that records what a session
sends, tick by tick, as a WebRTC track would send it (the GPU machine has no aiortc).

At clock tick ``m`` it takes content frame ``m - delay_frames`` (``video_for`` / ``audio_for``) and records
``SentFrame(wall time, content index, fresh, speaking)``. A frame is *fresh* when it is not the object sent
at the tick before: the session repeats the newest earlier frame when the engine was late, so a session
delivers 25 fps exactly when every tick is fresh. ``watch_onset(t)`` asks for the first sent frame flagged
speaking after wall time ``t`` (``time.monotonic``); its latency lands in ``onset_latencies_ms``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from avatarstream.realtime.transports.base import SessionOutput, ViewerState, ViewerStats


@dataclass(frozen=True)
class SentFrame:
    t: float  # time.monotonic() when sent
    index: int  # content index
    fresh: bool  # a new frame (not the previous one repeated)
    speaking: bool  # the engine flagged the frame's audio as speech


class FrameSink:
    """A memory transport: one per session (``start`` attaches it, ``close`` detaches it)."""

    transport = "memory"

    def __init__(self, session: SessionOutput, name: str = "sink", max_frames: int = 25 * 600) -> None:
        self.id = name
        self.session = session
        self.sent: list[SentFrame] = []
        self.max_frames = max_frames
        self.onset_latencies_ms: list[float] = []
        self._onset: float | None = None
        self.onset_seen = asyncio.Event()
        self._last: object | None = None
        self._since = time.monotonic()
        self._state = ViewerState.CONNECTING
        self._task: asyncio.Task | None = None

    @property
    def state(self) -> ViewerState:
        return self._state

    @property
    def state_since(self) -> float:
        return self._since

    def stats(self) -> ViewerStats:
        return ViewerStats(video_frames_sent=len(self.sent), details={"frames": len(self.sent)})

    def start(self) -> None:
        self.session.attach_viewer(self)
        self._task = asyncio.ensure_future(self._run())

    def watch_onset(self, pushed_at: float) -> None:
        """Report the first speaking frame sent after ``pushed_at`` (monotonic seconds)."""
        self._onset = pushed_at
        self.onset_seen.clear()

    async def _run(self) -> None:
        s = self.session
        await s.started.wait()
        assert s.clock is not None
        self._state, self._since = ViewerState.CONNECTED, time.monotonic()
        tick = s.clock.current_frame()
        while True:
            tick += 1
            await s.clock.sleep_until(s.clock.frame_time(tick))
            c = tick - s.delay_frames
            frame = s.video_for(c)
            now = time.monotonic()
            if frame is None:
                continue
            fresh = frame is not self._last
            self._last = frame
            if len(self.sent) < self.max_frames:
                self.sent.append(SentFrame(now, c, fresh, bool(frame.speaking)))
            if self._onset is not None and fresh and frame.speaking:
                self.onset_latencies_ms.append((now - self._onset) * 1000)
                self._onset = None
                self.onset_seen.set()

    def window(self, t0: float, t1: float) -> list[SentFrame]:
        return [f for f in self.sent if t0 <= f.t < t1]

    def delivered_fps(self, t0: float, t1: float) -> float:
        """Fresh frames per second of ticks sent in [t0, t1) (25.0 when no tick repeated a frame)."""
        frames = self.window(t0, t1)
        return 25.0 * sum(f.fresh for f in frames) / max(1, len(frames))

    def fps_per_second(self, t0: float, t1: float) -> list[float]:
        """``delivered_fps`` of each whole second in [t0, t1)."""
        return [self.delivered_fps(a, a + 1.0) for a in np.arange(t0, t1 - 1.0 + 1e-9, 1.0)]

    def fresh_intervals_ms(self, t0: float, t1: float) -> list[float]:
        """Time between consecutive fresh frames sent in [t0, t1) (40 ms at 25 fps)."""
        times = [f.t for f in self.window(t0, t1) if f.fresh]
        return [(b - a) * 1000 for a, b in zip(times, times[1:])]

    async def close(self) -> None:
        self._state = ViewerState.CLOSED
        self.session.detach_viewer(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

"""Admission by measured load: how many sessions this server can run at ``min_fps``, learnt from its
own sessions, and whether one more fits.

Every ``sample()`` (the registry calls it about once a second) reads, over a sliding window:

* the process's CPU time (``time.process_time``: every thread: engines, encoders, the loop) and
  the event loop thread's CPU time (``time.thread_time`` in the loop: asyncio, aiortc's
  packetisation and SRTP, which run on one core whatever the machine has);
* each session's clock counters: ticks, late ticks (the clock woke more than a frame late),
  missing frames (the engine was not ready), and its WebRTC viewers' skipped video frames.

From these: the CPU and loop time one session costs (both divided by the number of sessions
over the window, smoothed), and the frame rate each session really delivered. Capacity is the
smallest of ``cpu budget * headroom / cpu per session`` and ``headroom / loop per session``;
when a session already delivers less than ``min_fps`` (other work on the machine, a cost the
estimate missed) the capacity is the current count. A new session is admitted while the count
stays within capacity, so the session that would push the others below ``min_fps`` is refused
(``SessionLimitError``: 503 + Retry-After) instead of every session degrading together.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from avatarstream.engines.base import FPS
from avatarstream.realtime.session.session import AvatarSession

SMOOTHING = 0.3  # weight of a new window's per-session cost in the running estimate


@dataclass(frozen=True)
class AdmissionPolicy:
    enabled: bool  # False: only max_sessions limits sessions
    min_fps: float  # refuse the session that would push existing ones below this frame rate
    cpu_cores: float  # CPU the server may use; 0: every core of the machine
    headroom: float  # fraction of the CPU (and of the event loop thread) sessions may fill
    window_s: float  # seconds of measurements behind each estimate
    retry_after_s: int  # Retry-After of a refusal

    def __post_init__(self) -> None:
        if not 0 < self.min_fps <= FPS:
            raise ValueError(f"admission min_fps must be in (0, {FPS}], got {self.min_fps}")
        if self.cpu_cores < 0:
            raise ValueError(f"admission cpu_cores must be >= 0, got {self.cpu_cores}")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"admission headroom must be in (0, 1], got {self.headroom}")
        if self.window_s < 1:
            raise ValueError(f"admission window must be at least 1 s, got {self.window_s}")
        if self.retry_after_s < 1:
            raise ValueError(f"admission retry_after must be at least 1 s, got {self.retry_after_s}")

    @property
    def cpu_budget(self) -> float:
        return self.cpu_cores or float(os.cpu_count() or 1)


@dataclass(frozen=True)
class _Sample:
    t: float
    cpu: float  # process CPU seconds
    loop_cpu: float  # event loop thread CPU seconds
    sessions: int
    counters: dict[str, tuple[int, int]]  # session id -> (ticks, bad ticks)


def _counters(session: AvatarSession) -> tuple[int, int]:
    """(ticks, ticks that did not deliver a fresh frame on time) of one session so far."""
    st = session.stats
    bad = st.late_ticks + st.frames_missing
    skipped = [v.stats().get("video", {}).get("skipped", 0) for v in session.viewers if v.transport == "webrtc"]
    if skipped:
        bad += max(skipped)
    return st.ticks, bad


class LoadMonitor:
    """Learns per-session cost and delivered frame rate; answers whether one more session fits."""

    def __init__(self, policy: AdmissionPolicy, sessions: Callable[[], Iterable[AvatarSession]]) -> None:
        self.policy = policy
        self._sessions = sessions
        self._samples: deque[_Sample] = deque()
        self.cpu_per_session: float | None = None  # cores
        self.loop_per_session: float | None = None  # fraction of the loop thread
        self.cpu_cores_used = 0.0
        self.loop_busy = 0.0
        self.min_session_fps: float | None = None

    def sample(self) -> None:
        """Take one measurement (call from the event loop thread, about once a second)."""
        sessions = [s for s in self._sessions() if not s.closed and s.clock is not None]
        now = time.monotonic()
        self._samples.append(_Sample(now, time.process_time(), time.thread_time(), len(sessions),
                                     {s.id: _counters(s) for s in sessions}))
        while len(self._samples) > 2 and now - self._samples[1].t >= self.policy.window_s:
            self._samples.popleft()
        self._estimate()

    def _estimate(self) -> None:
        first, last = self._samples[0], self._samples[-1]
        dt = last.t - first.t
        if dt < self.policy.window_s * 0.5:
            return
        self.cpu_cores_used = (last.cpu - first.cpu) / dt
        self.loop_busy = (last.loop_cpu - first.loop_cpu) / dt
        counts = [s.sessions for s in self._samples]
        n = sum(counts) / len(counts)
        if n >= 1 and min(counts) == max(counts):  # a steady set of sessions over the whole window
            for attr, value in (("cpu_per_session", self.cpu_cores_used / n), ("loop_per_session", self.loop_busy / n)):
                old = getattr(self, attr)
                setattr(self, attr, value if old is None else (1 - SMOOTHING) * old + SMOOTHING * value)
        fps = []
        for sid, (ticks, bad) in last.counters.items():
            if sid in first.counters:
                d_ticks = ticks - first.counters[sid][0]
                d_bad = bad - first.counters[sid][1]
                if d_ticks >= FPS * self.policy.window_s * 0.5:
                    fps.append(FPS * max(0.0, 1 - d_bad / d_ticks) * min(1.0, d_ticks / (FPS * dt)))
        self.min_session_fps = min(fps) if fps else None

    @property
    def sessions(self) -> int:
        return self._samples[-1].sessions if self._samples else 0

    @property
    def capacity(self) -> int | None:
        """Sessions this server sustains at ``min_fps`` by the measurements so far (None: not measured)."""
        p = self.policy
        limits = []
        if self.cpu_per_session:
            limits.append(math.floor(p.cpu_budget * p.headroom / self.cpu_per_session))
        if self.loop_per_session:
            limits.append(math.floor(p.headroom / self.loop_per_session))
        if self.min_session_fps is not None and self.min_session_fps < p.min_fps:
            limits.append(self.sessions)  # already below the target: nothing more fits now
        return max(1, min(limits)) if limits else None

    def admits(self, running: int) -> bool:
        """Whether a session may start while ``running`` sessions run (or are starting)."""
        if not self.policy.enabled or running == 0:
            return True
        capacity = self.capacity
        return capacity is None or running + 1 <= capacity

    def snapshot(self) -> dict[str, Any]:
        """The capacity as ``/health`` reports it (for a front or a cluster placing sessions)."""
        cap = self.capacity
        return {
            "admission": self.policy.enabled,
            "capacity_sessions": cap,
            "available_sessions": None if cap is None else max(0, cap - self.sessions),
            "cpu_per_session_cores": None if self.cpu_per_session is None else round(self.cpu_per_session, 4),
            "loop_per_session": None if self.loop_per_session is None else round(self.loop_per_session, 4),
            "cpu_budget_cores": self.policy.cpu_budget,
            "cpu_cores_used": round(self.cpu_cores_used, 3),
            "loop_busy": round(self.loop_busy, 3),
            "min_session_fps": None if self.min_session_fps is None else round(self.min_session_fps, 2),
            "target_fps": self.policy.min_fps,
        }

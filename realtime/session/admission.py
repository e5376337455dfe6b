"""Admission by measured load: how many *active* sessions this server runs at ``min_fps``, learnt
from its own sessions, and whether one more may become active.

A session is **active** while its engine renders: a viewer of any transport (WebRTC or the agent's
WebSocket) is attached, or speech is queued or playing (``AvatarSession.active``). An inactive
session (created, nobody watching, nothing to say) costs only its clock, 25 wake-ups a second
on the event loop: well under 0.01 cores. Admission therefore counts active sessions, and
inactive ones by what they really cost.

Every ``sample()`` (the registry calls it about once a second) reads, over a sliding window:

* the process's CPU time (``time.process_time``: every thread: engines, encoders, the loop) and
  the event loop thread's CPU time (``time.thread_time`` in the loop: asyncio, aiortc's
  packetisation and SRTP, which run on one core whatever the machine has);
* how many sessions are active and inactive;
* each session's clock counters: ticks whose audio went to the engine, late ticks (the clock
  woke more than a frame late), frames missing although the engine was asked for them, and its
  WebRTC viewers' skipped video frames.

From windows over which the set of sessions did not change and no session was being created
(its face analysis is no session's running cost), for the process CPU (cores) and for the loop
thread (fraction busy) alike::

    used = base + per_inactive * inactive + per_active * active

``base`` is learnt with no session, ``per_inactive`` with inactive sessions only, ``per_active``
as ``(used - base - per_inactive * inactive) / active``, never less than half of
``used / active`` (each smoothed). Capacity, in active
sessions, is the smaller of::

    (cpu budget * headroom - base - per_inactive * inactive) / cpu per active session
    (headroom - loop base - loop per_inactive * inactive) / loop per active session

and, once active sessions have delivered less than ``min_fps`` in every window for longer than a
window and a second (other work on the machine, a cost the model missed), the active sessions
there are now. Only sessions that rendered over the whole window are judged (a session's first
frames after it starts are its start-up), and no window that overlaps a creation; a shorter dip
(a viewer's connection set-up, a stall) is a transient, not saturation. A session at 0 fps
because nothing asked for frames is inactive and never counts as evidence of saturation. Until
the first active session's cost is measured, at most one active session per core of the CPU
budget is admitted; that first estimate may come from a window in which sessions started (their
mean counts), so it is there half a window after the first one started rendering with no
creation in progress.

A new session is admitted while one more *active* session fits (it will need that cost once
watched); a session becomes active (its first viewer attaches, or speech arrives with nobody
watching) only while one more fits; otherwise ``refusal()`` says, with the measured figures,
why (``SessionLimitError``: 503 + Retry-After). Viewers of an already active session are
admitted: they add only the packetisation of an encoded stream (~0.01 cores each, measured in
docs/server.md).
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

SMOOTHING = 0.3  # weight of a new window's cost in the running estimate
CONFIRM_EXTRA_S = 1.0  # a shortfall counts once it outlasted a window by this much (one sampling interval)
MIN_COST = 1e-4  # a per-active-session cost is never taken as less than this (cores or loop fraction)


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

    @property
    def usable_cores(self) -> float:
        """Cores the sessions may fill: the budget times the headroom."""
        return self.cpu_budget * self.headroom

    @property
    def unmeasured_active_limit(self) -> int:
        """Active sessions admitted before one's cost is measured: one per core of the budget."""
        return max(1, math.floor(self.cpu_budget))


@dataclass(frozen=True)
class _Counters:
    ticks: int  # clock ticks so far
    active_ticks: int  # ticks whose audio went to the engine
    bad: int  # late ticks + frames missing although asked for + video frames a viewer skipped


@dataclass(frozen=True)
class _Sample:
    t: float
    cpu: float  # process CPU seconds
    loop_cpu: float  # event loop thread CPU seconds
    active: int
    inactive: int
    counters: dict[str, _Counters]  # session id -> its counters


def _counters(session: AvatarSession) -> _Counters:
    st = session.stats
    bad = st.late_ticks + st.active_frames_missing
    skipped = [v.stats().get("video", {}).get("skipped", 0) for v in session.viewers if v.transport == "webrtc"]
    if skipped:
        bad += max(skipped)
    return _Counters(st.ticks, st.active_ticks, bad)


class CostModel:
    """What one resource costs (process CPU in cores, or the loop thread's busy fraction):
    ``base + per_inactive * inactive + per_active * active``, each term learnt and smoothed."""

    def __init__(self) -> None:
        self.base: float | None = None  # with no session
        self.per_inactive: float | None = None
        self.per_active: float | None = None

    def learn(self, used: float, active: float, inactive: float) -> None:
        """One window's use with ``active`` and ``inactive`` sessions (steady, or their means)."""
        if active == 0 and inactive == 0:
            self.base = _smooth(self.base, used)
        elif active == 0:
            self.per_inactive = _smooth(self.per_inactive, max(0.0, used - (self.base or 0.0)) / inactive)
        else:
            rest = used - self.idle(inactive)
            self.per_active = _smooth(self.per_active, max(MIN_COST, rest / active, 0.5 * used / active))

    def idle(self, inactive: float) -> float:
        """What the server and ``inactive`` sessions use (0 for a term not yet measured)."""
        return (self.base or 0.0) + (self.per_inactive or 0.0) * inactive

    def room(self, usable: float, inactive: int) -> int | None:
        """Active sessions that fit in ``usable`` alongside ``inactive`` ones (None: not measured)."""
        if self.per_active is None:
            return None
        return max(0, math.floor((usable - self.idle(inactive)) / self.per_active + 1e-9))


def _smooth(old: float | None, value: float) -> float:
    return value if old is None else (1 - SMOOTHING) * old + SMOOTHING * value


class LoadMonitor:
    """Learns the cost of active and inactive sessions and the frame rate active ones deliver;
    answers whether one more session may become active."""

    def __init__(self, policy: AdmissionPolicy, sessions: Callable[[], Iterable[AvatarSession]]) -> None:
        self.policy = policy
        self._sessions = sessions
        self._samples: deque[_Sample] = deque()
        self.cpu = CostModel()  # cores
        self.loop = CostModel()  # fraction of the loop thread
        self.cpu_cores_used = 0.0
        self.loop_busy = 0.0
        self.min_active_fps: float | None = None  # lowest frame rate an active session delivered over the window
        self._first_active_at: float | None = None  # when the first session became active (unmeasured limit)
        self._creating = 0  # session creations in progress (portrait analysis, engine stream opening)
        self._below_since: float | None = None  # first steady window with an active session under min_fps
        self._below_for = 0.0  # s from that window to the latest steady one, all under min_fps
        self._quiet_since = 0.0  # monotonic time the last creation ended

    # -- measuring ---------------------------------------------------------------------------
    def creation_started(self) -> None:
        """A session is being created: its set-up work (face analysis, opening the engine stream)
        is no session's running cost, so no window that overlaps it teaches a cost."""
        self._creating += 1

    def creation_ended(self) -> None:
        self._creating -= 1
        self._quiet_since = time.monotonic()

    def sample(self) -> None:
        """Take one measurement (call from the event loop thread, about once a second)."""
        sessions = [s for s in self._sessions() if not s.closed and s.clock is not None]
        now = time.monotonic()
        active = sum(s.active for s in sessions)
        if active and self._first_active_at is None:
            self._first_active_at = now
        self._samples.append(_Sample(now, time.process_time(), time.thread_time(), active, len(sessions) - active,
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
        if self._creating or first.t < self._quiet_since:
            return  # a session was being created: its set-up is no session's running cost
        self._judge_frame_rate(first, last, dt)
        if len({(s.active, s.inactive) for s in self._samples}) > 1:  # sessions started or stopped
            active = sum(s.active for s in self._samples) / len(self._samples)
            if self.cpu.per_active is None and active >= 0.5:  # a first estimate, from the mean counts
                inactive = sum(s.inactive for s in self._samples) / len(self._samples)
                self.cpu.learn(self.cpu_cores_used, active, inactive)
                self.loop.learn(self.loop_busy, active, inactive)
            return
        self.cpu.learn(self.cpu_cores_used, last.active, last.inactive)
        self.loop.learn(self.loop_busy, last.active, last.inactive)

    def _judge_frame_rate(self, first: _Sample, last: _Sample, dt: float) -> None:
        """The lowest frame rate of the sessions active over the whole window (one that started
        rendering within it is in its own start-up), and how long it has stayed under ``min_fps``."""
        fps = []
        for sid, c in last.counters.items():
            before = first.counters.get(sid)
            if before is None:
                continue
            d_active, d_ticks = c.active_ticks - before.active_ticks, c.ticks - before.ticks
            if d_active >= max(d_ticks - 1, FPS * self.policy.window_s * 0.5):  # rendering all window long
                fps.append(FPS * max(0.0, 1 - (c.bad - before.bad) / d_active) * min(1.0, d_ticks / (FPS * dt)))
        self.min_active_fps = min(fps) if fps else None
        if self.min_active_fps is None or self.min_active_fps >= self.policy.min_fps:
            self._below_since, self._below_for = None, 0.0
        elif self._below_since is None:
            self._below_since = last.t
        else:
            self._below_for = last.t - self._below_since

    # -- what it says ----------------------------------------------------------------------------
    @property
    def active_sessions(self) -> int:
        return self._samples[-1].active if self._samples else 0

    @property
    def inactive_sessions(self) -> int:
        return self._samples[-1].inactive if self._samples else 0

    @property
    def saturated(self) -> bool:
        """Active sessions have delivered less than ``min_fps`` in every window for longer than a
        window and a second (two windows that do not overlap, even around a stall that straddles
        the first one's end): a shorter dip is a transient."""
        return self._below_since is not None and self._below_for >= self.policy.window_s + CONFIRM_EXTRA_S

    def _limits(self) -> dict[str, int]:
        p, inactive = self.policy, self.inactive_sessions
        limits = {}
        cpu = self.cpu.room(p.usable_cores, inactive)
        if cpu is not None:
            limits["cpu"] = cpu
        loop = self.loop.room(p.headroom, inactive)
        if loop is not None:
            limits["event loop"] = loop
        if self.saturated:
            limits["frame rate"] = self.active_sessions
        return limits

    @property
    def capacity(self) -> int | None:
        """Active sessions this server sustains at ``min_fps`` by the measurements so far (None: the
        cost of an active session is not measured yet)."""
        limits = self._limits()
        return min(limits.values()) if limits else None

    @property
    def limited_by(self) -> str:
        """What sets the capacity: "cpu", "event loop", "frame rate", or "unmeasured"."""
        limits = self._limits()
        return min(limits, key=lambda k: limits[k]) if limits else "unmeasured"

    def refusal(self, active: int) -> str | None:
        """None if one more session may become active while ``active`` are (or are becoming)
        active; otherwise what was measured that refuses it, in words."""
        p = self.policy
        if not p.enabled or active == 0:
            return None
        capacity = self.capacity
        if capacity is None:
            if active < p.unmeasured_active_limit:
                return None
            since = "" if self._first_active_at is None else \
                f" (the first became active {time.monotonic() - self._first_active_at:.1f} s ago)"
            return (f"the cost of an active session is not measured yet{since}; until it is, at most "
                    f"{p.unmeasured_active_limit} active session(s), one per core of the {p.cpu_budget:g}-core budget")
        if active + 1 <= capacity:
            return None
        limited_by = self.limited_by
        if limited_by == "frame rate":
            return (f"{self.active_sessions} active session(s) already run and one delivered "
                    f"{self.min_active_fps:.1f} fps over the last {p.window_s:g} s, below the {p.min_fps:g} fps "
                    f"target in every window of the last {self._below_for + p.window_s:.0f} s: the machine is "
                    "saturated, so no further session may become active")
        if limited_by == "event loop":
            return (f"{active} active session(s) keep the event loop thread {self._use(self.loop, active):.0%} busy "
                    f"({self.loop.per_active:.1%} each) of the {p.headroom:.0%} sessions may fill; one more "
                    f"would push them below {p.min_fps:g} fps")
        idle = self.cpu.idle(self.inactive_sessions)
        return (f"{active} active session(s) use {active * (self.cpu.per_active or 0):.2f} cores "
                f"({self.cpu.per_active:.2f} each), {self.inactive_sessions} inactive session(s) and the server "
                f"{idle:.2f}, of the {p.usable_cores:.2f} cores sessions may fill ({p.headroom:.0%} of "
                f"{p.cpu_budget:g}); one more would push them below {p.min_fps:g} fps")

    def _use(self, model: CostModel, active: int) -> float:
        return model.idle(self.inactive_sessions) + (model.per_active or 0.0) * active

    def summary(self) -> str:
        """The figures admission uses, as a sentence a user can check."""
        p, active, inactive = self.policy, self.active_sessions, self.inactive_sessions
        if not p.enabled:
            return "admission is off: only max_sessions limits sessions"
        cap = self.capacity
        head = f"{active} active and {inactive} inactive session(s); "
        if self.cpu.per_active is None:
            return head + (f"the cost of an active session is not measured yet: up to {p.unmeasured_active_limit} "
                           f"active session(s) until it is")
        out = head + (f"an active session costs {self.cpu.per_active:.3f} cores and {self.loop.per_active or 0:.1%} "
                      f"of the event loop; the server and its inactive sessions use {self.cpu.idle(inactive):.3f} "
                      f"cores; sessions may fill {p.usable_cores:.2f} cores ({p.headroom:.0%} of {p.cpu_budget:g})")
        if self.min_active_fps is not None:
            out += f"; slowest active session {self.min_active_fps:.1f} fps (target {p.min_fps:g})"
        assert cap is not None
        return out + f"; capacity {cap} active session(s) ({self.limited_by}), {max(0, cap - active)} more may start"

    def snapshot(self) -> dict[str, Any]:
        """The figures admission uses, as ``/health`` reports them (for a user, a front or a cluster)."""
        cap = self.capacity

        def r(x: float | None, n: int = 4) -> float | None:
            return None if x is None else round(x, n)

        return {
            "admission": self.policy.enabled,
            "summary": self.summary(),
            "active_sessions": self.active_sessions,
            "inactive_sessions": self.inactive_sessions,
            "capacity_sessions": cap,  # active sessions sustained at target_fps (None: not measured yet)
            "available_sessions": None if cap is None else max(0, cap - self.active_sessions),
            "limited_by": self.limited_by,
            "cpu_per_active_session_cores": r(self.cpu.per_active),
            "cpu_per_inactive_session_cores": r(self.cpu.per_inactive),
            "cpu_server_base_cores": r(self.cpu.base),
            "loop_per_active_session": r(self.loop.per_active),
            "loop_per_inactive_session": r(self.loop.per_inactive),
            "cpu_budget_cores": self.policy.cpu_budget,
            "cpu_usable_cores": round(self.policy.usable_cores, 3),
            "cpu_cores_used": round(self.cpu_cores_used, 3),
            "loop_busy": round(self.loop_busy, 3),
            "min_active_session_fps": r(self.min_active_fps, 2),
            "target_fps": self.policy.min_fps,
            "window_s": self.policy.window_s,
        }

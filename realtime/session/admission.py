"""Admission by measured load: how many *active* sessions this server runs at ``min_fps``, learnt
from its own sessions, and whether one more may become active.

A session is **active** while its engine renders: a viewer of any transport (WebRTC or the agent's
WebSocket) is attached, or speech is queued or playing (``AvatarSession.active``). An inactive
session (created, nobody watching, nothing to say) costs only its clock, 25 wake-ups a second
on the event loop: well under 0.01 cores. Admission therefore counts active sessions, and
inactive ones by what they really cost. Creating a session reserves nothing: it is judged when
it becomes active (its first viewer, or speech with nobody watching), so any number of
concurrent creates on a server with room for one more active session are admitted.

The model is a pure function of its samples. Every ``sample()`` (the registry calls it about once
a second) reads a ``LoadSample``: the time (the injected clock, monotonic seconds), the process's
CPU time (every thread: engines, encoders, the loop) and the event loop thread's CPU time
(asyncio, aiortc's packetisation and SRTP, which run on one core whatever the machine has), how
many sessions are active and inactive, and each session's clock counters (ticks whose audio went
to the engine, late ticks, frames missing although the engine was asked for them, video frames
its viewers skipped). ``observe(sample)`` is all the logic; tests feed it samples.

From windows over which the set of sessions did not change and no session was being created
(its face analysis is no session's running cost), for the process CPU (cores) and for the loop
thread (fraction busy) alike::

    used = base + per_inactive * inactive + per_active * active

``base`` is learnt with no session, ``per_inactive`` with inactive sessions only, ``per_active``
as ``(used - base - per_inactive * inactive) / active``, never less than half of
``used / active`` (each smoothed). Capacity, in active sessions, is the smaller of::

    max(fitted, floor((cpu budget * headroom - base - per_inactive * inactive) / cpu per active session))
    max(fitted, floor((headroom - loop base - loop per_inactive * inactive) / loop per active session))

and, once active sessions have delivered less than ``min_fps`` in every window for longer than a
window and a second (``CONFIRM_EXTRA_S``: other work on the machine, a cost the model missed),
the active sessions there are now. Only sessions that rendered over the whole window are judged
(a session's first frames after it starts are its start-up), and no window that overlaps a
creation; a shorter dip (a viewer's connection set-up, a stall) is a transient, not saturation.
A session at 0 fps because nothing asked for frames is inactive and never counts as evidence.

``fitted`` is the hysteresis at the budget's edge: the most active sessions a steady window
measured within the budget (process CPU <= budget * headroom, loop <= headroom) at >= ``min_fps``.
A count that ran within the budget stays admitted when the per-session cost, re-measured on fewer
sessions (the server's fixed costs shared by fewer), rounds the model's room down; a steady
window of that many over the budget, or saturation, takes it back (``fitted`` drops below it).

Until an active session's cost is measured, the start-up calibration stands in for it
(``calibration.py``: CPU per frame of the engine on the loaded portrait and of the per-frame work
the transport supplies, with WebRTC the video and Opus encodes and their RTP + SRTP, x 25 fps); the first measurement may come from a window in which sessions started (their mean
counts), half a window after the first one started rendering with no creation in progress. With
neither, one active session at a time. A measured cost is kept after its sessions end (the last
measured figure).

One more session may become active while it fits (``refusal()`` is None); the first one always
may (none runs that it could slow down), even where one costs more than the whole budget
(capacity 0: it runs alone). Otherwise ``refusal()`` says, with the figures, why
(``SessionLimitError``: 503 + Retry-After). Viewers of an already active session are admitted:
they add only the packetisation of an encoded stream (~0.01 cores each, measured in
docs/server.md).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from avatarstream.engines.base import FPS
from avatarstream.realtime.session.calibration import Calibration
from avatarstream.realtime.session.session import AvatarSession

SMOOTHING = 0.3  # weight of a new window's cost in the running estimate
CONFIRM_EXTRA_S = 1.0  # a shortfall counts once it outlasted a window by this much (one sampling interval)
MIN_COST = 1e-4  # a per-active-session cost is never taken as less than this (cores or loop fraction)
EPS = 1e-9  # figures equal to a limit fit it (rounding of sums)

Clock = Callable[[], float]  # monotonic seconds


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

    def describe_usable(self) -> str:
        return f"the {self.usable_cores:.3g} cores sessions may fill ({self.headroom:.0%} of {self.cpu_budget:g})"


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds so far: the whole process (every thread) and the event loop thread alone."""

    process_s: float
    loop_s: float


def read_cpu_times() -> CpuTimes:
    """This process's CPU times (call in the event loop thread: ``thread_time`` is the caller's)."""
    return CpuTimes(time.process_time(), time.thread_time())


@dataclass(frozen=True)
class SessionCounters:
    """One session's clock counters (cumulative)."""

    ticks: int  # clock ticks so far
    active_ticks: int  # ticks whose audio went to the engine
    bad: int  # late ticks + frames missing although asked for + video frames a viewer skipped


@dataclass(frozen=True)
class LoadSample:
    """One measurement: what ``LoadMonitor.observe`` learns from."""

    t: float  # monotonic seconds
    cpu: CpuTimes
    active: int
    inactive: int
    counters: Mapping[str, SessionCounters]  # session id -> its counters


def session_counters(session: AvatarSession) -> SessionCounters:
    st = session.stats
    bad = st.late_ticks + st.active_frames_missing
    skipped = [v.stats().video_frames_skipped for v in session.viewers]  # any transport (transports/base.py)
    if skipped:
        bad += max(skipped)
    return SessionCounters(st.ticks, st.active_ticks, bad)


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

    def room(self, usable: float, inactive: int, per_active: float | None = None) -> int | None:
        """Active sessions that fit in ``usable`` alongside ``inactive`` ones at ``per_active`` each
        (default: the measured cost; None: not measured)."""
        cost = self.per_active if per_active is None else per_active
        if cost is None:
            return None
        return max(0, math.floor((usable - self.idle(inactive)) / cost + EPS))


def _running_go_on(active: int) -> str:
    running = "the running one goes on" if active == 1 else f"the {active} running go on"
    return f"{running}, no other may start rendering until {'it ends' if active == 1 else 'they end'}"


def _smooth(old: float | None, value: float) -> float:
    return value if old is None else (1 - SMOOTHING) * old + SMOOTHING * value


class LoadMonitor:
    """Learns the cost of active and inactive sessions and the frame rate active ones deliver;
    answers whether one more session may become active. ``clock`` and ``cpu_times`` are injected
    (tests pass their own); ``observe`` is the whole model."""

    def __init__(self, policy: AdmissionPolicy, sessions: Callable[[], Iterable[AvatarSession]], *,
                 clock: Clock = time.monotonic, cpu_times: Callable[[], CpuTimes] = read_cpu_times) -> None:
        self.policy = policy
        self._sessions = sessions
        self._clock = clock
        self._cpu_times = cpu_times
        self._samples: deque[LoadSample] = deque()
        self.cpu = CostModel()  # cores
        self.loop = CostModel()  # fraction of the loop thread
        self.calibration: Calibration | None = None  # the engine's start-up figure (until a session is measured)
        self.fitted = 0  # most active sessions a steady window measured within the budget at >= min_fps
        self.cpu_cores_used = 0.0
        self.loop_busy = 0.0
        self.min_active_fps: float | None = None  # lowest frame rate an active session delivered over the window
        self._creating = 0  # session creations in progress (portrait analysis, engine stream opening)
        self._below_since: float | None = None  # first steady window with an active session under min_fps
        self._below_for = 0.0  # s from that window to the latest steady one, all under min_fps
        self._quiet_since = -math.inf  # clock time the last creation ended

    # -- measuring ---------------------------------------------------------------------------
    def calibrated(self, calibration: Calibration) -> None:
        """The engine's start-up calibration: an active session's CPU until one is measured."""
        self.calibration = calibration

    def creation_started(self) -> None:
        """A session is being created: its set-up work (face analysis, opening the engine stream)
        is no session's running cost, so no window that overlaps it teaches a cost."""
        self._creating += 1

    def creation_ended(self) -> None:
        self._creating -= 1
        self._quiet_since = self._clock()

    def sample(self) -> None:
        """Take one measurement (call from the event loop thread, about once a second)."""
        sessions = [s for s in self._sessions() if not s.closed and s.clock is not None]
        active = sum(s.active for s in sessions)
        self.observe(LoadSample(self._clock(), self._cpu_times(), active, len(sessions) - active,
                                {s.id: session_counters(s) for s in sessions}))

    def observe(self, sample: LoadSample) -> None:
        """Learn from one measurement (samples in time order)."""
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.t - self._samples[1].t >= self.policy.window_s:
            self._samples.popleft()
        self._estimate()

    def _estimate(self) -> None:
        first, last = self._samples[0], self._samples[-1]
        dt = last.t - first.t
        if dt < self.policy.window_s * 0.5:
            return
        self.cpu_cores_used = (last.cpu.process_s - first.cpu.process_s) / dt
        self.loop_busy = (last.cpu.loop_s - first.cpu.loop_s) / dt
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
        self._judge_fit(last.active)

    def _judge_fit(self, active: int) -> None:
        """A steady window of ``active`` sessions: within the budget at >= min_fps, that many fit
        (``fitted``); over the budget, that many do not."""
        if active == 0:
            return
        p = self.policy
        if self.cpu_cores_used > p.usable_cores + EPS or self.loop_busy > p.headroom + EPS:
            self.fitted = min(self.fitted, active - 1)
        elif self.min_active_fps is None or self.min_active_fps >= p.min_fps:
            self.fitted = max(self.fitted, active)

    def _judge_frame_rate(self, first: LoadSample, last: LoadSample, dt: float) -> None:
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
        if self.saturated:  # that many do not fit
            self.fitted = max(0, min(self.fitted, last.active - 1))

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

    @property
    def cpu_per_active(self) -> float | None:
        """The CPU an active session costs (cores): measured, else the engine's calibration."""
        if self.cpu.per_active is not None:
            return self.cpu.per_active
        return None if self.calibration is None else self.calibration.cores

    def _limits(self) -> dict[str, int]:
        p, inactive = self.policy, self.inactive_sessions
        limits = {}
        cpu = self.cpu.room(p.usable_cores, inactive)
        if cpu is not None:
            limits["cpu"] = max(cpu, self.fitted)
        elif self.calibration is not None:
            limits["calibration"] = self.cpu.room(p.usable_cores, inactive, max(MIN_COST, self.calibration.cores)) or 0
        loop = self.loop.room(p.headroom, inactive)
        if loop is not None:
            limits["event loop"] = max(loop, self.fitted)
        if self.saturated:
            limits["frame rate"] = self.active_sessions
        return limits

    @property
    def capacity(self) -> int | None:
        """Active sessions this server sustains at ``min_fps`` by the measurements so far (None:
        neither measured nor calibrated)."""
        limits = self._limits()
        return min(limits.values()) if limits else None

    @property
    def limited_by(self) -> str:
        """What sets the capacity: "cpu", "event loop", "frame rate", "calibration" (the engine's
        start-up figure, no session measured yet) or "unmeasured"."""
        limits = self._limits()
        return min(limits, key=lambda k: limits[k]) if limits else "unmeasured"

    def refusal(self, active: int) -> str | None:
        """None if one more session may become active while ``active`` are; otherwise what was
        measured that refuses it, in words (short: an HTTP error message keeps 500 characters)."""
        p = self.policy
        if not p.enabled or active == 0:
            return None
        capacity = self.capacity
        if capacity is None:
            return (f"{active} active session(s) run and nothing is measured yet (no engine calibration, no "
                    "active session measured): one active session at a time until its cost is")
        if active + 1 <= capacity:
            return None
        limited_by = self.limited_by
        if limited_by == "frame rate":
            return (f"{self.active_sessions} active session(s) already run and one delivered "
                    f"{self.min_active_fps:.1f} fps over the last {p.window_s:g} s, below the {p.min_fps:g} fps "
                    f"target in every window of the last {self._below_for + p.window_s:.0f} s: the machine is "
                    "saturated, so no further session may become active")
        inactive = self.inactive_sessions
        if limited_by == "event loop":
            per = self.loop.per_active or 0.0
            if capacity == 0:
                return (f"capacity is 0 active sessions: one keeps the event loop thread {per:.1%} busy (measured), "
                        f"more than the {p.headroom:.0%} sessions may fill beside the server and {inactive} "
                        f"inactive session(s) ({self.loop.idle(inactive):.1%}); {_running_go_on(active)}")
            return (f"{active} active session(s) keep the event loop thread {self._use(self.loop, active):.0%} busy "
                    f"({per:.1%} each, measured) of the {p.headroom:.0%} sessions may fill: capacity {capacity} active "
                    f"session(s); "
                    f"one more would push them below {p.min_fps:g} fps")
        per = self.cpu_per_active or 0.0
        idle = self.cpu.idle(inactive)
        if limited_by == "calibration":
            assert self.calibration is not None
            cal = self.calibration
            source = (f"by the start-up calibration: {cal.cpu_ms_per_frame:.1f} ms of CPU a frame "
                      f"({cal.engine}, {cal.size} px, {cal.counts}); no running session measured yet")
        else:
            source = "measured"
        if capacity == 0:
            return (f"capacity is 0 active sessions: one costs {per:.3g} cores ({source}), more than "
                    f"{p.describe_usable()} beside the server and {inactive} inactive session(s) ({idle:.3g}); "
                    f"{_running_go_on(active)}")
        fitted = f" ({self.fitted} ran within the budget, measured)" if self.fitted == capacity else ""
        return (f"{active} active session(s) use {active * per:.3g} cores ({per:.3g} each, {source}), the server "
                f"and {inactive} inactive session(s) {idle:.3g}, of {p.describe_usable()}: capacity "
                f"{capacity} active session(s){fitted}; one more would push them below {p.min_fps:g} fps")

    def _use(self, model: CostModel, active: int) -> float:
        return model.idle(self.inactive_sessions) + (model.per_active or 0.0) * active

    def summary(self) -> str:
        """The figures admission uses, as a sentence a user can check."""
        p, active, inactive = self.policy, self.active_sessions, self.inactive_sessions
        if not p.enabled:
            return "admission is off: only max_sessions limits sessions"
        cap = self.capacity
        head = f"{active} active and {inactive} inactive session(s); "
        if cap is None:
            return head + "nothing measured yet (no engine calibration): one active session at a time until it is"
        if self.cpu.per_active is None:
            assert self.calibration is not None
            out = head + f"no active session measured yet; the start-up calibration: {self.calibration.describe()}"
        else:
            out = head + (f"an active session costs {self.cpu.per_active:.3f} cores and "
                          f"{self.loop.per_active or 0:.1%} of the event loop (measured)")
        out += (f"; the server and its inactive sessions use {self.cpu.idle(inactive):.3f} cores; sessions may "
                f"fill {p.usable_cores:.2f} cores ({p.headroom:.0%} of {p.cpu_budget:g})")
        if self.fitted:
            out += f"; {self.fitted} active session(s) measured to fit"
        if self.min_active_fps is not None:
            out += f"; slowest active session {self.min_active_fps:.1f} fps (target {p.min_fps:g})"
        return out + f"; capacity {cap} active session(s) ({self.limited_by}), {max(0, cap - active)} more may start"

    def snapshot(self) -> dict[str, Any]:
        """The figures admission uses, as ``/health`` reports them (for a user, a front or a cluster)."""
        cap = self.capacity
        cal = self.calibration

        def r(x: float | None, n: int = 4) -> float | None:
            return None if x is None else round(x, n)

        return {
            "admission": self.policy.enabled,
            "summary": self.summary(),
            "active_sessions": self.active_sessions,
            "inactive_sessions": self.inactive_sessions,
            "capacity_sessions": cap,  # active sessions sustained at target_fps (None: neither measured nor calibrated)
            "available_sessions": None if cap is None else max(0, cap - self.active_sessions),
            "limited_by": self.limited_by,
            "fitted_sessions": self.fitted,
            "cpu_per_active_session_cores": r(self.cpu.per_active),
            "cpu_per_inactive_session_cores": r(self.cpu.per_inactive),
            "cpu_server_base_cores": r(self.cpu.base),
            "calibrated_cpu_per_active_session_cores": None if cal is None else r(cal.cores),
            "calibration_ms_per_frame": None if cal is None else r(cal.cpu_ms_per_frame, 2),
            # the calibrated figure's parts (cores): the engine and each per-frame term the transport ran
            "calibrated_cores_by_term": None if cal is None else {k: r(v) for k, v in cal.cores_by_term().items()},
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

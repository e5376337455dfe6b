"""Admission as plain logic (``realtime/session/admission.py``, ``calibration.py``): an injected
clock, injected CPU times and frame-rate counters, exact expected results; no server, no sleeping.
The end-to-end properties that hold on any machine are in ``test_admission.py``."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from avatarstream.engines.base import Portrait
from avatarstream.realtime.clock import SessionClock
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.errors import SessionLimitError
from avatarstream.realtime.session.admission import (AdmissionPolicy, CostModel, CpuTimes, LoadMonitor, LoadSample,
                                                     SessionCounters)
from avatarstream.realtime.session.calibration import Calibration, FrameWork, calibrate, calibration_audio
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.session.session import AvatarSession, SessionOptions

PORTRAIT = Portrait(np.full((128, 128, 3), 128, np.uint8))


def _policy(cpu_cores: float = 1.0, window_s: float = 2.0) -> AdmissionPolicy:
    return AdmissionPolicy(enabled=True, min_fps=24.0, cpu_cores=cpu_cores, headroom=0.85, window_s=window_s,
                           retry_after_s=3)


class Feed:
    """A ``LoadMonitor`` on this feed's clock, driven one sample a second: CPU accrues at the given
    rate over each second, every active session's clock ticks 25 times, ``bad`` of them late or
    missing (inactive sessions tick without rendering)."""

    def __init__(self, policy: AdmissionPolicy | None = None) -> None:
        self.t = 0.0
        self.cpu = CpuTimes(0.0, 0.0)
        self.counters: dict[str, SessionCounters] = {}
        self.monitor = LoadMonitor(policy or _policy(), lambda: [], clock=lambda: self.t, cpu_times=lambda: self.cpu)

    def second(self, cores: float, active: int, inactive: int = 0, bad: int = 0, loop: float = 0.1) -> None:
        self.t += 1.0
        self.cpu = CpuTimes(self.cpu.process_s + cores, self.cpu.loop_s + loop)
        for i in range(active):
            c = self.counters.get(f"a{i}", SessionCounters(0, 0, 0))
            self.counters[f"a{i}"] = SessionCounters(c.ticks + 25, c.active_ticks + 25, c.bad + bad)
        for key in [k for k in self.counters if int(k[1:]) >= active]:
            del self.counters[key]
        idle = {f"i{i}": SessionCounters(int(self.t) * 25, 0, 0) for i in range(inactive)}
        self.monitor.observe(LoadSample(self.t, self.cpu, active, inactive, {**self.counters, **idle}))

    def steady(self, seconds: int, cores: float, active: int, inactive: int = 0, bad: int = 0) -> None:
        for _ in range(seconds):
            self.second(cores, active, inactive, bad)


def _monitor(policy: AdmissionPolicy | None = None) -> tuple[LoadMonitor, Feed]:
    feed = Feed(policy)
    return feed.monitor, feed


def test_cost_model_terms():
    """base with no session, per_inactive with inactive ones only, per_active from the rest, never
    below half of used / active; room = floor((usable - idle) / per_active); smoothing 0.3."""
    m = CostModel()
    assert m.room(0.85, 0) is None  # nothing measured
    m.learn(0.05, 0, 0)
    m.learn(0.07, 0, 4)
    m.learn(0.47, 2, 4)
    assert (m.base, m.per_inactive, m.per_active) == pytest.approx((0.05, 0.005, 0.2), abs=1e-12)
    assert m.idle(4) == pytest.approx(0.07, abs=1e-12)
    assert m.room(0.85, 4) == 3  # (0.85 - 0.07) / 0.2 = 3.9
    assert m.room(0.47, 4) == 2  # exactly 2: a figure equal to its limit fits
    m.learn(0.67, 2, 4)  # a window at 0.3 each
    assert m.per_active == pytest.approx(0.7 * 0.2 + 0.3 * 0.3, abs=1e-12)
    floor = CostModel()
    floor.base = 0.09  # the server alone once used more than now: the rest would be 0.005 each
    floor.learn(0.1, 2, 0)
    assert floor.per_active == pytest.approx(0.025, abs=1e-12)  # half of used / active


def test_monitor_learns_from_steady_windows_and_a_first_estimate_from_mean_counts():
    monitor, feed = _monitor()
    feed.steady(3, 0.05, active=0)
    assert monitor.cpu.base == pytest.approx(0.05, abs=1e-12)
    monitor.creation_started()
    feed.steady(2, 0.5, active=0, inactive=4)  # face analysis: no session's running cost
    monitor.creation_ended()
    feed.second(0.07, active=0, inactive=4)  # the window [4, 6] overlaps the creation: it teaches nothing
    assert monitor.cpu.per_inactive is None
    feed.second(0.07, active=0, inactive=4)  # [5, 7]: steady, from the creation's end on
    assert monitor.cpu.per_inactive == pytest.approx(0.005, abs=1e-12)
    # two of them get a viewer: 0.46 cores from then on. The window [6, 8] is mixed (4i, 4i, 2a+2i):
    # the first estimate uses its mean counts (2/3 active, 10/3 inactive) and its mean use
    feed.second(0.46, active=2, inactive=2)
    first = ((0.07 + 0.46) / 2 - 0.05 - 0.005 * 10 / 3) / (2 / 3)
    assert monitor.cpu.per_active == pytest.approx(first, abs=1e-12)
    feed.second(0.46, active=2, inactive=2)  # [7, 9] still mixed: the first estimate stands
    assert monitor.cpu.per_active == pytest.approx(first, abs=1e-12)
    feed.second(0.46, active=2, inactive=2)  # steady: (0.46 - 0.05 - 0.01) / 2 = 0.2, smoothed
    assert monitor.cpu.per_active == pytest.approx(0.7 * first + 0.3 * 0.2, abs=1e-12)
    assert (monitor.active_sessions, monitor.inactive_sessions, monitor.limited_by) == (2, 2, "cpu")
    assert monitor.cpu_cores_used == pytest.approx(0.46, abs=1e-12)


def test_frame_rate_evidence_needs_a_window_and_a_second_below_target():
    """One active session, well within the CPU budget, that delivers 20 fps (5 of 25 ticks bad)
    from t = 10: the first window under 24 fps ends at t = 11, saturation is confirmed once the
    shortfall has lasted a window (2 s) and a second more, at t = 14; a 3 s dip never confirms."""
    monitor, feed = _monitor()
    feed.steady(10, 0.1, active=1)
    assert monitor.min_active_fps == 25.0 and not monitor.saturated and monitor.fitted == 1
    seen = {}
    for _ in range(5):
        feed.second(0.1, active=1, bad=5)
        seen[feed.t] = (monitor.min_active_fps, monitor.saturated)
    assert seen == {11.0: (22.5, False), 12.0: (20.0, False), 13.0: (20.0, False), 14.0: (20.0, True),
                    15.0: (20.0, True)}
    assert monitor.capacity == 1 and monitor.limited_by == "frame rate" and monitor.fitted == 0
    assert monitor.refusal(1) == (
        "1 active session(s) already run and one delivered 20.0 fps over the last 2 s, below the 24 fps target "
        "in every window of the last 6 s: the machine is saturated, so no further session may become active")

    monitor, feed = _monitor()
    feed.steady(10, 0.1, active=1)
    feed.steady(3, 0.1, active=1, bad=5)  # a stall of 3 s: a transient
    feed.steady(3, 0.1, active=1)
    assert monitor.min_active_fps == 25.0 and not monitor.saturated
    assert monitor.capacity == 8 and monitor.refusal(7) is None  # 0.85 / 0.1 = 8.5


def test_an_unwatched_session_is_no_evidence_of_saturation():
    monitor, feed = _monitor()
    feed.steady(6, 0.01, active=0, inactive=5)  # their clocks tick, nothing renders: 0 fps, inactive
    assert monitor.min_active_fps is None and not monitor.saturated and monitor.capacity is None


def test_refusal_states_the_measured_figures():
    monitor, feed = _monitor()
    feed.steady(3, 0.05, active=0)
    feed.steady(3, 0.07, active=0, inactive=4)
    feed.steady(3, 0.47, active=2, inactive=2)  # mixed, then steady: per_active from the mean counts...
    feed.steady(40, 0.65, active=3, inactive=1)  # ...converges on (0.65 - 0.055) / 3 = 0.198
    assert monitor.cpu.per_active == pytest.approx(0.595 / 3, abs=1e-6)
    assert monitor.capacity == 4 and monitor.refusal(3) is None  # (0.85 - 0.055) / 0.198 = 4.0
    assert monitor.refusal(4) == (
        "4 active session(s) use 0.793 cores (0.198 each, measured), the server and 1 inactive session(s) 0.055, "
        "of the 0.85 cores sessions may fill (85% of 1): capacity 4 active session(s); one more would push them "
        "below 24 fps")
    assert monitor.summary().endswith("capacity 4 active session(s) (cpu), 1 more may start")


def test_hysteresis_a_count_measured_within_budget_stays_admitted():
    """The CI run's edge (0.5-core budget, 0.425 usable): 3 active sessions measured 0.39 cores
    (0.13 each: fits); after one left, 2 measured 0.29 (0.145 each), and floor(0.425 / 0.145) = 2
    would refuse the third again. 3 were measured to fit: capacity stays 3, until a window of 3 over
    the budget takes it back."""
    monitor, feed = _monitor(_policy(cpu_cores=0.5))
    feed.steady(20, 0.39, active=3)
    assert monitor.fitted == 3 and monitor.capacity == 3 and monitor.refusal(2) is None
    feed.steady(20, 0.29, active=2)
    assert monitor.cpu.room(0.425, 0) == 2  # the model alone rounds down
    assert monitor.fitted == 3 and monitor.capacity == 3 and monitor.refusal(2) is None
    assert monitor.refusal(3) == (
        "3 active session(s) use 0.435 cores (0.145 each, measured), the server and 0 inactive session(s) 0, of "
        "the 0.425 cores sessions may fill (85% of 0.5): capacity 3 active session(s) (3 ran within the budget, "
        "measured); one more would push them below 24 fps")
    feed.steady(3, 0.45, active=3)  # 3 now measure over the 0.425 usable cores
    assert monitor.fitted == 2 and monitor.capacity == 2 and "capacity 2" in monitor.refusal(2)


def test_one_active_session_costing_more_than_the_budget():
    """The case CI hit: a 0.3-core budget (0.255 usable) and one active session measured at 0.3
    cores. Capacity is 0 and says so; the running session goes on (nothing stops it); no other may
    become active while it runs (nor be created: no room); once it ends one may start alone."""
    monitor, feed = _monitor(_policy(cpu_cores=0.3))
    feed.steady(3, 0.3, active=1)
    assert monitor.capacity == 0 and monitor.limited_by == "cpu" and monitor.fitted == 0
    assert monitor.refusal(1) == (
        "capacity is 0 active sessions: one costs 0.3 cores (measured), more than the 0.255 cores sessions may "
        "fill (85% of 0.3) beside the server and 0 inactive session(s) (0); the running one goes on, no other may "
        "start rendering until it ends")
    assert monitor.refusal(0) is None  # with none running there is nothing to slow down
    snap = monitor.snapshot()
    assert (snap["capacity_sessions"], snap["available_sessions"], snap["limited_by"]) == (0, 0, "cpu")
    feed.steady(3, 0.0, active=0)
    assert monitor.refusal(0) is None and monitor.capacity == 0  # the last measured cost is kept


def test_calibration_stands_in_until_a_session_is_measured():
    monitor, feed = _monitor()
    assert monitor.capacity is None and monitor.refusal(0) is None
    assert monitor.refusal(1) == ("1 active session(s) run and nothing is measured yet (no engine calibration, no "
                                  "active session measured): one active session at a time until its cost is")
    monitor.calibrated(Calibration("lite", 128, frames=25, cpu_s=0.25))  # 10 ms a frame: 0.25 cores
    assert monitor.capacity == 3 and monitor.limited_by == "calibration"  # floor(0.85 / 0.25)
    feed.second(0.0, active=1)  # one active session, not measured yet (half a window needs two samples)
    assert monitor.refusal(2) is None
    assert monitor.refusal(3) == (
        "3 active session(s) use 0.75 cores (0.25 each, by the start-up calibration: 10.0 ms of CPU a frame (lite, "
        "128 px, the engine only); no running session measured yet), the server and 0 inactive session(s) 0, of "
        "the 0.85 cores sessions may fill (85% of 1): capacity 3 active session(s); one more would push them below "
        "24 fps")
    tiny = Feed(_policy(cpu_cores=0.01)).monitor  # 0.0085 usable: the calibrated session does not fit
    tiny.calibrated(Calibration("lite", 128, frames=25, cpu_s=0.25, terms=(("vp8 encoding", 0.15),)))
    assert tiny.refusal(1) == (
        "capacity is 0 active sessions: one costs 0.25 cores (by the start-up calibration: 10.0 ms of CPU a frame "
        "(lite, 128 px, the engine and vp8 encoding); no running session measured yet), more than the 0.0085 "
        "cores sessions may fill (85% of 0.01) beside the server and 0 inactive session(s) (0); the running one "
        "goes on, no other may start rendering until it ends")
    snap = monitor.snapshot()
    assert snap["calibrated_cpu_per_active_session_cores"] == 0.25 and snap["calibration_ms_per_frame"] == 10.0
    assert snap["cpu_per_active_session_cores"] is None
    feed.steady(2, 0.2, active=1)  # measured: 0.2 a session replaces the calibration
    assert monitor.limited_by == "cpu" and monitor.capacity == 4


class FakeTime:
    """A clock that ``sleep`` moves, and a CPU clock that the engine's feeds and the work terms move."""

    def __init__(self) -> None:
        self.now, self.cpu = 0.0, 10.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def spend(self, cpu_s: float) -> None:
        self.cpu += cpu_s


class CostlyEngine:
    """``bar_engine`` whose every feed costs ``feed_cpu_s`` on a ``FakeTime``'s CPU clock and ``wall_s`` on its clock."""

    def __init__(self, engine, time: FakeTime, feed_cpu_s: float, wall_s: float = 0.0) -> None:
        self.engine, self.time, self.feed_cpu_s, self.wall_s = engine, time, feed_cpu_s, wall_s
        self.lookahead_frames = engine.lookahead_frames

    def open_stream(self, portrait, *, size=512, controls=None):
        stream = self.engine.open_stream(portrait, size=size)
        feed = stream.feed

        def costly_feed(audio):
            self.time.spend(self.feed_cpu_s)
            self.time.now += self.wall_s
            return feed(audio)

        stream.feed = costly_feed
        return stream


def test_calibrate_measures_the_engines_cpu_per_frame(bar_engine):
    cpu = iter([10.0, 10.3])
    cal = calibrate(bar_engine, PORTRAIT, engine_name="bar", size=64, frames=25, cpu_time=lambda: next(cpu),
                    clock=lambda: 0.0, sleep=FakeTime().sleep)
    assert (cal.engine, cal.size, cal.frames, cal.cpu_s) == ("bar", 64, 25, pytest.approx(0.3))
    assert cal.cpu_ms_per_frame == pytest.approx(12.0) and cal.cores == pytest.approx(0.3)
    assert len(bar_engine.streams) == 1 and cal.terms == () and cal.counts == "the engine only"
    t = FakeTime()  # an engine taking 0.9 s a frame: behind its pace, it never sleeps; 2 s caps it at 3 frames
    slow = calibrate(CostlyEngine(bar_engine, t, 0.0, wall_s=0.9), PORTRAIT, engine_name="bar", size=64,
                     warm_frames=0, max_wall_s=2.0, cpu_time=lambda: t.cpu, clock=lambda: t.now, sleep=t.sleep)
    assert slow.frames == 2 and t.slept == []  # 3 feeds, the first frame waiting for its lookahead


def test_calibration_paces_frames_and_measures_each_term_on_the_frames_audio(bar_engine):
    """Frames are rendered one every 40 ms (a session's pace: each sleep waits for the next tick), the
    off-loop term on an executor thread, the other on the loop; each term gets every frame with that
    frame's 40 ms of the calibration audio, and its CPU is counted apart from the engine's (what the
    terms leave of the total). Warm-up frames are worked on but not measured."""
    t = FakeTime()
    seen: list[tuple[int, np.ndarray]] = []

    threads: dict[str, set[str]] = {"vp8 encoding": set(), "opus encoding": set()}

    def video(frame, audio):
        seen.append((frame.index, audio.copy()))
        threads["vp8 encoding"].add(threading.current_thread().name)
        t.spend(0.003)

    def opus(frame, audio):
        threads["opus encoding"].add(threading.current_thread().name)
        t.spend(0.001)

    work = [FrameWork("vp8 encoding", video, off_loop=True), FrameWork("opus encoding", opus)]
    cal = calibrate(CostlyEngine(bar_engine, t, 0.002), PORTRAIT, engine_name="bar", size=64, work=work, frames=25,
                    warm_frames=3, cpu_time=lambda: t.cpu, clock=lambda: t.now, sleep=t.sleep)
    assert cal.frames == 25 and [i for i, _ in seen] == list(range(27))  # 2 frames of 3 warm-up feeds (lookahead 1)
    audio = calibration_audio(3 + 25 + 1 + 1)
    assert all(np.array_equal(a, audio[i * 640:(i + 1) * 640]) for i, a in seen)
    assert t.slept == [pytest.approx(0.04)] * 24  # 25 measured ticks: 40 ms from each to the next
    # as in a session: the off-loop term on an executor thread, the other on the calibration's loop (the caller's
    # thread), the engine's stream on a thread of its own
    loop_thread = threading.current_thread().name
    assert len(threads["vp8 encoding"]) >= 1 and loop_thread not in threads["vp8 encoding"]
    assert threads["opus encoding"] == {loop_thread}
    assert cal.terms == (("vp8 encoding", pytest.approx(0.075)), ("opus encoding", pytest.approx(0.025)))
    assert cal.cpu_s == pytest.approx(0.15)  # 25 feeds at 2 ms + the terms
    assert cal.cores_by_term() == {"engine": pytest.approx(0.05), "vp8 encoding": pytest.approx(0.075),
                                   "opus encoding": pytest.approx(0.025)}
    assert cal.counts == "the engine, vp8 encoding and opus encoding" and cal.work == "vp8 encoding and opus encoding"
    assert cal.describe() == ("bar at 64 px: 25 frame(s) at 6.0 ms of CPU each (the engine, vp8 encoding and opus "
                              "encoding): 0.150 cores at 25 fps (engine 0.050, vp8 encoding 0.075, opus encoding 0.025)")


def test_session_and_clock_read_the_injected_time(bar_engine):
    now = [100.0]
    clock = SessionClock.start_now(lambda: now[0])
    now[0] = 100.0 + 0.04 * 7 + 0.001
    assert (clock.t0, clock.current_frame(), clock.current_audio_frame()) == (100.0, 7, 14)
    session = AvatarSession(bar_engine, PORTRAIT, options=SessionOptions(size=64), clock=lambda: now[0])
    assert session.last_activity == now[0]
    now[0] = 205.0
    session.push_audio(np.zeros(640, np.float32))
    assert session.last_activity == 205.0 and list(session._pushed_at.values()) == [205.0]


async def test_concurrent_creates_on_an_idle_server_are_all_admitted(bar_engine):
    """8 creates at once on an idle registry: all admitted, since a session being created reserves
    nothing (at 4dcf21d each counted as active: 4 concurrent got one 503). The engine is calibrated
    when it loads; activation is judged on that figure: with a calibrated 0.5 cores a session and
    0.85 usable (capacity 1), the first may start, the second is refused with the figures."""
    now = [0.0]
    config = ServerConfig(idle_timeout=60, admission_cpu_cores=1.0)
    registry = SessionRegistry(config, PORTRAIT, engine_loader=lambda name, **_: bar_engine, clock=lambda: now[0])
    try:
        sessions = await asyncio.gather(*(registry.create(size=64) for _ in range(8)))
        assert len(registry) == 8 and registry.active_count == 0
        assert registry.load.calibration is not None and registry.load.calibration.engine == "lite"  # on load
        registry.check_capacity()  # a ninth is admitted too
        registry.load.calibrated(Calibration("bar", 64, frames=25, cpu_s=0.5))  # 0.5 cores, for exact figures
        sessions[0].push_audio(np.zeros(640, np.float32))  # speech with nobody watching: now active
        assert registry.active_count == 1
        with pytest.raises(SessionLimitError) as refused:
            sessions[1].push_audio(np.zeros(640, np.float32))
        assert refused.value.retry_after == 5
        assert str(refused.value) == (
            "this session cannot start rendering now: 1 active session(s) use 0.5 cores (0.5 each, by the start-up "
            "calibration: 20.0 ms of CPU a frame (bar, 64 px, the engine only); no running session measured yet), "
            "the server and 0 inactive session(s) 0, of the 0.85 cores sessions may fill (85% of 1): capacity 1 "
            "active session(s); one more would push them below 24 fps; it stays open (unwatched): retry later")
        now[0] = 61.0  # the reaper reads the same clock: all but the one touched at t = 61 are idle
        sessions[0].touch()
        await registry.reap()
        assert [s.id for s in registry] == [sessions[0].id]
    finally:
        await registry.stop()

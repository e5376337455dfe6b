"""The session clock's pacing as plain logic (``realtime/session/pacing.py``) and a session driven on a
manual clock (``tests/manual_clock.py``): which slots a wake-up takes and sends, late wake-ups and
catching up, the delay plan; exact expected results, no sleeping on the wall clock. What holds end to
end on any machine is in ``test_session.py``."""

from __future__ import annotations

import numpy as np
import pytest
from manual_clock import ManualClock, VirtualWorker
from session_inputs import bursts, portrait
from watcher import Watcher

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.realtime.session.latency import CLASSIC
from avatarstream.realtime.session.pacing import MAX_MARGIN_MS, Wake, frames_needed, next_wake, plan_delay, wake
from avatarstream.realtime.session.session import AvatarSession, SessionOptions

pytestmark = pytest.mark.timeout(30)
T0 = 100.0


def test_a_wake_up_on_time_takes_one_slot_and_sends_the_one_taken_D_ticks_ago():
    # D = 3, phase 20 ms: slot 0 is taken at t0 + 20 ms, sent at tick 3 (t0 + 120 ms)
    assert next_wake(T0, 0, 0, 3, 0.02) == pytest.approx(T0 + 0.02, abs=1e-12)
    assert wake(T0 + 0.0201, T0, T0, 0, 0, 3, 0.02) == Wake(range(0, 1), range(0, 0), False, -3)
    # tick 7 + 20 ms: slot 7 taken; slots 0..4 were sent (next_event 4: only 4 now)
    assert next_wake(T0, 7, 4, 3, 0.02) == pytest.approx(T0 + 0.28, abs=1e-12)  # send 4 at tick 7 comes first
    assert wake(T0 + 0.2801, T0 + 0.26, T0, 7, 4, 3, 0.02) == Wake(range(7, 7), range(4, 5), False, 4)
    assert wake(T0 + 0.3001, T0 + 0.2801, T0, 7, 5, 3, 0.02) == Wake(range(7, 8), range(5, 5), False, 4)


def test_a_late_wake_up_takes_every_slot_due_at_once_and_counts_as_late():
    # the loop was blocked 200 ms: slots 0..5 taken together (no audio skipped), 0..2 sent
    assert wake(T0 + 0.2005, T0, T0, 0, 0, 3, 0.0) == Wake(range(0, 6), range(0, 3), True, 2)
    # 39 ms behind a take is on time, 41 ms behind is late
    assert not wake(T0 + 0.039 + 0.2, T0 + 0.15, T0, 5, 2, 3, 0.0).late
    assert wake(T0 + 0.041 + 0.2, T0 + 0.15, T0, 5, 2, 3, 0.0).late


def test_a_slot_made_due_by_a_lower_phase_is_not_late():
    # slot 5 was due at t0 + 200 ms with phase 0, but the clock only went to sleep at +250 ms (the
    # phase had been 60 ms and was lowered): 10 ms after it slept is on time, whatever take_at says
    assert wake(T0 + 0.26, T0 + 0.25, T0, 5, 2, 3, 0.0) == Wake(range(5, 7), range(2, 4), False, 3)
    assert wake(T0 + 0.26, T0 + 0.19, T0, 5, 2, 3, 0.0).late  # slept before it was due: 60 ms late


def test_the_delay_plan_is_lookahead_plus_margin_and_grows_one_frame_at_a_time_when_allowed():
    # lookahead 1, D 3 (120 ms): a 17 ms margin is reached by taking 63 ms later: delay 40 + 17 ms
    plan = plan_delay(17.0, 1, 3, may_grow=True)
    assert (plan.delay_frames, plan.phase, plan.delay_ms()) == (3, pytest.approx(0.063), pytest.approx(57.0))
    # a 90 ms margin needs D = 1 + ceil(90 / 40) = 4: not while sound is in flight, phase 0 (the most D allows)
    assert plan_delay(90.0, 1, 3, may_grow=False) == plan_delay(90.0, 1, 3, may_grow=False)
    held = plan_delay(90.0, 1, 3, may_grow=False)
    assert (held.delay_frames, held.phase, held.delay_ms()) == (3, 0.0, 120.0)
    grown = plan_delay(90.0, 1, 3, may_grow=True)
    assert (grown.delay_frames, grown.phase, grown.delay_ms()) == (4, pytest.approx(0.03), pytest.approx(130.0))
    # 300 ms needs D = 9, but D grows by one frame per plan (each growth repeats one quiet slot)
    assert plan_delay(300.0, 1, 3, may_grow=True).delay_frames == 4
    # a margin is clamped to [1, 400] ms: an engine slower than that is not real time
    assert frames_needed(10_000.0, 1) == 1 + int(MAX_MARGIN_MS / 40) == 11
    assert frames_needed(0.0, 1) == 2 and plan_delay(0.0, 1, 2, False).phase == pytest.approx(0.039)
    # D never shrinks: a smaller margin moves the phase
    assert plan_delay(5.0, 1, 6, may_grow=True) == plan_delay(5.0, 1, 6, may_grow=False)
    assert plan_delay(5.0, 1, 6, may_grow=True).delay_frames == 6


async def _session(bar_engine, clock: ManualClock, worker: VirtualWorker) -> AvatarSession:
    s = AvatarSession(bar_engine, portrait(), engine_name="bar",
                      options=SessionOptions(size=64, latency=CLASSIC), clock=clock, sleep=clock.sleep,
                      engine_executor=worker)
    await s.start()
    return s


async def test_a_session_takes_each_slot_on_its_tick_and_fires_its_events_when_it_is_sent(bar_engine):
    clock = ManualClock(T0)
    s = await _session(bar_engine, clock, VirtualWorker(clock))
    try:
        assert (s.lookahead_frames, s.delay_frames, s.phase) == (1, 3, 0.0)  # classic: 40 + 80 ms
        q = s.subscribe_events()
        speech = bursts(1.0)
        s.push_audio(speech)  # at t0: slot 0 is taken at once
        s.end_utterance()
        seen: dict[int, list[str]] = {}
        for tick in range(1, 40):
            await clock.advance_to(T0 + tick * 0.04 + 0.0005)  # just after tick ``tick``
            seen[tick] = [q.get_nowait().type for _ in range(q.qsize())]
            assert s.stats.ticks == tick + 1  # slots 0..tick, each taken on its own tick
        # slot 0 (the utterance's first audio) is sent at tick 3; its last sample is in slot 24 (1 s = 25
        # slots), sent at tick 27
        assert [t for t, kinds in seen.items() if "playback_started" in kinds] == [3]
        assert [t for t, kinds in seen.items() if "playback_finished" in kinds] == [3 + 24]
        assert s.stats.late_ticks == 0
        for n in range(25):  # every slot holds the audio pushed for it, none skipped or repeated
            assert np.array_equal(s.audio_for(n), speech[n * SAMPLES_PER_FRAME:(n + 1) * SAMPLES_PER_FRAME])
    finally:
        await s.close()


async def test_a_blocked_loop_is_one_late_tick_and_catching_up_skips_no_audio(bar_engine):
    clock = ManualClock(T0)
    s = await _session(bar_engine, clock, VirtualWorker(clock))
    try:
        speech = bursts(2.0)
        s.push_audio(speech)
        await clock.advance_to(T0 + 0.4005)  # slots 0..10
        assert (s.stats.ticks, s.stats.late_ticks) == (11, 0)
        clock.spend(0.2)  # the event loop is blocked for 200 ms (a CPU hog on the loop)
        await clock.advance_to(T0 + 0.6006)  # one wake-up takes slots 11..15 at once
        assert (s.stats.ticks, s.stats.late_ticks) == (16, 1)
        await clock.advance_to(T0 + 1.0005)  # and the clock is back on its ticks
        assert (s.stats.ticks, s.stats.late_ticks) == (26, 1)
        taken = np.concatenate([s.audio_for(n) for n in range(26)])
        assert np.array_equal(taken, speech[:26 * SAMPLES_PER_FRAME])  # continuous: no gap, nothing repeated
    finally:
        await s.close()


async def test_a_stuck_engine_never_stalls_the_clock_or_the_audio(bar_engine):
    """The engine's worker never returns (slower than any real time): the clock takes every slot on
    its tick, the audio is continuous, video repeats frames, and the pump keeps 25 frames of audio."""
    clock = ManualClock(T0)
    worker = VirtualWorker(clock)
    s = await _session(bar_engine, clock, worker)
    try:
        worker.blocked = True
        s.attach_viewer(Watcher())
        speech = bursts(3.0)
        s.push_audio(speech)
        await clock.advance_to(T0 + 1.5005)
        assert (s.stats.ticks, s.stats.active_ticks, s.stats.late_ticks) == (38, 38, 0)  # slots 0..37
        taken = np.concatenate([s.audio_for(n) for n in range(38)])
        assert np.array_equal(taken, speech[:38 * SAMPLES_PER_FRAME])
        pipeline = s.pipeline_stats()
        assert pipeline["frames_rendered"] == 0 and worker.calls.count("feed") == 1  # slot 0's feed never came back
        assert s.stats.frames_missing == 38 - 3  # slots 0..34 were sent (tick 37 sends slot 34), all without a frame
        assert pipeline["engine_dropped_frames"] == 37 - 25  # slots 1..37 waited; only the newest 25 are kept
    finally:
        await s.close()


async def test_an_interrupt_is_reported_at_the_next_send_tick_with_what_was_sent(bar_engine):
    clock = ManualClock(T0)
    worker = VirtualWorker(clock)
    s = await _session(bar_engine, clock, worker)
    try:
        q = s.subscribe_events()

        def playback() -> list:
            return [ev for ev in (q.get_nowait() for _ in range(q.qsize())) if ev.type.startswith("playback")]

        s.push_audio(bursts(5.0))
        await clock.advance_to(T0 + 10 * 0.04 + 0.0005)  # just after tick 10: slots 0..10 taken, 0..7 sent
        assert [ev.type for ev in playback()] == ["playback_started"]
        dropped = s.interrupt()
        assert dropped == 5 * 16000 - 8 * SAMPLES_PER_FRAME  # everything not sent: queued + slots 8..10
        for n in (8, 9, 10):
            assert not s.audio_for(n).any()  # taken but not sent: silenced
        await clock.advance_to(T0 + 11 * 0.04 - 0.0005)
        assert playback() == []  # nothing before the next send tick
        await clock.advance_to(T0 + 11 * 0.04 + 0.0005)
        [ev] = playback()
        assert (ev.type, ev.frame, ev.data) == ("playback_finished", 8, {
            "utterance": 1, "playback_position": 8 * 0.04, "interrupted": True})
        assert worker.calls.count("interrupt") == 1 and s.queued_seconds == 0
    finally:
        await s.close()

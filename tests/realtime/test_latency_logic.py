"""Latency margins as plain logic: a session on a manual clock whose engine renders in a set time
(``tests/manual_clock.py``), and the measurements (``render_margin.py``, ``input_arrival.py``) fed
injected samples; exact expected results, no sleeping on the wall clock. ``test_latency.py`` keeps
what holds end to end on any machine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from manual_clock import ManualClock, VirtualWorker
from mic_frames import speech_or_silence
from session_inputs import portrait
from watcher import Sink

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.realtime.session.input_arrival import InputArrival
from avatarstream.realtime.session.latency import ADAPTIVE, CLASSIC, LatencySettings
from avatarstream.realtime.session.session import AvatarSession, SessionOptions
from avatarstream.realtime.transports.webrtc.microphone import MicrophoneInput

pytestmark = pytest.mark.timeout(30)
T0 = 100.0
US = 1e-3  # the manual clock wakes 1 us after a deadline: a render measured 12 ms is 12.001 ms


async def _watched(bar_engine, latency: LatencySettings, feed_s: float):
    clock = ManualClock(T0)
    worker = VirtualWorker(clock, feed_s)
    s = AvatarSession(bar_engine, portrait(), engine_name="bar",
                      options=SessionOptions(size=64, latency=latency), clock=clock, sleep=clock.sleep,
                      engine_executor=worker)
    await s.start()
    sink = Sink(s)
    s.attach_viewer(sink)
    task = asyncio.get_running_loop().create_task(sink.run())
    return s, clock, worker, sink, task


def tone(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)


async def test_the_measured_margin_is_the_render_time_plus_guard_and_each_slot_keeps_its_frame(bar_engine):
    s, clock, worker, sink, task = await _watched(bar_engine, ADAPTIVE, feed_s=0.012)  # 12 ms per render
    try:
        assert (s.delay_frames, s.delay_ms) == (3, pytest.approx(40 + ADAPTIVE.margin_start_ms))  # nothing measured
        await clock.advance(1.5)  # idle frames are rendered for the viewer: their render times are measured
        stats = s.latency_stats()
        assert stats["render_ms_p50"] == stats["render_ms_p99"] == 12.0  # (rounded to 0.1 ms)
        # delay = lookahead 40 ms + p99 12 ms + guard 5 ms: D stays 3 (it never shrinks), the take moves 63 ms later
        assert s.delay_ms == pytest.approx(40 + 12 + US + 5, abs=1e-6) and s.delay_frames == 3
        assert s.phase == pytest.approx(0.080 - 0.017 - US / 1000, abs=1e-9)
        missing = s.stats.frames_missing
        sink.sent.clear()
        s.push_audio(tone(1.0) * (np.arange(16000) // 3200 % 2 == 0))  # 200 ms on, 200 ms off
        s.end_utterance()
        await clock.advance(1.5)
        # every frame is filed 12 ms after its audio, 17 ms before its slot is sent: none missing
        assert s.stats.frames_missing == missing and s.stats.late_ticks == 0
        assert all(mouth == pytest.approx(min(1.0, rms * 8), abs=1e-6) for _, mouth, rms in sink.sent)  # its own frame
        assert sum(rms > 0.05 for _, _, rms in sink.sent) == 15  # 3 bursts of 5 slots were sent
    finally:
        task.cancel()
        await s.close()


async def test_the_margin_rises_under_load_and_D_grows_only_in_quiet(bar_engine):
    """Start margin 30 ms: D = 2 (80 ms). Renders of 5 ms, then 35 ms during a tone: the margin
    (35 + 5 guard = 40.001 ms) needs D = 3, which waits for the tone's end; then one quiet slot is
    sent twice, and the delay is lookahead + margin."""
    settings = LatencySettings(name="test", margin_start_ms=30.0)
    s, clock, worker, sink, task = await _watched(bar_engine, settings, feed_s=0.005)
    try:
        assert (s.delay_frames, s.phase) == (2, pytest.approx(0.010))
        await clock.advance(1.5)
        assert s.delay_frames == 2 and s.margin_ms == pytest.approx(5 + US + 5, abs=1e-6)
        s.push_audio(tone(3.0))  # 3 s of sound without a pause
        await clock.advance(0.5)
        worker.feed_s = 0.035  # the machine got loaded: 35 ms per render
        await clock.advance(1.5)
        assert s.delay_frames == 2  # not while sound is in flight ...
        assert s.margin_ms == pytest.approx(40.0)  # ... phase 0: the most D allows
        s.end_utterance()
        await clock.advance(1.5)  # the tone ended at 3.5 s: D grows once the slots in flight are quiet
        # the margin is the p99 + 5 ms (recomputed every 5 frames) of 35 ms renders and a few that waited
        # for the one before while the take moved earlier (one render at a time): above 40 ms, so D = 3
        stats = s.latency_stats()
        assert stats["render_ms_p50"] == 35.0 and stats["render_ms_p99"] > 35.0
        assert s.delay_frames == 3 and 40 < s.margin_ms < 80
        sent = [c for c, _, _ in sink.sent]
        repeated = [(c, rms) for i, (c, _, rms) in enumerate(sink.sent) if c in sent[:i]]
        assert len(repeated) == 1 and repeated[0][1] == 0.0  # one slot per frame D grew by, a silent one
        assert s.stats.late_ticks == 0
    finally:
        task.cancel()
        await s.close()


async def test_the_live_backlog_target_is_the_measured_jitter_plus_a_packet(bar_engine):
    clock = ManualClock(T0)
    adaptive = AvatarSession(bar_engine, portrait(),
                             options=SessionOptions(size=64, latency=ADAPTIVE), clock=clock, sleep=clock.sleep)
    classic = AvatarSession(bar_engine, portrait(),
                            options=SessionOptions(size=64, latency=CLASSIC), clock=clock, sleep=clock.sleep)
    assert classic.live_backlog_target_s == pytest.approx(0.1)  # the fixed 100 ms of before
    assert adaptive.live_backlog_target_s == pytest.approx((ADAPTIVE.jitter_start_ms + 20) / 1000)  # nothing measured
    for k in range(40):  # a steady 20 ms stream, pushed as it arrives
        clock.t = T0 + 0.02 * k
        adaptive.push_audio(np.zeros(320, np.float32))
    assert adaptive.latency_stats()["input_jitter_ms"] == ADAPTIVE.jitter_guard_ms  # never late: the guard only
    assert adaptive.live_backlog_target_s == pytest.approx((ADAPTIVE.jitter_guard_ms + 20) / 1000)


def test_the_jitter_allowance_is_the_quantile_of_lateness_plus_guard():
    """Packets 0, 10, 20 or 30 ms late in turn: lateness is measured against the earliest arrival;
    p99 of the window + 2 ms; the hold covers what the next slot may still need."""
    arrival = InputArrival(ADAPTIVE)
    late = [0.0, 0.010, 0.020, 0.030]
    for k in range(200):
        arrival.observe(T0 + 0.02 * k + late[k % 4], 1, 320)
    lateness = [1000 * late[k % 4] for k in range(1, 200)]
    assert arrival.jitter_ms() == pytest.approx(float(np.percentile(lateness, 99)) + 2.0, abs=1e-9)
    assert arrival.jitter_ms() == pytest.approx(32.0, abs=1e-9)
    # the last packet (sample 200 * 320 = 4 s) was due at T0 + 3.98 s; a take 30 us later needs the next
    # slot (40 ms) + the 32 ms allowance - 30 us more than what is due: ceil(71.97 ms * 16 kHz) samples
    assert arrival.start_samples(T0 + 3.98003, 1, SAMPLES_PER_FRAME) == 1152
    assert arrival.start_samples(T0 + 3.98 + 0.1, 1, SAMPLES_PER_FRAME) == SAMPLES_PER_FRAME  # late enough: one slot
    fresh = InputArrival(ADAPTIVE)  # a new utterance before any arrival: one slot + the start allowance
    assert fresh.start_samples(T0, 7, SAMPLES_PER_FRAME) == SAMPLES_PER_FRAME + 320


class BurstyMic:
    """A microphone track on the manual clock: its first 25 frames (0.5 s) arrive at once (a stall,
    then a burst), then one 20 ms frame every 20 ms; 0.5 s of speech and 0.5 s of silence in turn."""

    kind = "audio"

    def __init__(self, clock: ManualClock) -> None:
        self.clock, self.t0, self.k = clock, clock.t, 0

    async def recv(self):
        from aiortc.mediastreams import MediaStreamError

        if self.k >= 250:  # 5 s
            raise MediaStreamError
        due = self.t0 + (self.k - 25) * 0.02
        if due > self.clock.t:
            await self.clock.sleep(due - self.clock.t)
        frame = speech_or_silence(self.k)
        self.k += 1
        return frame


@pytest.mark.parametrize(("latency", "dropped_frames"), [
    (CLASSIC, list(range(76, 97))),  # target 100 ms: 21 frames of the second pause
    (ADAPTIVE, list(range(76, 100)) + list(range(126, 131))),  # target 22 ms (2 ms jitter + a packet)
])
async def test_a_live_backlog_is_worked_off_in_its_quiet_frames_only(bar_engine, latency, dropped_frames):
    """The 0.5 s backlog a stall leaves is trimmed once it has stood above the session's target for
    a second (50 frames), and only from quiet frames: every speech frame is played."""
    clock = ManualClock(T0)
    s = AvatarSession(bar_engine, portrait(),
                      options=SessionOptions(size=64, latency=latency), clock=clock, sleep=clock.sleep,
                      engine_executor=VirtualWorker(clock))
    await s.start()
    track = BurstyMic(clock)
    mic = MicrophoneInput(s)
    dropped_at: list[int] = []
    record = s.input_dropped

    def dropped(samples: int) -> None:
        dropped_at.append(track.k - 1)  # the frame just received
        record(samples)

    s.input_dropped = dropped  # type: ignore[method-assign]
    q = s.subscribe_events()
    pump = asyncio.get_running_loop().create_task(mic.pump(track))
    try:
        await clock.advance(6.0)
        await pump
        assert dropped_at == dropped_frames and all((k // 25) % 2 == 1 for k in dropped_at)  # quiet ones only
        assert mic.dropped_samples == 320 * len(dropped_frames)
        finished = [ev for ev in (q.get_nowait() for _ in range(q.qsize())) if ev.type == "playback_finished"]
        assert len(finished) == 1 and finished[0].data["interrupted"] is False
        # the whole 5 s is either played or dropped (but the resampler's last 16 samples, 1 ms, it holds
        # for its filter); the played part holds all 2.5 s of speech
        assert round(finished[0].data["playback_position"] * 16000) + mic.dropped_samples == 5 * 16000 - 16
        assert s.queued_seconds == 0 and s.latency_stats()["input_jitter_ms"] == ADAPTIVE.jitter_guard_ms
    finally:
        pump.cancel()
        await s.close()

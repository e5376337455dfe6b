"""AvatarSession on the real clock with the bar test engine: audio and video of one slot are
the same content index, the lip-sync delay is lookahead + margin, events fire when the audio is
sent, interrupt drops audio and motion together, close() releases everything, tracks are paced
and drop frames for a slow consumer.

Only what holds at any machine speed is asserted here (lower bounds of elapsed time, orderings,
counts on the session clock, never a wall-clock upper bound); the exact ticks, late ticks and
catching up are in ``test_pacing_logic.py`` on a manual clock."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from mic_frames import speech_or_silence
from session_inputs import bursts, portrait

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.realtime.clock import AUDIO_SAMPLES_PER_FRAME, VIDEO_PTS_PER_FRAME
from avatarstream.realtime.session.events import EventBus
from avatarstream.realtime.session.latency import CLASSIC
from avatarstream.realtime.session.session import AvatarSession, SessionOptions
from avatarstream.realtime.transports.webrtc.microphone import MicrophoneInput
from avatarstream.realtime.transports.webrtc.tracks import AvatarAudioTrack, AvatarVideoTrack

pytestmark = pytest.mark.timeout(60)


async def next_event(q: asyncio.Queue, type_: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(q.get(), deadline - time.monotonic())
        if ev.type == type_:
            return ev


@pytest.fixture
async def session(bar_engine):
    s = AvatarSession(bar_engine, portrait(), engine_name="bar", options=SessionOptions(size=128, latency=CLASSIC))
    await s.start()
    yield s
    await s.close()


async def test_delay_is_lookahead_plus_margin_and_slots_pair_audio_with_its_frame(session):
    assert session.lookahead_frames == 1 and session.delay_frames == 3
    session.push_audio(bursts(1.0))
    session.end_utterance()
    await asyncio.sleep(1.0)
    last = session.clock.current_frame() - session.delay_frames
    checked = 0
    for c in range(max(0, last - 20), last):
        slot = session.output_at(c)
        if slot is None or slot.frame is None:
            continue
        # the frame filed at slot c was rendered from slot c's audio (the engine's own frame counter
        # may differ: it is not fed while nobody watches and nothing plays)
        rms = float(np.sqrt(np.mean(slot.audio.astype(np.float64) ** 2)))
        assert slot.frame.mouth_open == pytest.approx(min(1.0, rms * 8), abs=1e-6)
        assert np.array_equal(session.audio_for(c), slot.audio)
        checked += 1
    assert checked >= 5  # how many frames were ready depends on the machine's load (exact: test_latency_logic)


async def test_events_fire_when_audio_is_sent(session):
    q = session.subscribe_events()
    t_push = time.time()
    session.push_audio(bursts(0.5))
    session.end_utterance()
    started = await next_event(q, "playback_started")
    # the first sample is taken at the next tick, then sent delay_frames later
    assert started.wall_time - t_push >= (session.delay_frames - 0.5) * 0.04
    assert started.data == {"utterance": 1}
    finished = await next_event(q, "playback_finished")
    assert finished.data["interrupted"] is False
    assert finished.data["playback_position"] == pytest.approx(0.5, abs=0.001)
    assert finished.wall_time - started.wall_time >= 0.44  # sent at real time: slot 12 leaves 12 ticks after slot 0
    assert finished.frame - started.frame == 12  # 0.5 s = 12.5 slots: the last sample is in the 13th


async def test_interrupt_drops_audio_and_motion_together(session, bar_engine):
    q = session.subscribe_events()
    session.push_audio(bursts(5.0))
    await next_event(q, "playback_started")
    await asyncio.sleep(0.3)
    dropped = session.interrupt()
    ev = await next_event(q, "playback_finished", timeout=10)  # at the next send tick: 10 s only ends a hang
    assert ev.data["interrupted"] is True
    # what was sent before the interrupt and what it dropped make up the whole utterance, whenever
    # the loop got to it (sent slots are whole: the position is a multiple of 640 samples)
    position = round(ev.data["playback_position"] * 16000)
    assert position > 0 and position % SAMPLES_PER_FRAME == 0
    assert position + dropped == 5 * 16000
    for _ in range(600):  # the engine's worker gets the interrupt (the bound only ends a hang)
        if bar_engine.streams[0].interrupts:
            break
        await asyncio.sleep(0.05)
    assert bar_engine.streams[0].interrupts == 1
    now = session.clock.current_frame() - session.delay_frames
    for c in range(now, now + session.delay_frames):  # taken but not yet sent: silenced
        slot = session.output_at(c)
        if slot is not None:
            assert not slot.audio.any()
    assert session.queued_seconds == 0


async def test_close_cancels_tasks_and_ends_event_streams(bar_engine):
    s = AvatarSession(bar_engine, portrait(), options=SessionOptions(size=64))
    await s.start()
    q = s.subscribe_events()
    s.push_audio(bursts(2.0))
    await asyncio.sleep(0.2)
    await s.close()
    assert s.closed and s.task_count == 0
    assert await asyncio.wait_for(q.get(), 1) is None or None in [q.get_nowait() for _ in range(q.qsize())]
    await s.close()  # idempotent


async def test_tracks_are_paced_on_one_clock_and_drop_for_slow_consumers(session):
    video, audio = AvatarVideoTrack(session), AvatarAudioTrack(session)
    clock = session.clock
    t0 = time.monotonic()
    vpts = []
    for _ in range(10):
        f = await video.recv()
        assert time.monotonic() >= clock.t0 + f.pts / 90000  # never sent before its tick on the session clock
        vpts.append(f.pts)
    elapsed = time.monotonic() - t0
    steps = np.diff(vpts) // VIDEO_PTS_PER_FRAME
    assert np.all(np.diff(vpts) % VIDEO_PTS_PER_FRAME == 0) and np.all(steps >= 1)
    assert video.frames_skipped == int(np.sum(steps - 1))  # a late consumer skips ticks (and counts them)
    assert elapsed >= (vpts[-1] - vpts[0]) / 90000 - 0.04  # paced: 10 frames span at least 9 ticks
    apts = []
    for _ in range(6):
        f = await audio.recv()
        assert f.samples == AUDIO_SAMPLES_PER_FRAME and f.sample_rate == 48000
        # both pts derive from the same clock: audio frame k starts at t0 + k * 20 ms, video frame n at t0 + n * 40 ms
        assert time.monotonic() >= clock.t0 + f.pts / 48000
        apts.append(f.pts)
    assert np.all(np.diff(apts) % AUDIO_SAMPLES_PER_FRAME == 0) and np.all(np.diff(apts) > 0)
    f = await video.recv()
    assert f.pts / 90000 >= (apts[0] + AUDIO_SAMPLES_PER_FRAME) / 48000 - 0.04
    # slow consumer: it sleeps 0.2 s between frames -> skips ticks instead of queueing them
    last = f.pts
    for _ in range(3):
        await asyncio.sleep(0.2)
        f = await video.recv()
        assert f.pts - last >= 4 * VIDEO_PTS_PER_FRAME
        last = f.pts
    assert video.frames_skipped >= 9
    video.stop()
    audio.stop()


async def test_mic_audio_is_resampled_into_the_buffer(session):
    import av
    from aiortc.mediastreams import MediaStreamError

    class FakeMic:
        kind = "audio"

        def __init__(self):
            self.k = 0

        async def recv(self):
            if self.k >= 50:
                raise MediaStreamError
            await asyncio.sleep(0.02)  # a live source: real time
            t = (self.k * 960 + np.arange(960)) / 48000
            pcm = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
            frame.sample_rate = 48000
            frame.pts = self.k * 960
            self.k += 1
            return frame

    q = session.subscribe_events()
    mic = MicrophoneInput(session)
    pump = asyncio.create_task(mic.pump(FakeMic()))
    await next_event(q, "playback_started")
    ev = await next_event(q, "playback_finished")
    assert ev.data["playback_position"] == pytest.approx(1.0, abs=0.02)  # 50 x 20 ms at 16 kHz
    await pump
    assert SAMPLES_PER_FRAME == 640


async def test_slow_event_subscriber_loses_oldest_events():
    bus = EventBus(maxsize=3)
    q = bus.subscribe()
    for i in range(10):
        bus.emit("speaking_started", {"i": i}, i)
    assert q.qsize() == 3
    assert [q.get_nowait().data["i"] for _ in range(3)] == [7, 8, 9]
    bus.close()
    assert q.get_nowait() is None and bus.subscriber_count == 0


async def test_slow_engine_never_stalls_the_loop_or_the_audio(bar_engine):
    """An engine slower than real time (60 ms per 40 ms frame): its work never runs on the event loop,
    the audio keeps flowing on the clock (every slot taken, in order), and video repeats frames instead
    of queueing. Speed-independent form (it failed once under load on a 30 ms loop-lag bound and an
    exact pts step); the exact ticks with a stuck engine are in test_pacing_logic.py."""
    original_open = bar_engine.open_stream

    def open_slow(portrait, **kw):
        stream = original_open(portrait, **kw)
        feed = stream.feed

        def slow_feed(audio):
            feed_threads.add(threading.get_ident())
            time.sleep(0.06 * len(audio) / SAMPLES_PER_FRAME)  # blocking work, like a CPU-bound renderer
            return feed(audio)

        stream.feed = slow_feed
        return stream

    feed_threads: set[int] = set()
    bar_engine.open_stream = open_slow
    s = AvatarSession(bar_engine, portrait(), options=SessionOptions(size=64))
    await s.start()
    try:
        speech = bursts(3.0)
        s.push_audio(speech)  # before the clock's first take: slot n holds speech[640 n: 640 (n + 1)]
        audio = AvatarAudioTrack(s)
        pts, energy = [], []
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            frame = await audio.recv()
            pts.append(frame.pts)
            energy.append(float(np.abs(frame.to_ndarray()).mean()))
        assert feed_threads and threading.get_ident() not in feed_threads  # the engine never blocks the loop
        steps = np.diff(pts) // AUDIO_SAMPLES_PER_FRAME
        assert np.all(np.diff(pts) % AUDIO_SAMPLES_PER_FRAME == 0) and np.all(steps >= 1)
        assert audio.frames_skipped == int(np.sum(steps - 1))  # only a late sender (the loop) skips, and counts it
        assert (pts[-1] - pts[0]) / AUDIO_SAMPLES_PER_FRAME >= 1.5 / 0.02 - 3  # the track followed the clock for 1.5 s
        # the speech itself came through (tone bursts: on half the time), not silence
        assert np.mean(np.array(energy[10:]) > 100) > 0.3
        # the clock took every slot the track sent, each with its own audio: no gap, whatever the engine did
        sent_slots = pts[-1] // AUDIO_SAMPLES_PER_FRAME // 2 - s.delay_frames
        assert s.stats.ticks > sent_slots
        for n in range(max(0, sent_slots - 30), sent_slots + 1):
            assert np.array_equal(s.audio_for(n), speech[n * SAMPLES_PER_FRAME:(n + 1) * SAMPLES_PER_FRAME])
        assert s.stats.frames_missing > 0  # the video repeated frames while the engine lagged
        assert s.pipeline_stats()["frames_rendered"] < s.stats.ticks - 5
    finally:
        await s.close()


async def test_live_input_backlog_is_trimmed_in_silence_not_in_speech(session):
    """A stall then a burst leaves a standing backlog on the microphone path: it is worked off by
    dropping quiet input frames while speech frames are all kept."""
    from aiortc.mediastreams import MediaStreamError

    class BurstyMic:
        kind = "audio"

        def __init__(self):
            self.k = 0
            self.t0 = time.monotonic()

        async def recv(self):
            if self.k >= 250:  # 5 s
                raise MediaStreamError
            # the first 0.5 s arrive at once (a stall, then a burst), then real time
            await asyncio.sleep(max(0.0, self.t0 + (self.k - 25) * 0.02 - time.monotonic()))
            frame = speech_or_silence(self.k)  # 0.5 s speech / 0.5 s silence
            self.k += 1
            return frame

    q = session.subscribe_events()
    mic = MicrophoneInput(session)
    pump = asyncio.create_task(mic.pump(BurstyMic()))
    ev = await next_event(q, "playback_finished", timeout=10)
    dropped = mic.dropped_samples
    assert dropped > 0  # the backlog was worked off (how much depends on when the loop ran: exact in test_latency_logic) ...
    assert ev.data["playback_position"] * 16000 + dropped == pytest.approx(5 * 16000, abs=400)
    assert session.queued_seconds < 0.05
    # ... and only silence went: every speech frame was played (2.5 s of the 5 s were speech)
    sent = [rms for (_, _, rms, _, _) in session.stats.sent_log]
    speech_s = sum(r > 0.1 for r in sent) * 0.04  # frames straddling a speech edge count whole
    assert 2.45 <= speech_s <= 2.5 + 5 * 0.04
    await pump

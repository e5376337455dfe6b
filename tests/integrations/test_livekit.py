"""The LiveKit Agents plugin on LiveKit's real media classes (livekit-agents from the registry, no LiveKit server).

In-process ``AvatarSession.start(agent_session, room)`` with a real (unstarted) ``AgentSession``: its TTS
audio goes through the real ``QueueAudioOutput`` (``capture_frame`` / ``flush`` / ``clear_buffer`` /
``wait_for_playout``, as ``AgentSession`` drives it), LiveKit's ``AvatarRunner`` publishes through the real
``rtc.AudioSource`` / ``rtc.VideoSource`` / ``rtc.AVSynchronizer``, and the published tracks are read back
with ``rtc.VideoStream`` / ``rtc.AudioStream`` (local tracks read back without a server). Only the room's
network calls are a stand-in (``StandInRoom``: connected, ``publish_track`` hands the local track back).

Timing is measured on media time: video frames by their capture timestamps, audio by its sample count from
the first read-back frame (``rtc.AudioStream`` delivers silence between speech, so samples are time).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import threading
import time
import wave
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed: pip install 'avatarstream[livekit]'")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

from livekit import rtc  # noqa: E402
from livekit_room import StandInRoom  # noqa: E402
from livekit.agents import AgentSession  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

from avatarstream.bench.av_sync import cross_correlate, rms_envelope  # noqa: E402
from avatarstream.bench.viewer_recorder import mouth_openings  # noqa: E402
from avatarstream.integrations.livekit import AvatarSession  # noqa: E402
from avatarstream.integrations.local_server import LocalAvatarServer  # noqa: E402
from avatarstream.realtime.transports.livekit.generator import SpeechStart  # noqa: E402

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]
RATE = 24_000
SIZE = 512  # the plugin's default (the same lite frames rendered offline from this audio, no transport, read mouth r
# 0.80-0.81 at 512 px, 0.78-0.81 at 256 px; the engine's own jaw 0.92 at both)
TTS_FRAME = RATE // 50  # 20 ms frames, faster than real time, as a TTS stream hands them over
FRAME_S = 0.04
ATTEMPTS = 2  # runs repeated while the loaded machine held the process up longer than:
HELD_UP_RETRY_MS = 60


def espeak(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng, int16 mono at 24 kHz (the agent's TTS rate)."""
    wav = subprocess.run(["espeak-ng", "-s", "170", "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == 22050
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
    return np.clip(resample_poly(pcm, 160, 147), -32768, 32767).astype(np.int16)


class StallMonitor:
    """The longest time this process's event loop was held up (the machine's load, not the code under
    test): a 10 ms sleep that wakes late by more than that counts. Cadence limits add it."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.held_frames = 0.0  # frame times lost to hold-ups longer than a frame
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run_thread, daemon=True)
        self._thread.start()

    def _run_thread(self) -> None:  # the OS holding the process up (LiveKit's native threads starve with it)
        while not self._stopped.is_set():
            t = time.monotonic()
            time.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - t - 0.01)

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - t - 0.01
            self.worst = max(self.worst, late)
            if late > FRAME_S:
                self.held_frames += late / FRAME_S

    def stop(self) -> float:
        self._stopped.set()
        self._task.cancel()
        return self.worst


@dataclass
class Published:
    """The avatar's tracks as read back: video (capture time s, image), audio (int16 at RATE)."""

    video: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    audio_t0: float | None = None  # monotonic time of the first audio sample read back
    tasks: list[asyncio.Task] = field(default_factory=list)
    audio_samples: int = 0
    audio_arrivals: list[tuple[float, int]] = field(default_factory=list)  # (arrival, samples read so far)
    video_arrivals: list[float] = field(default_factory=list)
    audio_late: float = 0.0  # the latest an audio frame arrived behind the sample clock (native threads held up)
    monitor: Any = None
    streams: list[Any] = field(default_factory=list)
    stall: float = 0.0

    def audio_signal(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)

    def _anchor(self, sample: float) -> float:
        """The audio clock's origin near ``sample``: a 10 ms frame is read back when it was published or later,
        so the earliest ``arrival - samples / RATE`` within a second either side is the publication's (a lasting
        step would be samples lost; a brief delay is the read-back's)."""
        arrivals = np.array(self.audio_arrivals, np.float64)
        near = np.abs(arrivals[:, 1] - sample) <= RATE
        if not near.any():
            near = np.abs(arrivals[:, 1] - sample) == np.abs(arrivals[:, 1] - sample).min()
        return float(np.min(arrivals[near, 0] - arrivals[near, 1] / RATE))

    def audio_time(self, sample: int) -> float:
        """When ``sample`` was published (``_anchor``)."""
        return self._anchor(sample) + sample / RATE

    def sample_at(self, t: float) -> int:
        assert self.audio_t0 is not None
        j = (t - self.audio_t0) * RATE
        for _ in range(3):
            j = (t - self._anchor(j)) * RATE
        return int(round(j))


async def read_back(room: StandInRoom) -> Published:
    out = Published()
    tracks = room.local_participant.tracks

    video_stream = rtc.VideoStream(tracks["avatar_video"], format=rtc.VideoBufferType.RGB24)
    audio_stream = rtc.AudioStream(tracks["avatar_audio"], sample_rate=RATE, num_channels=1)
    out.streams = [video_stream, audio_stream]

    async def video() -> None:
        async for ev in video_stream:
            f = ev.frame
            out.video.append((ev.timestamp_us / 1e6, np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3)))
            out.video_arrivals.append(time.monotonic())

    async def audio() -> None:
        async for ev in audio_stream:
            now = time.monotonic()
            pcm = np.frombuffer(ev.frame.data, np.int16).copy()
            out.audio_samples += pcm.size
            # a frame arrives when it was published or later, never earlier: the earliest anchor is the truest
            anchor = now - out.audio_samples / RATE
            out.audio_t0 = anchor if out.audio_t0 is None else min(out.audio_t0, anchor)
            out.audio_late = max(out.audio_late, anchor - out.audio_t0)
            out.audio.append(pcm)
            out.audio_arrivals.append((now, out.audio_samples))

    out.tasks = [asyncio.create_task(video()), asyncio.create_task(audio())]
    return out


async def say(agent: AgentSession, pcm: np.ndarray) -> None:
    """Hand ``pcm`` to the agent's audio output as ``AgentSession`` does with TTS, then end the segment."""
    sink = agent.output.audio
    assert sink is not None
    for i in range(0, pcm.size, TTS_FRAME):
        chunk = pcm[i:i + TTS_FRAME]
        await sink.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, chunk.size))
    sink.flush()


def locate(source: np.ndarray, published: np.ndarray, around: int, window: int) -> tuple[int, float]:
    """Where ``source`` starts in ``published`` near sample ``around`` (+-``window``), and the match's r
    (envelopes of 10 ms)."""
    hop = RATE // 100

    def env(x: np.ndarray) -> np.ndarray:
        n = x.size // hop
        return np.sqrt(np.mean(x[: n * hop].astype(np.float64).reshape(n, hop) ** 2, axis=1))

    src = env(source[: RATE // 2])
    best = (around, -1.0)
    for start in range(max(0, around - window), around + window, hop // 2):
        seg = env(published[start:start + src.size * hop])
        if seg.size < src.size:
            break
        if seg.std() == 0:
            continue  # silence: no match here
        r = float(np.corrcoef(seg, src)[0, 1])
        if r > best[1]:
            best = (start, r)
    return best


def frame_envelope(published: Published, times: np.ndarray, shift_s: float = 0.0) -> np.ndarray:
    """RMS of the published audio over the 40 ms that starts at each time (+ shift)."""
    a = published.audio_signal().astype(np.float64) / 32768
    out = np.zeros(times.size)
    for i, t in enumerate(times):
        s = published.sample_at(t + shift_s)
        seg = a[max(0, s):max(0, s + RATE // 25)]
        out[i] = np.sqrt(np.mean(seg ** 2)) if seg.size else 0.0
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with LocalAvatarServer(size=SIZE) as srv:
        yield srv


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    return {
        "long": espeak("Every word you hear moves my mouth, and this sentence keeps going for a while."),
        "cut": espeak("This reply will be interrupted somewhere in the middle of its many words."),
        "next": espeak("A new reply starts right away."),
        **{f"n{i}": espeak(w) for i, w in enumerate(["One.", "Two.", "Three.", "Four.", "Five.", "Six.",
                                                      "Seven.", "Eight.", "Nine.", "Ten."])},
    }


async def started_avatar(server: LocalAvatarServer) -> tuple[AvatarSession, AgentSession, StandInRoom, Published,
                                                             float]:
    agent, room = AgentSession(), StandInRoom("agent-1")
    monitor = StallMonitor()
    avatar = AvatarSession(local_server=server, size=SIZE, sample_rate=RATE)
    t0 = time.monotonic()
    await avatar.start(agent, room)
    while "avatar_video" not in room.local_participant.tracks:  # lazy publish: on the first frame
        await asyncio.sleep(0.005)
    published = await read_back(room)
    while not published.video:
        await asyncio.sleep(0.005)
    published.monitor = monitor
    return avatar, agent, room, published, published.video[0][0] - t0


async def stop(avatar: AvatarSession, published: Published) -> None:
    published.stall = published.monitor.stop()
    await avatar.aclose()
    for t in published.tasks:
        t.cancel()
    await asyncio.gather(*published.tasks, return_exceptions=True)
    for stream in published.streams:
        await stream.aclose()


def carrier(ts: np.ndarray, start: SpeechStart) -> int:
    """The published frame that carries a reply's first sample: the first captured once the generator handed
    it over (time.perf_counter and the capture timestamps are both CLOCK_MONOTONIC). Not its count: after a
    hold-up rtc.VideoSource drops frames from the burst, and counting would land frames later."""
    return min(int(np.searchsorted(ts, start.handed_at - 0.0001)), ts.size - 1)  # capture stamps are in µs


def check_video_cadence(published: Published, figures: dict, yielded: int) -> np.ndarray:
    """25 fps and no gap over 100 ms on the capture timestamps, beyond what the loaded machine held this
    process up (``StallMonitor``, the audio read back late) plus the frame in flight then; every frame the
    generator made is published but those ``rtc.VideoSource`` drops from a burst after a hold-up."""
    # held up: the event loop (StallMonitor) or LiveKit's native threads (audio read back late)
    stall = max(published.stall, published.audio_late)
    held_frames = published.monitor.held_frames + published.audio_late / FRAME_S
    ts = np.array([t for t, _ in published.video])
    gaps = np.diff(ts)
    span = ts[-1] - ts[0]
    figures["fps"] = round((ts.size - 1) / span, 2)
    figures["max_video_gap_ms"] = round(float(gaps.max()) * 1000, 1)
    figures["max_hold_up_ms"] = round(stall * 1000, 1)
    figures["frames_published_of_made"] = (len(ts), yielded)
    figures["frames_held_up"] = round(held_frames, 1)
    # rtc.VideoSource drops frames that come in a burst (after this process was held up), no others
    assert yielded - 2 - 2 * held_frames <= len(ts) <= yielded, figures  # a burst drops about as many again
    # frames dropped from the bursts after hold-ups lower the count over the span
    assert abs(figures["fps"] - 25) <= 0.5 + (2 + 2 * held_frames) / span, figures
    assert gaps.max() <= 0.1 + stall + FRAME_S, f"a video gap of {gaps.max() * 1000:.0f} ms (stall): {figures}"
    return ts


async def interrupt_reply(agent: AgentSession, gen: Any, reply: np.ndarray, after_s: float) -> tuple[float, Any]:
    """Say ``reply``, call ``clear_buffer`` ``after_s`` after the generator saw it start; (the time of the call,
    the playout result)."""
    starts = len(gen.speech_starts)
    await say(agent, reply)
    while len(gen.speech_starts) <= starts:
        await asyncio.sleep(0.01)
    await asyncio.sleep(after_s)
    t_clear = time.monotonic()
    agent.output.audio.clear_buffer()
    return t_clear, await asyncio.wait_for(agent.output.audio.wait_for_playout(), 10)


async def speak_interrupt_restart(server: LocalAvatarServer, speech: dict[str, np.ndarray]) -> Any:
    """Idle 1 s, a whole reply, a reply interrupted after ~1.2 s, a reply right after; what came out."""
    avatar, agent, room, published, first_frame_s = await started_avatar(server)
    gen = avatar.media.generator
    sink = agent.output.audio
    try:
        await asyncio.sleep(1.0)  # idle: the face moves, no audio
        await say(agent, speech["long"])
        done = await asyncio.wait_for(sink.wait_for_playout(), 30)
        t_clear, cut = await interrupt_reply(agent, gen, speech["cut"], after_s=1.2)
        await say(agent, speech["next"])  # right after the interrupt
        done_next = await asyncio.wait_for(sink.wait_for_playout(), 30)
        # the reply after an interrupt opens the mouth again 2 frames after it: the mouth's closing is measured at
        # a second interrupt, followed by silence
        t_clear_quiet, cut_quiet = await interrupt_reply(agent, gen, speech["cut"], after_s=0.8)
        await asyncio.sleep(0.5)
        delay_frames = avatar.media.avatar.session.delay_frames
    finally:
        await stop(avatar, published)
    return SimpleNamespace(gen=gen, published=published, first_frame_s=first_frame_s, done=done, cut=cut,
                           done_next=done_next, t_clear=t_clear, delay_frames=delay_frames, cut_quiet=cut_quiet,
                           t_clear_quiet=t_clear_quiet)


def held_up_ms(published: Published) -> float:
    return 1000 * max(published.stall, published.audio_late)


async def test_speech_interrupt_and_restart_publish_lip_synced_tracks(server, speech, record_property):
    # the machine may hold this process up (measured): then the run is repeated, up to ATTEMPTS times, and the
    # last one is judged with limits that add what it measured
    for attempt in range(ATTEMPTS):
        run = await speak_interrupt_restart(server, speech)
        if held_up_ms(run.published) <= HELD_UP_RETRY_MS:
            break
        print(f"attempt {attempt + 1}: this process was held up {held_up_ms(run.published):.0f} ms: again")
    gen, published, cut, done_next, t_clear = run.gen, run.published, run.cut, run.done_next, run.t_clear
    delay_frames = run.delay_frames
    figures: dict[str, Any] = {"first_frame_after_start_ms": round(run.first_frame_s * 1000), "attempts": attempt + 1}
    assert not run.done.interrupted
    assert abs(run.done.playback_position - speech["long"].size / RATE) < 0.04 + 0.021  # + the 20 ms lead
    assert cut.interrupted and not done_next.interrupted
    audio = published.audio_signal()
    ts = check_video_cadence(published, figures, gen.frames_out)

    # where each reply starts in the published audio, and the video frame that carries its start
    starts = list(gen.speech_starts)
    assert len(starts) == 4, starts
    assert run.cut_quiet.interrupted
    offsets = []
    placed = {}
    va = ts  # the video's capture timestamps: the moment AVSynchronizer handed each frame to rtc.VideoSource
    # a hold-up of this process longer than the 20 ms lead leaves a gap in rtc.AudioSource's output (the loaded
    # machine's, measured): the speech then matches less closely
    hold_up_ms = 1000 * max(published.stall, published.audio_late)
    match = 0.9 if hold_up_ms <= gen.audio_lead_ms else 0.6
    for start, name in zip(starts, ["long", "cut", "next", "cut"]):
        frame_no, offset = carrier(ts, start), start.offset
        expected = published.sample_at(va[frame_no]) + offset
        at, r = locate(speech[name], audio, expected, RATE // 2)
        assert r > match, f"{name}: the published audio does not match the speech sent (r {r:.2f}, {hold_up_ms} ms)"
        placed[name if name not in placed else name + "_quiet"] = at
        # both read back in this process: the audio's first sample against the frame that carries it
        offsets.append((published.audio_time(at) - (va[frame_no] + offset / RATE)) * 1000)
    figures["av_offset_ms"] = [round(o, 1) for o in offsets]
    # within 40 ms; a hold-up of this process longer than the 20 ms lead delays the audio after it by the gap
    limit = 40 + max(0.0, hold_up_ms - gen.audio_lead_ms)
    figures["max_hold_up_ms_at_av"] = round(hold_up_ms, 1)
    assert all(abs(o) <= limit for o in offsets), f"audio vs video of a frame: {offsets} ms ({hold_up_ms})"

    # the reply after the interrupt plays from its first sample, whole
    nxt = audio[placed["next"]:placed["next"] + speech["next"].size].astype(np.float64)
    r_next = np.corrcoef(np.abs(nxt[: nxt.size // 240 * 240].reshape(-1, 240)).mean(1),
                         np.abs(speech["next"][: nxt.size // 240 * 240].astype(np.float64).reshape(-1, 240)).mean(1))
    assert r_next[0, 1] > match, (r_next[0, 1], hold_up_ms)

    # interrupt: position = the audio actually published, and silent within 2 frames of clear_buffer
    cut_start, lead = placed["cut"], gen.audio_lead_ms / 1000
    # up to the next reply: where it was found, or (if a hold-up blurred the match) where its frame says it is
    next_frame, next_offset = carrier(ts, starts[2]), starts[2].offset
    next_by_frame = published.sample_at(va[next_frame]) + next_offset - int(FRAME_S * RATE)
    tail = audio[cut_start:min(placed["next"] - RATE // 50, next_by_frame)]
    nonzero = np.nonzero(tail)[0]  # rtc.AudioSource publishes digital silence once nothing is queued
    last = int(nonzero[-1]) + 1
    # the published speech ends at ``last`` or within the digital silence of the speech that follows it
    src = speech["cut"]
    quiet = np.nonzero(src[last:])[0]
    published_span = (lead + last / RATE, lead + (last + (int(quiet[0]) if quiet.size else src.size - last)) / RATE)
    pos = cut.playback_position
    error = max(0.0, published_span[0] - pos, pos - published_span[1])
    figures["interrupt_position_ms"] = round(pos * 1000, 1)
    figures["interrupt_position_error_ms"] = round(error * 1000, 1)
    # (a hold-up longer than the lead put a gap of silence into the published span: that much more)
    assert error <= 0.04 + max(0.0, hold_up_ms / 1000 - lead), (pos, published_span, hold_up_ms)
    pub = audio[cut_start:cut_start + last].astype(np.float64)
    assert 0.8 < np.sqrt(np.mean(pub ** 2) / np.mean(src[:last].astype(np.float64) ** 2)) < 1.25, \
        "the published part is not the speech sent"
    # the end of what played (by the position) against the moment clear_buffer was called
    end_s = published.audio_time(cut_start + int(round((pos - lead) * RATE)))
    figures["interrupt_to_silence_ms"] = round((end_s - t_clear) * 1000, 1)
    assert end_s - t_clear <= 0.08 + 0.01, figures  # 2 frames (+ the read-back's 10 ms frames)

    # the mouth follows the speech at lag 0 (+-1 frame), and closes after the interrupt
    images = [img for _, img in published.video]
    mouth = mouth_openings(images)
    # the project's lip-sync measure (bench/av_sync.py): mouth at each frame's centre, envelope on the audio clock
    t_env, env = rms_envelope(audio.astype(np.float64) / 32768, RATE)
    t_env = np.array([published.audio_time(int(t * RATE)) for t in t_env])
    ok = ~np.isnan(mouth)
    sync = cross_correlate(va[ok] + FRAME_S / 2, mouth[ok], t_env, env, max_lag=0.12)
    smoothed = cross_correlate(va[ok] + FRAME_S / 2, mouth[ok], t_env, env, max_lag=0.12, envelope_window=2 * FRAME_S)
    figures["mouth_r_lag0"], figures["mouth_best_lag_ms"] = round(sync.r_at(0.0), 3), round(sync.lag_s * 1000)
    figures["mouth_r_best"], figures["mouth_r_best_80ms_envelope"] = round(sync.r, 3), round(smoothed.r, 3)
    # lite + espeak-ng on this measure: r 0.80 at lag 0 at 512 px (the jaw follows the sound's amplitude, level ** 2;
    # with level ** 1.1 it read 0.69 here and 0.69-0.72 offline on the same audio, no transport). Asserted: r at
    # lag 0 >= 0.7 and the best lag within 20 ms (was +30/+40 ms: the audio was handed over after its frame).
    # A hold-up longer than the lead leaves a gap that delays the rest of that reply's audio: the lag may grow by
    # it and the correlation over the recording falls (measured: a 486 ms hold-up, lag +90 ms, r 0.57)
    gap_s = max(0.0, hold_up_ms / 1000 - gen.audio_lead_ms / 1000)
    # interrupt: the frames the session rendered ahead (its lip-sync delay) are rendered again with the mouth
    # closed, so within 2 frames of clear_buffer (one may be in flight) a published frame shows the mouth closed:
    # within a quarter of the speaking range above idle (the landmark fit's noise); measured at the second
    # interrupt, which silence follows (before: the D frames rendered ahead were sent open, closed after D + 2)
    k_clear = int(np.searchsorted(va, run.t_clear_quiet))
    speaking = mouth[int(np.searchsorted(va, published.audio_time(placed["cut_quiet"]))):k_clear]
    speaking_mouth = np.nanpercentile(speaking, 75)
    idle_mouth = np.nanmedian(mouth[: int(np.searchsorted(va, published.audio_time(placed["long"])))])
    closed = idle_mouth + 0.25 * (speaking_mouth - idle_mouth)
    after_clear = mouth[k_clear:k_clear + 8]
    closed_at = next((i for i, x in enumerate(after_clear) if x <= closed), None)
    figures["mouth_before_interrupt"] = [round(float(x), 3) for x in speaking[-4:]]
    figures["mouth_after_interrupt"] = [round(float(x), 3) for x in after_clear]
    figures["mouth_closed_after_frames"], figures["session_delay_frames"] = closed_at, delay_frames
    figures["mouth_idle"], figures["mouth_closed_below"] = round(float(idle_mouth), 3), round(float(closed), 3)
    held = int(np.ceil(1000 * max(published.stall, published.audio_late) / 40)) if published.stall > 0.04 else 0
    print("livekit in-process figures:", figures)
    assert abs(sync.lag_s) <= 0.02 + gap_s and sync.r_at(0.0) >= (0.7 if gap_s < 0.08 else 0.4), figures
    assert closed_at is not None and closed_at <= 2 + held, figures  # + frames a hold-up delayed
    for k, v in figures.items():
        record_property(k, v)


async def ten_replies(server: LocalAvatarServer, speech: dict[str, np.ndarray]) -> Any:
    avatar, agent, room, published, _ = await started_avatar(server)
    gen = avatar.media.generator
    sink = agent.output.audio
    results = []
    try:
        for i in range(10):
            await say(agent, speech[f"n{i}"])
            results.append(await asyncio.wait_for(sink.wait_for_playout(), 20))
        await asyncio.sleep(0.2)
    finally:
        await stop(avatar, published)
    return gen, published, results


async def test_ten_replies_back_to_back_play_whole_without_a_stall(server, speech, record_property):
    for attempt in range(ATTEMPTS):
        gen, published, results = await ten_replies(server, speech)
        if held_up_ms(published) <= HELD_UP_RETRY_MS:
            break
        print(f"attempt {attempt + 1}: this process was held up {held_up_ms(published):.0f} ms: again")
    figures: dict[str, Any] = {}
    check_video_cadence(published, figures, gen.frames_out)
    assert [r.interrupted for r in results] == [False] * 10
    errors = [abs(r.playback_position - speech[f"n{i}"].size / RATE) for i, r in enumerate(results)]
    figures["max_position_error_ms"] = round(max(errors) * 1000, 1)
    assert max(errors) <= 0.04 + 0.021, errors  # the 20 ms lead counts in the position
    audio = published.audio_signal().astype(np.float64)
    sent = sum(float(np.sum(speech[f"n{i}"].astype(np.float64) ** 2)) for i in range(10))
    assert 0.8 < np.sum(audio ** 2) / sent < 1.25, "the published speech energy is not the speech sent"
    print("livekit ten replies:", figures)
    for k, v in figures.items():
        record_property(k, v)


async def test_a_stalled_event_loop_leaves_audio_and_video_aligned_afterwards(server, speech, record_property):
    """The loop blocked 400 ms (longer than rtc.AVSynchronizer's 300 ms re-anchoring) while idle: the frame
    schedule re-anchors on both sides and the next reply's audio still leaves with its frame."""
    avatar, agent, room, published, _ = await started_avatar(server)
    gen = avatar.media.generator
    try:
        await asyncio.sleep(0.5)
        time.sleep(0.4)  # the stall, on purpose: nothing in the loop runs
        await asyncio.sleep(0.3)
        await say(agent, speech["next"])
        done = await asyncio.wait_for(agent.output.audio.wait_for_playout(), 20)
        await asyncio.sleep(0.2)
    finally:
        await stop(avatar, published)
    assert not done.interrupted
    ts = np.array([t for t, _ in published.video])
    start, = list(gen.speech_starts)
    frame_no, offset = carrier(ts, start), start.offset
    audio = published.audio_signal()
    at, r = locate(speech["next"], audio, published.sample_at(ts[frame_no]) + offset, RATE // 2)
    av_ms = (published.audio_time(at) - (ts[frame_no] + offset / RATE)) * 1000
    hold_ups = 1000 * max(published.monitor.worst, published.audio_late) - 400  # beyond the one made here
    print(f"livekit after a 400 ms stall: audio vs video {av_ms:+.0f} ms, r {r:.2f}, other hold-ups {hold_ups:.0f} ms")
    record_property("av_offset_after_stall_ms", round(av_ms, 1))
    assert r > 0.9 and abs(av_ms) <= 40 + max(0.0, hold_ups), (av_ms, r, hold_ups)

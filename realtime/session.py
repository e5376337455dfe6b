"""``AvatarSession``: one portrait + one engine stream + one clock + one playback buffer.

Data flow (all timing from ``SessionClock``)::

    push_audio / mic ──> PlaybackBuffer ──take(640) every 40 ms──> OutputRing slot n (audio)
                                                       └──feed──> EngineStream (worker thread)
                                                                   └──> OutputRing slot i (frame)
    viewer tracks at clock tick m send slot m - D: its frame + its audio (2 x 20 ms)

``D = lookahead_frames + margin_frames`` is the lip-sync delay: frame ``i`` needs audio up to
``i + lookahead`` before the engine can render it, plus a margin for render time. Audio and
video of one slot leave at the same clock tick, so the returned audio is delayed exactly as
much as the video. Events (``playback_started`` ...) are emitted at that same tick, i.e. when
the audio is actually sent, not when it was queued.

The engine runs on a per-session single-thread executor so the event loop never stalls;
every task is owned here and cancelled by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from avatarstream.engines.base import SAMPLES_PER_FRAME, FPS, AvatarEngine, AvatarFrame, EngineStream, Portrait
from avatarstream.realtime.audio_convert import MicResampler, Upsampler16kTo48k
from avatarstream.realtime.clock import AUDIO_SAMPLES_PER_FRAME, SessionClock
from avatarstream.realtime.playback import PlaybackBuffer, PlaybackMarker

log = logging.getLogger(__name__)

MAX_ENGINE_BACKLOG_FRAMES = 25  # audio not yet fed to a lagging engine; beyond, the oldest is skipped
# Live microphone latency: a network stall followed by a burst leaves a standing backlog (and a
# sender clock faster than ours builds one slowly). While the queue has stayed above the target
# for a whole window, quiet input frames are dropped (speech is kept); above the max, any are.
LIVE_BACKLOG_TARGET_S = 0.1
LIVE_BACKLOG_MAX_S = 1.0
LIVE_BACKLOG_WINDOW = 50  # input frames (1 s of 20 ms frames)
QUIET_RMS = 0.01  # -40 dBFS


@dataclass(frozen=True)
class SessionEvent:
    type: str  # playback_started | playback_finished | speaking_started | speaking_stopped | error
    data: dict
    frame: int  # content frame index the event belongs to
    wall_time: float  # time.time() when emitted


@dataclass
class SessionOptions:
    size: int = 512
    margin_frames: int = 2  # render-time allowance on top of the engine's lookahead
    max_buffer_seconds: float = 120.0
    start_threshold_seconds: float = 0.06
    ring_frames: int = 32  # slots kept after being sent (plus the lip-sync delay)
    controls: Mapping[str, Any] | None = None


@dataclass
class OutputSlot:
    """Everything the viewers send for one content frame index."""

    index: int
    audio16k: np.ndarray  # float32[640]
    audio48k: np.ndarray  # int16[1920]: two 20 ms WebRTC frames
    markers: list[PlaybackMarker]
    utterance: int | None
    position: int
    frame: AvatarFrame | None = None


class OutputRing:
    """Bounded map content index -> slot; the oldest slots fall out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots: dict[int, OutputSlot] = {}
        self.latest: tuple[int, AvatarFrame] | None = None  # (slot index, frame) of the newest frame

    def put(self, slot: OutputSlot) -> None:
        self._slots[slot.index] = slot
        self._slots.pop(slot.index - self.capacity, None)

    def get(self, index: int) -> OutputSlot | None:
        return self._slots.get(index)

    def set_frame(self, index: int, frame: AvatarFrame) -> None:
        slot = self._slots.get(index)
        if slot is not None:
            slot.frame = frame
        if self.latest is None or index >= self.latest[0]:
            self.latest = (index, frame)

    def frame_at_or_before(self, index: int) -> AvatarFrame | None:
        for i in range(index, index - self.capacity, -1):
            slot = self._slots.get(i)
            if slot is not None and slot.frame is not None:
                return slot.frame
        if self.latest is not None and self.latest[0] <= index:
            return self.latest[1]
        return None

    def silence_from(self, index: int) -> list[OutputSlot]:
        """Silence the audio (and drop the markers) of every slot >= index; return those slots."""
        hit = []
        for i, slot in self._slots.items():
            if i >= index:
                hit.append(slot)
                slot.audio16k = np.zeros_like(slot.audio16k)
                slot.audio48k = np.zeros_like(slot.audio48k)
        return hit


@dataclass
class SessionStats:
    ticks: int = 0  # clock ticks processed (audio taken)
    frames_rendered: int = 0
    frames_missing: int = 0  # output ticks whose frame was not ready (previous frame repeated)
    engine_ms: float = 0.0  # total time in EngineStream.feed
    engine_dropped_frames: int = 0  # audio frames the engine never saw (it fell > 1 s behind)
    late_ticks: int = 0  # ticks processed more than one frame late (engine slower than real time)
    mic_dropped_samples: int = 0  # live input dropped to keep its latency bounded
    sent_log: deque = field(default_factory=lambda: deque(maxlen=3000))  # (index, wall, rms, mouth_open, has_frame)


class AvatarSession:
    def __init__(self, engine: AvatarEngine, portrait: Portrait, *, engine_name: str = "lite",
                 options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        self.id = uuid.uuid4().hex[:16]
        self.token = secrets.token_urlsafe(24)
        self.engine_name = engine_name
        self.size = self.options.size
        self.fps = FPS
        self.portrait = portrait
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.stats = SessionStats()
        self._engine = engine
        self._stream: EngineStream | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{self.id[:6]}")
        self._buffer = PlaybackBuffer(self.options.max_buffer_seconds, self.options.start_threshold_seconds)
        self._upsampler = Upsampler16kTo48k()
        self.clock: SessionClock | None = None
        self.lookahead_frames = 0
        self.delay_frames = 0  # D: lip-sync delay between taking audio and sending it
        self._ring = OutputRing(self.options.ring_frames)
        self._next_tick = 0
        self._engine_pending: deque[tuple[int, np.ndarray]] = deque()  # (tick, audio) not yet fed
        self._engine_wakeup = asyncio.Event()
        self._fed_ticks: deque[int] = deque()  # slot index of engine frame _fed_base + i
        self._fed_base = 0
        self._tasks: set[asyncio.Task] = set()
        self._subscribers: list[asyncio.Queue] = []
        self._viewers: dict[Any, list] = {}  # pc -> its tracks
        self._sent_position: dict[int, int] = {}
        self._pending_output_markers: list[PlaybackMarker] = []
        self._speaking = False
        self._closed = False
        self._on_close: list[Callable[["AvatarSession"], Any]] = []
        self.started = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the engine stream (face detection etc., in the worker) and start the clock."""
        loop = asyncio.get_running_loop()
        self._stream = await loop.run_in_executor(
            self._executor, lambda: self._engine.open_stream(self.portrait, size=self.size, controls=self.options.controls))
        self.lookahead_frames = int(self._stream.lookahead_frames)
        self.delay_frames = self.lookahead_frames + self.options.margin_frames
        self._ring = OutputRing(self.options.ring_frames + self.delay_frames)
        self.clock = SessionClock.start_now()
        self._spawn(self._run_clock(), "clock")
        self._spawn(self._run_engine(), "engine")
        self.started.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def on_close(self, callback: Callable[["AvatarSession"], Any]) -> None:
        self._on_close.append(callback)

    async def close(self) -> None:
        """Cancel every owned task, close the viewers' connections, free the engine stream."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pc in list(self._viewers):
            with contextlib.suppress(Exception):
                await pc.close()
        self._viewers.clear()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._executor, stream.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        for q in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)  # tells consumers the session is over
        for cb in self._on_close:
            with contextlib.suppress(Exception):
                res = cb(self)
                if asyncio.iscoroutine(res):
                    await res

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"session-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closed:
            exc = task.exception()
            log.error("session %s task %s failed: %r", self.id, task.get_name(), exc)
            self._emit("error", {"message": f"{type(exc).__name__}: {exc}"}, self._next_tick)
            asyncio.get_running_loop().create_task(self.close())

    # -- input ---------------------------------------------------------------------------
    def push_audio(self, pcm16k: np.ndarray) -> int:
        """Queue speech (float32 mono 16 kHz); returns its utterance id. Raises BufferFull."""
        self.last_activity = time.monotonic()
        return self._buffer.push(pcm16k)

    def end_utterance(self) -> int | None:
        self.last_activity = time.monotonic()
        return self._buffer.end_utterance()

    @property
    def queued_seconds(self) -> float:
        return self._buffer.queued_samples / self._buffer.sample_rate

    def interrupt(self) -> int:
        """Drop queued audio and the engine's pending motion together; returns dropped samples.

        Audio already taken but not yet sent (the lip-sync delay) is silenced too; each
        interrupted utterance gets ``playback_finished {interrupted: true}`` at the next tick.
        """
        self.last_activity = time.monotonic()
        dropped = self._buffer.interrupt()
        _, markers = self._buffer.take(0)
        utterances = {m.utterance for m in markers}
        first_unsent = self._next_tick - self.delay_frames
        self._upsampler.reset()
        for slot in self._ring.silence_from(first_unsent):
            if slot.utterance is not None or slot.markers:
                dropped += slot.audio16k.size
            for m in slot.markers:
                if m.kind == "started" or m.kind == "finished":
                    utterances.add(m.utterance)
            slot.markers = []
            if slot.utterance is not None:
                utterances.add(slot.utterance)
            slot.utterance = None
        for i, (tick, samples) in enumerate(self._engine_pending):  # not yet rendered: render idle
            if tick >= first_unsent:
                self._engine_pending[i] = (tick, np.zeros_like(samples))
        for u in sorted(utterances):
            self._pending_output_markers.append(
                PlaybackMarker("interrupted", u, 0, self._sent_position.get(u, 0)))
        if self._stream is not None and not self._closed:
            stream = self._stream
            fut = asyncio.get_running_loop().run_in_executor(self._executor, stream.interrupt)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return dropped

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """Apply live controls; returns {name: reason} for unsupported ones.

        Runs on the engine's worker thread between two frames (blocks the caller at most one
        frame's render time); prefer ``await set_controls_async`` from coroutines.
        """
        self.last_activity = time.monotonic()
        if self._stream is None:
            return {k: "session is not running" for k in controls}
        return self._executor.submit(self._stream.set_controls, dict(controls)).result()

    async def set_controls_async(self, controls: Mapping[str, Any]) -> dict[str, str]:
        self.last_activity = time.monotonic()
        if self._stream is None:
            return {k: "session is not running" for k in controls}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._stream.set_controls, dict(controls))

    def attach_input(self, track) -> None:
        """Feed a remote (microphone) audio track into the playback buffer, as one open stream."""
        self._spawn(self._pump_input(track), "mic")

    async def _pump_input(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        resample = MicResampler()
        levels: deque[int] = deque(maxlen=LIVE_BACKLOG_WINDOW)
        try:
            while True:
                frame = await track.recv()
                pcm = resample(frame)
                queued = self._buffer.queued_samples
                levels.append(queued)
                standing = min(levels) / self._buffer.sample_rate if len(levels) == levels.maxlen else 0.0
                standing = min(standing, queued / self._buffer.sample_rate)  # count what we just dropped
                quiet = pcm.size == 0 or float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) < QUIET_RMS
                if (standing > LIVE_BACKLOG_TARGET_S and quiet) or standing > LIVE_BACKLOG_MAX_S:
                    self.stats.mic_dropped_samples += pcm.size
                    continue
                if pcm.size:
                    try:
                        self.push_audio(pcm)
                    except Exception as exc:  # BufferFull: drop rather than grow
                        log.warning("session %s: dropping microphone audio: %s", self.id, exc)
        except MediaStreamError:
            pass
        finally:
            self._buffer.end_utterance()

    # -- events --------------------------------------------------------------------------
    def subscribe_events(self, maxsize: int = 256) -> asyncio.Queue:
        """A bounded queue of SessionEvent (``None`` once the session closed); oldest dropped when full."""
        q: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self._subscribers.append(q)
        return q

    def unsubscribe_events(self, q: asyncio.Queue) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(q)

    def _emit(self, type_: str, data: dict, frame: int) -> None:
        ev = SessionEvent(type_, data, frame, time.time())
        for q in self._subscribers:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(ev)

    # -- viewers -------------------------------------------------------------------------
    def add_viewer(self, pc) -> None:
        """Add this session's video + audio tracks to ``pc`` (call after setRemoteDescription)
        and forward events to its data channel named "events" if the viewer opens one."""
        from avatarstream.realtime.media_tracks import AvatarAudioTrack, AvatarVideoTrack

        self.last_activity = time.monotonic()
        tracks = [AvatarVideoTrack(self), AvatarAudioTrack(self)]
        for t in tracks:
            pc.addTrack(t)
        self._viewers[pc] = tracks

        @pc.on("datachannel")
        def _on_channel(channel) -> None:
            if channel.label == "events":
                self._spawn(self._forward_events(channel), "events-channel")

    def remove_viewer(self, pc) -> None:
        for t in self._viewers.pop(pc, []):
            t.stop()

    def sender_clock_samples(self) -> list[dict]:
        """For each viewer's video/audio sender: the (RTP timestamp, send time) pair of its last
        packet, i.e. what its next RTCP sender report will say. Diagnostics for lip-sync
        measurements on the sender's clock (reads aiortc sender state; empty if unavailable)."""
        out = []
        for i, pc in enumerate(list(self._viewers)):
            for sender in pc.getSenders():
                ntp = getattr(sender, "_RTCRtpSender__ntp_timestamp", 0)
                rtp = getattr(sender, "_RTCRtpSender__rtp_timestamp", None)
                if not ntp or rtp is None or sender.track is None:
                    continue
                unix = (ntp >> 32) - 2208988800 + (ntp & 0xFFFFFFFF) / 2**32
                out.append({"viewer": i, "kind": sender.track.kind, "rtp_timestamp": rtp, "time": unix})
        return out

    def viewer_stats(self) -> list[dict]:
        """Per viewer: frames its tracks sent and clock ticks they skipped (slow sender)."""
        return [{t.kind: {"sent": t.frames_sent, "skipped": t.frames_skipped} for t in tracks}
                for tracks in self._viewers.values()]

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    async def _forward_events(self, channel) -> None:
        import json

        q = self.subscribe_events()
        try:
            while True:
                ev = await q.get()
                if ev is None or channel.readyState == "closed":
                    break
                if channel.readyState == "open":
                    channel.send(json.dumps({"type": ev.type, "frame": ev.frame, "wall_time": ev.wall_time, **ev.data}))
        finally:
            self.unsubscribe_events(q)

    # what the tracks send ------------------------------------------------------------
    def video_for(self, content_index: int) -> AvatarFrame | None:
        return self._ring.frame_at_or_before(content_index)

    def audio_for(self, content_index: int, half: int) -> np.ndarray | None:
        """int16[960] for the 20 ms audio frame ``half`` (0/1) of content frame ``content_index``."""
        slot = self._ring.get(content_index)
        if slot is None:
            return None
        return slot.audio48k[half * AUDIO_SAMPLES_PER_FRAME:(half + 1) * AUDIO_SAMPLES_PER_FRAME]

    # -- the clock -----------------------------------------------------------------------
    async def _run_clock(self) -> None:
        """Every 40 ms: take the next audio frame into the ring (whatever the engine is doing, so
        the audio never has gaps), emit the events of the slot being sent, wake the engine."""
        clock = self.clock
        assert clock is not None
        while True:
            await clock.sleep_until(clock.frame_time(self._next_tick))
            due = clock.current_frame()
            if due > self._next_tick + 1:
                self.stats.late_ticks += 1
            while self._next_tick <= due:
                n = self._next_tick
                block = self._buffer.take_block(SAMPLES_PER_FRAME)
                self._ring.put(OutputSlot(n, block.samples, self._upsampler(block.samples),
                                          block.markers, block.utterance, block.position))
                self._engine_pending.append((n, block.samples))
                if len(self._engine_pending) > MAX_ENGINE_BACKLOG_FRAMES:
                    self._engine_pending.popleft()
                    self.stats.engine_dropped_frames += 1
                self._next_tick = n + 1
                self.stats.ticks += 1
                self._on_sent(n - self.delay_frames)
            self._engine_wakeup.set()

    async def _run_engine(self) -> None:
        """Feed the engine all audio taken since its last call (one call: a lagging engine
        catches up in batches) on the session's worker thread; file its frames by slot."""
        loop = asyncio.get_running_loop()
        while True:
            await self._engine_wakeup.wait()
            self._engine_wakeup.clear()
            stream = self._stream
            if stream is None:
                return
            if not self._engine_pending:
                continue
            batch = list(self._engine_pending)
            self._engine_pending.clear()
            self._fed_ticks.extend(tick for tick, _ in batch)
            t = time.perf_counter()
            frames = await loop.run_in_executor(self._executor, stream.feed, np.concatenate([a for _, a in batch]))
            self.stats.engine_ms += (time.perf_counter() - t) * 1000
            for f in frames:
                self._ring.set_frame(self._fed_ticks[f.index - self._fed_base], f)
            if frames:
                while self._fed_base <= frames[-1].index:
                    self._fed_ticks.popleft()
                    self._fed_base += 1
            self.stats.frames_rendered += len(frames)

    def _on_sent(self, c: int) -> None:
        """Content frame ``c`` leaves on every viewer's tracks now: emit its events."""
        markers, self._pending_output_markers = self._pending_output_markers, []
        slot = self._ring.get(c) if c >= 0 else None
        if slot is not None:
            markers = markers + slot.markers
            if slot.utterance is not None:
                self._sent_position[slot.utterance] = slot.position
        for m in markers:
            if m.kind == "started":
                self._emit("playback_started", {"utterance": m.utterance}, c)
            else:
                self._sent_position.pop(m.utterance, None)
                self._emit("playback_finished", {
                    "utterance": m.utterance,
                    "playback_position": round(m.position / self._buffer.sample_rate, 3),
                    "interrupted": m.kind == "interrupted"}, c)
        if slot is None:
            return
        frame = slot.frame
        if frame is None:
            self.stats.frames_missing += 1
        speaking = bool(frame.speaking) if frame is not None else self._speaking
        if speaking != self._speaking:
            self._speaking = speaking
            self._emit("speaking_started" if speaking else "speaking_stopped", {}, c)
        rms = float(np.sqrt(np.mean(slot.audio16k.astype(np.float64) ** 2)))
        self.stats.sent_log.append((c, time.time(), rms, frame.mouth_open if frame else None, frame is not None))

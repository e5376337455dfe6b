"""``AvatarSession``: one portrait + one engine stream + one clock + one playback buffer.

Data flow (all timing from ``SessionClock``)::

    push_audio ──> PlaybackBuffer ──take(640) every 40 ms──> OutputRing slot n (audio, markers)
                                                   └──submit──> EnginePump (worker thread)
                                                                 └──> OutputRing slot i (frame)
    transports at clock tick m send slot m - D: its frame + its audio; events of slot m - D fire

``D = lookahead_frames + margin_frames`` is the lip-sync delay: frame ``i`` needs audio up to
``i + lookahead`` before the engine can render it, plus a margin for render time. Audio and
video of one slot leave at the same clock tick, so the returned audio is delayed exactly as
much as the video. Events (``playback_started`` ...) are emitted at that same tick, i.e. when
the audio is actually sent, not when it was queued.

The session orchestrates and owns: its clock task, the engine pump and its task, the event bus
and the viewers of any transport (``realtime/transports/``), all closed by ``close()``. It knows
nothing of WebRTC or WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME, AvatarEngine, AvatarFrame, Portrait
from avatarstream.realtime.clock import SessionClock
from avatarstream.realtime.playback import PlaybackBuffer, PlaybackMarker
from avatarstream.realtime.session.engine_pump import EnginePump
from avatarstream.realtime.session.events import EventBus, EventType, SessionEvent
from avatarstream.realtime.session.output_ring import OutputRing, OutputSlot
from avatarstream.realtime.transports.base import Viewer, ViewerState

log = logging.getLogger(__name__)


MAX_TIMED_UTTERANCES = 512  # utterances whose push time is kept for the push-to-playback latency


@dataclass(frozen=True)
class SessionOptions:
    size: int  # video width and height in pixels (the server's default: its engine's default size)
    margin_frames: int = 2  # render-time allowance on top of the engine's lookahead
    max_buffer_seconds: float = 120.0  # queued speech beyond this is refused (BufferFull)
    start_threshold_seconds: float = 0.06
    ring_frames: int = 32  # slots kept after being sent (plus the lip-sync delay)
    max_viewers: int = 8  # viewers of all transports together; more get 409
    controls: Mapping[str, Any] | None = None


@dataclass
class SessionStats:
    ticks: int = 0  # clock ticks processed (audio taken)
    frames_missing: int = 0  # output ticks whose frame was not ready (previous frame repeated)
    late_ticks: int = 0  # ticks processed more than one frame late (engine slower than real time)
    active_ticks: int = 0  # ticks whose audio went to the engine (a viewer attached or speech playing)
    active_frames_missing: int = 0  # slots of those ticks sent without their frame (the engine fell behind)
    sent_log: deque = field(default_factory=lambda: deque(maxlen=3000))  # (index, wall, rms, mouth_open, has_frame)
    viewers_left: int = 0  # viewers detached (left, dropped or killed) while the session went on


class ViewerLimitError(Exception):
    """The session already has ``max_viewers`` viewers."""


ActivationCheck = Callable[["AvatarSession"], None]  # raises to refuse: the session may not start rendering


class AvatarSession:
    def __init__(self, engine: AvatarEngine, portrait: Portrait, *, engine_name: str = "lite",
                 options: SessionOptions, origin: str = "api") -> None:
        self.options = options
        self.origin = origin  # the API that created it: "api" (/v1/sessions), "offer", "whep"
        self.id = uuid.uuid4().hex[:16]
        self.token = secrets.token_urlsafe(24)
        self.engine_name = engine_name
        self.size = self.options.size
        self.fps = FPS
        self.portrait = portrait
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.stats = SessionStats()
        self.events = EventBus()
        self.clock: SessionClock | None = None
        self.lookahead_frames = 0
        self.delay_frames = 0  # D: lip-sync delay between taking audio and sending it
        self.started = asyncio.Event()
        self._buffer = PlaybackBuffer(self.options.max_buffer_seconds, self.options.start_threshold_seconds)
        self._ring = OutputRing(self.options.ring_frames)
        self._pump = EnginePump(engine, portrait, size=self.size, controls=self.options.controls,
                                on_frame=self._file_frame, name=f"engine-{self.id[:6]}")
        self._next_tick = 0
        self._tasks: set[asyncio.Task] = set()
        self._viewers: dict[str, Viewer] = {}
        self._sent_position: dict[int, int] = {}
        self._pending_output_markers: list[PlaybackMarker] = []
        self._speaking = False
        self._rendering = False  # the last tick's audio went to the engine
        self._closed = False
        # called before an inactive session starts rendering (first viewer, or speech with nobody
        # watching); raises to refuse it (the registry's admission by measured load)
        self.activation_check: ActivationCheck | None = None
        self._on_close: list[Callable[[AvatarSession], Any]] = []
        self._pushed_at: dict[int, float] = {}  # utterance -> monotonic time of its first pushed audio
        # called with each utterance's push-to-playback latency in seconds (first audio pushed -> sent)
        self.playback_latency_observers: list[Callable[[float], None]] = []

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the engine stream (face detection etc., in the worker) and start the clock."""
        self.lookahead_frames = await self._pump.open()
        self.delay_frames = self.lookahead_frames + self.options.margin_frames
        self._ring = OutputRing(self.options.ring_frames + self.delay_frames)
        self.clock = SessionClock.start_now()
        self._spawn(self._run_clock(), "clock")
        self._spawn(self._pump.run(), "engine")
        self.started.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def task_count(self) -> int:
        """Background tasks this session owns (0 once closed)."""
        return len(self._tasks)

    def on_close(self, callback: Callable[[AvatarSession], Any]) -> None:
        self._on_close.append(callback)

    async def close(self) -> None:
        """Cancel every owned task, close every viewer, free the engine stream, end the events."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for viewer in list(self._viewers.values()):
            with contextlib.suppress(Exception):
                await viewer.close()
        self._viewers.clear()
        await self._pump.close()
        self.events.close()
        for cb in self._on_close:
            with contextlib.suppress(Exception):
                res = cb(self)
                if asyncio.iscoroutine(res):
                    await res

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run ``coro`` as a task owned by this session: cancelled by ``close()``, and a failure
        closes the session with an ``error`` event."""
        return self._spawn(coro, name)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"session-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closed:
            exc = task.exception()
            log.error("session %s task %s failed: %r", self.id, task.get_name(), exc)
            self.events.emit(EventType.ERROR, {"message": f"{type(exc).__name__}: {exc}"}, self._next_tick)
            asyncio.get_running_loop().create_task(self.close())

    def _file_frame(self, tick: int, frame: AvatarFrame) -> None:
        self._ring.set_frame(tick, frame)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def active(self) -> bool:
        """The engine renders for this session: a viewer of any transport is attached, or speech is
        queued or playing. An inactive session costs only its clock (no engine work, no encoding)."""
        return bool(self._viewers) or self._rendering or self._buffer.queued_samples > 0

    def _check_activation(self) -> None:
        if not self.active and self.activation_check is not None:
            self.activation_check(self)

    # -- input ---------------------------------------------------------------------------
    def push_audio(self, pcm16k: np.ndarray) -> int:
        """Queue speech (float32 mono 16 kHz); returns its utterance id. Raises BufferFull, or
        what ``activation_check`` raises when nobody watches and the server has no room to render."""
        self._check_activation()
        self.touch()
        utterance = self._buffer.push(pcm16k)
        if utterance not in self._pushed_at and len(self._pushed_at) < MAX_TIMED_UTTERANCES:
            self._pushed_at[utterance] = time.monotonic()
        return utterance

    def end_utterance(self) -> int | None:
        self.touch()
        return self._buffer.end_utterance()

    @property
    def queued_seconds(self) -> float:
        return self._buffer.queued_samples / self._buffer.sample_rate

    def interrupt(self) -> int:
        """Drop queued audio and the engine's pending motion together; returns dropped samples.

        Audio already taken but not yet sent (the lip-sync delay) is silenced too; each
        interrupted utterance gets ``playback_finished {interrupted: true}`` at the next tick.
        """
        self.touch()
        dropped = self._buffer.interrupt()
        _, markers = self._buffer.take(0)
        utterances = {m.utterance for m in markers}
        first_unsent = self._next_tick - self.delay_frames
        for slot in self._ring.silence_from(first_unsent):
            if slot.utterance is not None or slot.markers:
                dropped += slot.audio.size
            for m in slot.markers:
                utterances.add(m.utterance)
            slot.markers = []
            if slot.utterance is not None:
                utterances.add(slot.utterance)
            slot.utterance = None
        self._pump.silence_from(first_unsent)  # not yet rendered: render idle
        for u in sorted(utterances):
            self._pending_output_markers.append(
                PlaybackMarker("interrupted", u, 0, self._sent_position.get(u, 0)))
        if not self._closed:
            self._pump.interrupt()
        return dropped

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """Apply live controls from another thread; returns {name: reason} for unsupported ones.

        Blocks the caller at most one frame's render time; coroutines use ``set_controls_async``.
        """
        self.touch()
        return self._pump.set_controls_blocking(controls)

    async def set_controls_async(self, controls: Mapping[str, Any]) -> dict[str, str]:
        self.touch()
        return await self._pump.set_controls(controls)

    # -- events --------------------------------------------------------------------------
    def subscribe_events(self) -> asyncio.Queue[SessionEvent | None]:
        """A bounded queue of SessionEvent (``None`` once the session closed); oldest dropped when full."""
        return self.events.subscribe()

    def unsubscribe_events(self, q: asyncio.Queue[SessionEvent | None]) -> None:
        self.events.unsubscribe(q)

    # -- viewers (any transport) ------------------------------------------------------------
    def attach_viewer(self, viewer: Viewer) -> None:
        """Register a viewer; raises ViewerLimitError at ``max_viewers``, or what
        ``activation_check`` raises when this first viewer would make the session render and the
        server has no room for one more active session."""
        if self._closed:
            raise ViewerLimitError("the session has ended")
        if len(self._viewers) >= self.options.max_viewers:
            raise ViewerLimitError(f"this session already has its limit of {self.options.max_viewers} viewers")
        self._check_activation()
        self.touch()
        self._viewers[viewer.id] = viewer

    def detach_viewer(self, viewer: Viewer) -> None:
        if self._viewers.get(viewer.id) is viewer:
            del self._viewers[viewer.id]
            self.stats.viewers_left += 1

    def viewer(self, viewer_id: str) -> Viewer | None:
        return self._viewers.get(viewer_id)

    @property
    def viewers(self) -> list[Viewer]:
        return list(self._viewers.values())

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @property
    def connected_viewer_count(self) -> int:
        return sum(1 for v in self._viewers.values() if v.state == ViewerState.CONNECTED)

    def viewer_stats(self) -> list[dict[str, Any]]:
        return [{"id": v.id, "transport": v.transport, "state": v.state.value, **v.stats()}
                for v in self._viewers.values()]

    # -- what the transports send ------------------------------------------------------------
    def video_for(self, content_index: int) -> AvatarFrame | None:
        return self._ring.frame_at_or_before(content_index)

    def audio_for(self, content_index: int) -> np.ndarray | None:
        slot = self._ring.get(content_index)
        return None if slot is None else slot.audio

    def output_at(self, content_index: int) -> OutputSlot | None:
        """The ring slot of a content index (audio, markers, frame), while it is kept."""
        return self._ring.get(content_index)

    def pipeline_stats(self) -> dict[str, Any]:
        st, pump = self.stats, self._pump.stats
        return {
            "ticks": st.ticks, "frames_rendered": pump.frames_rendered, "frames_missing": st.frames_missing,
            "late_ticks": st.late_ticks, "engine_dropped_frames": pump.engine_dropped_frames,
            "engine_ms_per_tick": pump.engine_ms / max(1, st.ticks),
        }

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
                # nobody watching and nothing playing: no engine work
                self._rendering = bool(self._viewers) or block.utterance is not None
                self._ring.put(OutputSlot(n, block.samples, block.markers, block.utterance, block.position,
                                          rendered=self._rendering))
                if self._rendering:
                    self._pump.submit(n, block.samples)
                    self.stats.active_ticks += 1
                self._next_tick = n + 1
                self.stats.ticks += 1
                self._on_sent(n - self.delay_frames)
            self._pump.wake()

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
                self.events.emit(EventType.PLAYBACK_STARTED, {"utterance": m.utterance}, c)
                pushed = self._pushed_at.pop(m.utterance, None)
                if pushed is not None:
                    for observe in self.playback_latency_observers:
                        observe(time.monotonic() - pushed)
            else:
                self._sent_position.pop(m.utterance, None)
                self._pushed_at.pop(m.utterance, None)
                self.events.emit(EventType.PLAYBACK_FINISHED, {
                    "utterance": m.utterance,
                    "playback_position": round(m.position / self._buffer.sample_rate, 3),
                    "interrupted": m.kind == "interrupted"}, c)
        if slot is None:
            return
        frame = slot.frame
        if frame is None:
            self.stats.frames_missing += 1
            if slot.rendered:
                self.stats.active_frames_missing += 1
        speaking = bool(frame.speaking) if frame is not None else self._speaking
        if speaking != self._speaking:
            self._speaking = speaking
            self.events.emit(EventType.SPEAKING_STARTED if speaking else EventType.SPEAKING_STOPPED, {}, c)
        rms = float(np.sqrt(np.mean(slot.audio.astype(np.float64) ** 2)))
        self.stats.sent_log.append((c, time.time(), rms, frame.mouth_open if frame else None, frame is not None))

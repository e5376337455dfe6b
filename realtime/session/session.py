"""``AvatarSession``: one portrait + one engine stream + one clock + one playback buffer.

Data flow (all timing from ``SessionClock``)::

    push_audio ──> PlaybackBuffer ──take(640) every 40 ms──> OutputRing slot n (audio, markers)
                                                   └──submit──> EnginePump (worker thread)
                                                                 └──> OutputRing slot i (frame)
    transports at clock tick m send slot m - D: its frame + its audio; events of slot m - D fire

The lip-sync delay is ``lookahead + margin`` (ms): frame ``i`` needs audio up to slot
``i + lookahead`` before the engine can render it, plus a margin for render time. Slot ``n`` is
taken at ``frame_time(n) + phase`` and sent at clock tick ``n + D``, so audio and video of one slot
leave together, delayed by ``40 ms * D - phase = 40 ms * lookahead + margin``. The margin is
fixed or measured per session (``render_margin.py``: p99 of the session's render times + a guard,
``latency.py`` presets); it moves by changing ``phase`` (when slots are taken), which never skips or
repeats a slot. ``D`` (whole frames) only grows, while nothing audible is in flight, when the
margin needs more than ``40 ms * (D - lookahead)``. Events (``playback_started`` ...) are emitted
at the tick that sends their slot, i.e. when the audio is actually sent, not when it was queued.

A held-back (starting) utterance is taken as soon as its queued audio covers what the incoming
stream needs (``input_arrival.py``), or a fixed start threshold.

The session orchestrates and owns: its clock task, the engine pump and its task, the event bus
and the viewers of any transport (``realtime/transports/``), all closed by ``close()``. It knows
nothing of WebRTC or WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarstream.engines.base import FPS, SAMPLES_PER_FRAME, AvatarEngine, AvatarFrame, Portrait
from avatarstream.realtime.clock import SessionClock
from avatarstream.realtime.playback import PlaybackBuffer, PlaybackMarker
from avatarstream.realtime.session.engine_pump import EnginePump
from avatarstream.realtime.session.events import EventBus, EventType, SessionEvent
from avatarstream.realtime.session.input_arrival import InputArrival
from avatarstream.realtime.session.latency import ADAPTIVE, LatencySettings
from avatarstream.realtime.session.output_ring import OutputRing, OutputSlot
from avatarstream.realtime.session.pacing import FRAME_MS, MAX_MARGIN_MS, frames_needed, next_wake, plan_delay, wake
from avatarstream.realtime.session.render_margin import RenderMargin
from avatarstream.realtime.transports.base import Viewer, ViewerState

log = logging.getLogger(__name__)


MAX_TIMED_UTTERANCES = 512  # utterances whose push time is kept for the push-to-playback latency
QUIET_RMS = 0.01  # -40 dBFS: a slot this quiet may be repeated once when the delay grows
CLASSIC_LIVE_BACKLOG_S = 0.1  # live input standing above this is trimmed in quiet frames (fixed settings)
LIVE_PACKET_MS = 20.0  # a WebRTC audio packet: the trimming's step
ENGINE_BEHIND_S = 0.08  # a frame still missing this long after its last audio was taken: the engine is behind


@dataclass(frozen=True)
class SessionOptions:
    size: int  # video width and height in pixels (the server's default: its engine's default size)
    latency: LatencySettings = ADAPTIVE  # render margin and start threshold: fixed or measured (latency.py)
    max_buffer_seconds: float = 120.0  # queued speech beyond this is refused (BufferFull)
    ring_frames: int = 32  # slots kept after being sent (plus the lip-sync delay)
    max_viewers: int = 8  # viewers of all transports together; more get 409
    controls: Mapping[str, Any] | None = None


@dataclass
class SessionStats:
    ticks: int = 0  # clock ticks processed (audio taken)
    frames_missing: int = 0  # output ticks whose frame was not ready (previous frame repeated)
    late_ticks: int = 0  # ticks processed more than one frame late (engine slower than real time)
    active_ticks: int = 0  # ticks whose audio went to the engine (a viewer attached or speech playing)
    active_frames_missing: int = 0  # slots of those ticks without their frame 80 ms after its audio was taken
    # (the engine fell behind, whatever the margin; ``frames_missing`` counts frames not ready when sent)
    sent_log: deque = field(default_factory=lambda: deque(maxlen=3000))  # (index, wall, rms, mouth_open, has_frame)
    viewers_left: int = 0  # viewers detached (left, dropped or killed) while the session went on


class ViewerLimitError(Exception):
    """The session already has ``max_viewers`` viewers."""


ActivationCheck = Callable[["AvatarSession"], None]  # raises to refuse: the session may not start rendering


class AvatarSession:
    def __init__(self, engine: AvatarEngine, portrait: Portrait, *, engine_name: str = "lite",
                 options: SessionOptions, origin: str = "api", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 engine_executor: Executor | None = None) -> None:
        self.options = options
        self._now = clock  # monotonic seconds: the session clock's time base and every timestamp here
        self._sleep = sleep  # waits seconds of ``clock`` (asyncio.sleep for the real one)
        # ``engine_executor``: where the engine's calls run (default: the pump's own worker thread)
        self.origin = origin  # the API that created it: "api" (/v1/sessions), "offer", "whep"
        self.id = uuid.uuid4().hex[:16]
        self.token = secrets.token_urlsafe(24)
        self.engine_name = engine_name
        self.size = self.options.size
        self.fps = FPS
        self.portrait = portrait
        self.created = time.time()
        self.last_activity = clock()
        self.stats = SessionStats()
        self.events = EventBus()
        self.clock: SessionClock | None = None
        self.lookahead_frames = 0
        self.delay_frames = 0  # D: clock ticks between a slot's index and the tick that sends it
        self.phase = 0.0  # s after frame_time(n) at which slot n is taken
        self.latency = self.options.latency
        self.started = asyncio.Event()
        fixed_start = self.latency.start_threshold_ms
        self._buffer = PlaybackBuffer(self.options.max_buffer_seconds,
                                      (fixed_start if fixed_start is not None else 60.0) / 1000)
        self._margin = RenderMargin(self.latency)
        self._arrival = InputArrival(self.latency)
        self._ring = OutputRing(self.options.ring_frames)
        self._pump = EnginePump(engine, portrait, size=self.size, controls=self.options.controls,
                                on_frame=self._file_frame, name=f"engine-{self.id[:6]}", executor=engine_executor,
                                on_rerendered=self._refile_frame)
        self._next_tick = 0  # next slot to take
        self._next_event = 0  # next slot whose events fire (when its send tick comes)
        self._last_audible = -1  # newest slot with audible audio or markers
        self._behind_checked = 0  # slots below this were checked for active_frames_missing
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
        self.delay_frames = frames_needed(self._margin.margin_ms(), self.lookahead_frames)
        self._plan(may_grow=False)
        max_delay = self.lookahead_frames + math.ceil(max(MAX_MARGIN_MS, self.latency.margin_start_ms) / FRAME_MS)
        self._ring = OutputRing(self.options.ring_frames + max_delay)
        self.clock = SessionClock.start_now(self._now, self._sleep)
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
        last_needed = self._ring.get(tick + self.lookahead_frames)  # the audio this frame waited for
        if last_needed is not None and last_needed.taken_at:
            self._margin.record((self._now() - last_needed.taken_at) * 1000)

    def _refile_frame(self, tick: int, frame: AvatarFrame) -> None:
        """A frame rendered again after an interrupt (mouth closed): it replaces the slot's, no render time."""
        self._ring.set_frame(tick, frame)

    # -- latency -------------------------------------------------------------------------
    @property
    def margin_ms(self) -> float:
        """The render margin in effect (ms): ``40 * (D - lookahead) - phase``."""
        return (self.delay_frames - self.lookahead_frames) * FRAME_MS - self.phase * 1000

    @property
    def delay_ms(self) -> float:
        """Lip-sync delay (ms): a slot's audio taken -> that audio and its frame sent."""
        return self.delay_frames * FRAME_MS - self.phase * 1000

    def _plan(self, may_grow: bool) -> None:
        """Set ``phase`` (and, if ``may_grow``, ``D``) so that the delay is lookahead + margin (``pacing.py``)."""
        plan = plan_delay(self._margin.margin_ms(), self.lookahead_frames, self.delay_frames, may_grow)
        self.delay_frames, self.phase = plan.delay_frames, plan.phase

    def _nothing_audible_in_flight(self) -> bool:
        """Growing ``D`` at a send tick makes every sender send one slot again: the one it sent at
        this tick or, if it reads ``D`` after the change, the one of the tick before. Only while both
        and every taken, unsent slot are quiet and carry no markers (called once per send tick)."""
        return self._last_audible < self._next_event - 2 and not self._pending_output_markers

    @property
    def live_backlog_target_s(self) -> float:
        """Live input (a microphone) standing queued beyond this for a second is trimmed in its quiet
        frames: what the measured arrival jitter needs plus one 20 ms packet (``classic``: 100 ms)."""
        if self.latency.start_threshold_ms is not None:
            return CLASSIC_LIVE_BACKLOG_S
        return (self._arrival.jitter_ms() + LIVE_PACKET_MS) / 1000

    def input_dropped(self, samples: int) -> None:
        """A live input dropped ``samples`` of the open utterance on arrival (its backlog trimmed)."""
        self._arrival.skip(samples)

    def latency_stats(self) -> dict[str, Any]:
        r50, r99 = self._margin.quantile_ms(50), self._margin.quantile_ms(99)
        return {"preset": self.latency.name, "delay_ms": round(self.delay_ms, 1),
                "margin_ms": round(self.margin_ms, 1), "delay_frames": self.delay_frames,
                "lookahead_frames": self.lookahead_frames, "phase_ms": round(self.phase * 1000, 1),
                "render_ms_p50": None if r50 is None else round(r50, 1),
                "render_ms_p99": None if r99 is None else round(r99, 1),
                "input_jitter_ms": round(self._arrival.jitter_ms(), 1)}

    def now(self) -> float:
        """The session's clock (monotonic seconds, the one passed in): viewers stamp their state changes with it."""
        return self._now()

    def touch(self) -> None:
        self.last_activity = self._now()

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
        now = self._now()
        self._arrival.observe(now, utterance, int(np.size(pcm16k)))
        if utterance not in self._pushed_at and len(self._pushed_at) < MAX_TIMED_UTTERANCES:
            self._pushed_at[utterance] = now
        return utterance

    def end_utterance(self) -> int | None:
        self.touch()
        return self._buffer.end_utterance()

    @property
    def queued_seconds(self) -> float:
        return self._buffer.queued_samples / self._buffer.sample_rate

    def interrupt(self) -> int:
        """Drop queued audio and the engine's pending motion together; returns dropped samples.

        Audio already taken but not yet sent (the lip-sync delay) is silenced too, and its frames
        already rendered are rendered again with the mouth closed (``ClosedMouthRerender`` engines:
        the viewer sees the mouth close at once, not after the delay); each interrupted utterance
        gets ``playback_finished {interrupted: true}`` at the next tick.
        """
        self.touch()
        dropped = self._buffer.interrupt()
        _, markers = self._buffer.take(0)
        utterances = {m.utterance for m in markers}
        first_unsent = self._next_event
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
        if not self._closed:  # rendered, not sent: rendered again with the mouth closed (engines that can)
            self._pump.interrupt(rerender_from=first_unsent)
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
        return [{"id": v.id, "transport": v.transport, "state": v.state.value, **v.stats().details}
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
            "frames_rerendered": pump.frames_rerendered,
            "engine_ms_per_tick": pump.engine_ms / max(1, st.ticks), "latency": self.latency_stats(),
        }

    # -- the clock -----------------------------------------------------------------------
    async def _run_clock(self) -> None:
        """Take slot ``n`` at ``frame_time(n) + phase`` (whatever the engine is doing, so the audio
        never has gaps) and wake the engine; at each clock tick ``m`` emit the events of slot
        ``m - D``, the one being sent."""
        clock = self.clock
        assert clock is not None
        while True:
            slept_at = clock.now()
            await clock.sleep_until(next_wake(clock.t0, self._next_tick, self._next_event, self.delay_frames,
                                              self.phase))
            self._on_wake(clock.now(), slept_at)

    def _on_wake(self, now: float, slept_at: float) -> None:
        """One wake-up of the clock at ``now`` (``pacing.wake``): take what is due, send what is due."""
        clock = self.clock
        assert clock is not None
        step = wake(now, slept_at, clock.t0, self._next_tick, self._next_event, self.delay_frames, self.phase)
        if step.late:  # a take more than a frame late (not one made due by a lower phase: the margin rose)
            self.stats.late_ticks += 1
        for n in step.take:
            self._take(n, now)
        if step.take:
            self._pump.wake()
        for c in step.send:
            self._on_sent(c)
            self._next_event = c + 1
        if not step.send and self._pending_output_markers and step.sending < 0:
            self._on_sent(step.sending)  # an interrupt before the first slot was sent
        self._plan(may_grow=bool(step.send) and self._nothing_audible_in_flight())

    def _take(self, n: int, now: float) -> None:
        """Take slot ``n`` of the playback buffer into the ring and hand its audio to the engine."""
        start = None
        waiting = self._buffer.waiting_utterance
        if waiting is not None and self.latency.start_threshold_ms is None:
            start = self._arrival.start_samples(now, waiting, SAMPLES_PER_FRAME)
        block = self._buffer.take_block(SAMPLES_PER_FRAME, start)
        # nobody watching and nothing playing: no engine work
        self._rendering = bool(self._viewers) or block.utterance is not None
        self._ring.put(OutputSlot(n, block.samples, block.markers, block.utterance, block.position, taken_at=now,
                                  rendered=self._rendering))
        if block.markers or (block.utterance is not None
                             and float(np.sqrt(np.mean(np.square(block.samples, dtype=np.float64)))) >= QUIET_RMS):
            self._last_audible = n
        if self._rendering:
            self._pump.submit(n, block.samples)
            self.stats.active_ticks += 1
        self._next_tick = n + 1
        self.stats.ticks += 1

    def _count_engine_behind(self, upto: int) -> None:
        """``active_frames_missing``: slots whose frame was not filed ``ENGINE_BEHIND_S`` after the
        last audio it needs was taken (the fixed margin every frame had before margins were measured),
        so the count says the engine fell behind, not that a measured margin was tight."""
        now = self._now()
        while self._behind_checked <= upto:
            c = self._behind_checked
            needed = self._ring.get(c + self.lookahead_frames)
            if needed is not None and now - needed.taken_at < ENGINE_BEHIND_S - 0.001:
                return
            slot = self._ring.get(c)
            if slot is not None and slot.rendered and slot.frame is None:
                self.stats.active_frames_missing += 1
            self._behind_checked = c + 1

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
                        observe(self._now() - pushed)
            else:
                self._sent_position.pop(m.utterance, None)
                self._pushed_at.pop(m.utterance, None)
                self.events.emit(EventType.PLAYBACK_FINISHED, {
                    "utterance": m.utterance,
                    "playback_position": round(m.position / self._buffer.sample_rate, 3),
                    "interrupted": m.kind == "interrupted"}, c)
        self._count_engine_behind(c)
        if slot is None:
            return
        frame = slot.frame
        if frame is None:
            self.stats.frames_missing += 1
        speaking = bool(frame.speaking) if frame is not None else self._speaking
        if speaking != self._speaking:
            self._speaking = speaking
            self.events.emit(EventType.SPEAKING_STARTED if speaking else EventType.SPEAKING_STOPPED, {}, c)
        rms = float(np.sqrt(np.mean(slot.audio.astype(np.float64) ** 2)))
        self.stats.sent_log.append((c, time.time(), rms, frame.mouth_open if frame else None, frame is not None))

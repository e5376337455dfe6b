"""Read a co-located session's output directly, frame by frame, on its clock (no WebRTC).

When the agent runs in the same process as the avatar server (the quick-start lite server of
``avatarstream.integrations.local_server``), encoding video for WebRTC and decoding it again is
wasted work. ``SessionReader`` is a transport in the sense of ``realtime/transports/base.py``: it
registers as a ``Viewer`` and reads through ``SessionOutput`` only (``video_for``, ``audio_for``,
the event queue), so it needs no change to the session.

At clock tick ``m`` the session sends content frame ``c = m - D`` to every viewer; the reader
returns that frame a few milliseconds after the tick (so the session's own clock task has filed
the frame's events first), with the 40 ms of 16 kHz audio that belongs to it and the events the
session emitted for it. A reader that falls behind catches up frame by frame while the frames
are still in the session's output ring and skips ahead beyond that.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarstream.realtime.transports.base import SessionOutput, ViewerState, ViewerStats

TRANSPORT = "inprocess"
READ_AFTER_TICK_S = 0.008  # read a frame this long after its send tick: its events are filed by then
MAX_LAG_FRAMES = 16  # further behind than this, skip to the current frame


@dataclass(frozen=True)
class AvatarTick:
    """One content frame as a viewer receives it."""

    index: int  # content frame index c (the session's clock sends it at tick c + D)
    image: np.ndarray | None  # H x W x 3 uint8 RGB; None until the engine rendered its first frame
    audio16k: np.ndarray | None  # float32[640], the audio of this frame; None if it left the ring
    mouth_open: float  # the engine's own mouth-opening estimate (diagnostics)
    events: list[dict[str, Any]] = field(default_factory=list)  # {"type", ..., "frame", "wall_time"}


class SessionClosed(Exception):
    """The session ended while it was being read."""


class SessionReader:
    """A ``Viewer`` of transport ``inprocess`` that returns the session's frames one by one."""

    def __init__(self, session: SessionOutput, transport: str = TRANSPORT) -> None:
        """``transport``: the name the session's viewer list, admission and ``/metrics`` show (a
        LiveKit publisher reading the session reads it as ``livekit``)."""
        self.transport = transport
        self.id = f"{transport}-{secrets.token_hex(4)}"
        self.session = session
        self.frames_read = 0
        self.frames_skipped = 0
        self._state = ViewerState.CONNECTING
        self._since = session.now()
        self._events: asyncio.Queue | None = None
        self._pending_events: list[dict[str, Any]] = []
        self._tick: int | None = None
        self._ended = False

    # -- Viewer ------------------------------------------------------------------------
    @property
    def state(self) -> ViewerState:
        return self._state

    @property
    def state_since(self) -> float:
        return self._since

    def stats(self) -> ViewerStats:
        """Frames this reader fell behind the clock by and jumped over count as skipped, as a WebRTC
        sender's do."""
        return ViewerStats(video_frames_sent=self.frames_read, video_frames_skipped=self.frames_skipped,
                           details={"frames_read": self.frames_read, "frames_skipped": self.frames_skipped})

    async def close(self) -> None:
        if self._state == ViewerState.CLOSED:
            return
        self._state, self._since = ViewerState.CLOSED, time.monotonic()
        if self._events is not None:
            self.session.unsubscribe_events(self._events)
            self._events = None
        self.session.detach_viewer(self)

    # -- reading -----------------------------------------------------------------------
    async def open(self) -> None:
        """Attach to the session (may raise its viewer-limit error) and wait for its clock."""
        self.session.attach_viewer(self)
        self._events = self.session.subscribe_events()
        await self.session.started.wait()
        if self.session.closed or self.session.clock is None:
            await self.close()
            raise SessionClosed(f"session {self.session.id} has ended")
        self._state, self._since = ViewerState.CONNECTED, time.monotonic()

    def skip_to_now(self) -> int:
        """Read the current frame next, skipping those the reader fell behind by; returns how many."""
        clock = self.session.clock
        if clock is None or self._tick is None:
            return 0
        lag = max(0, clock.current_frame() - 1 - self._tick)
        self._tick += lag
        self.frames_skipped += lag
        return lag

    async def next(self) -> AvatarTick:
        """The next content frame, at the time the session sends it. Raises ``SessionClosed``."""
        s, clock = self.session, self.session.clock
        if clock is None or self._state != ViewerState.CONNECTED:
            raise SessionClosed("the reader is not open")
        while True:
            self._tick = clock.current_frame() if self._tick is None else self._tick + 1
            lag = clock.current_frame() - self._tick
            if lag > MAX_LAG_FRAMES:
                self.frames_skipped += lag
                self._tick += lag
            await clock.sleep_until(clock.frame_time(self._tick) + READ_AFTER_TICK_S)
            self._drain_events()
            if self._ended or s.closed:
                raise SessionClosed(f"session {s.id} has ended")
            c = self._tick - s.delay_frames
            frame, audio = s.video_for(c), s.audio_for(c)
            if frame is not None or audio is not None:  # both None before the clock's first sent frame
                break
        events = [e for e in self._pending_events if e.get("frame", c) <= c]
        self._pending_events = [e for e in self._pending_events if e.get("frame", c) > c]
        self.frames_read += 1
        if frame is None:  # the audio is sent already, the engine's first frame is still being rendered
            return AvatarTick(c, None, audio, 0.0, events)
        return AvatarTick(c, frame.image, audio, float(frame.mouth_open), events)

    def _drain_events(self) -> None:
        q = self._events
        while q is not None and not q.empty():
            ev = q.get_nowait()
            if ev is None:
                self._ended = True
                return
            self._pending_events.append({"type": ev.type, **ev.data, "frame": ev.frame, "wall_time": ev.wall_time})

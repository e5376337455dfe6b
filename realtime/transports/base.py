"""The transport contract: what a transport reads from a session, and what a viewer is.

A transport (WebRTC, the agent WebSocket, an in-memory sink in the tests, a LiveKit publisher)
carries one session's output to one remote party and, optionally, audio back in. It needs no
edit to the session: it reads through ``SessionOutput`` and registers a ``Viewer``. This module is
the one part of ``realtime/transports/`` the session layer imports; it imports no transport, and
what a viewer reports crosses it as a typed ``ViewerStats``, never as a transport's own keys.

Time model (see ``realtime/clock.py``): at clock tick ``m`` a sender sends content frame
``m - delay_frames``: ``video_for(m - D)`` and ``audio_for(m - D)`` (40 ms at 16 kHz), so audio and
video of one content frame leave at the same tick. Events arrive at the tick that sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from avatarstream.engines.base import AvatarFrame
from avatarstream.realtime.clock import SessionClock
from avatarstream.realtime.session.events import SessionEvent
from avatarstream.realtime.session.latency import LatencySettings


class ViewerState(str, Enum):
    CONNECTING = "connecting"  # negotiated, media not flowing yet (ICE/DTLS under way)
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class ViewerStats:
    """What a viewer reports. The typed fields mean the same for every transport and are what the
    session layer and ``/metrics`` read; ``details`` are the transport's own diagnostics
    (JSON-serialisable, shown as they are by the session's viewer list, read by no logic)."""

    video_frames_sent: int = 0
    # frames due at a clock tick that the viewer never sent because it fell behind the clock (a sender
    # or reader late on a loaded machine): evidence of saturation for admission
    video_frames_skipped: int = 0
    # ticks, on time, whose frame the viewer held back because its decoder lacked the frame it references (an
    # inter frame of a shared encoder, after the viewer joined or skipped): it waits for a keyframe. With
    # video_frames_skipped, every tick a viewer did not send
    video_keyframe_waits: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Viewer(Protocol):
    """One remote party attached to a session through some transport."""

    id: str
    transport: str  # "webrtc", "agent", ...

    @property
    def state(self) -> ViewerState: ...

    @property
    def state_since(self) -> float:
        """The session's clock (``ServedSession.now``) at the last state change (for connect deadlines)."""

    def stats(self) -> ViewerStats: ...

    async def close(self) -> None:
        """Hang up; idempotent. The session calls it when it closes."""


@runtime_checkable
class SessionOutput(Protocol):
    """What a transport reads from a session."""

    id: str
    size: int  # frames are size x size
    fps: int
    delay_frames: int  # D: lip-sync delay between taking audio and sending it
    started: asyncio.Event  # set once the clock runs
    clock: SessionClock | None  # None until started

    @property
    def closed(self) -> bool: ...

    def video_for(self, content_index: int) -> AvatarFrame | None:
        """The frame of that content index, or the newest one before it (a late frame repeats)."""

    def audio_for(self, content_index: int) -> np.ndarray | None:
        """float32[640], 16 kHz, of that content index; None if it fell out of the ring."""

    def subscribe_events(self) -> asyncio.Queue[SessionEvent | None]: ...

    def unsubscribe_events(self, q: asyncio.Queue[SessionEvent | None]) -> None: ...

    def attach_viewer(self, viewer: Viewer) -> None: ...

    def detach_viewer(self, viewer: Viewer) -> None: ...

    @property
    def viewers(self) -> list[Viewer]: ...

    def touch(self) -> None:
        """Count as activity for the idle timeout."""

    def now(self) -> float:
        """The session's clock, monotonic seconds (what viewers stamp ``state_since`` with)."""


@runtime_checkable
class SessionInput(Protocol):
    """What a transport that carries speech in (microphone, agent audio) may do."""

    latency: LatencySettings  # e.g. how many packets a microphone's receiver may hold

    def push_audio(self, pcm16k: np.ndarray) -> int: ...

    def end_utterance(self) -> int | None: ...

    def interrupt(self) -> int: ...

    @property
    def queued_seconds(self) -> float: ...

    @property
    def live_backlog_target_s(self) -> float:
        """Live input standing queued beyond this (for a second) is trimmed in its quiet frames."""

    def input_dropped(self, samples: int) -> None:
        """A live input dropped ``samples`` on arrival (so later arrivals are not taken for late)."""

    async def set_controls_async(self, controls: Mapping[str, Any]) -> dict[str, str]: ...


@runtime_checkable
class ServedSession(SessionOutput, SessionInput, Protocol):
    """A session as a two-way transport (media out, speech in) sees it."""

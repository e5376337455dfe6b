"""A session's avatar in a LiveKit room: joins with the agent's token, publishes through ``AvatarRunner``.

``LiveKitViewer`` is the session's viewer of transport ``livekit`` (a ``SessionReader``, so admission,
the viewer limit and ``/metrics`` count it like any viewer). ``join``:

1. attaches to the session (admission may refuse: 503 / 409 before anything joins);
2. connects an ``rtc.Room`` with the avatar's token (the only network glue here: ``room.connect``;
   the manual check against ``livekit-server --dev`` is in docs/agent.md);
3. runs LiveKit Agents' own avatar side: ``DataStreamAudioReceiver`` (the agent's ``lk.audio_stream``
   byte streams in, ``lk.clear_buffer`` answered, ``lk.playback_started`` / ``lk.playback_finished``
   sent back) and ``AvatarRunner`` (``avatar_audio`` + ``avatar_video`` through ``rtc.AVSynchronizer``)
   over ``SessionVideoGenerator`` (``generator.py``), the same generator the agent-side plugin runs.

It leaves the room when the agent leaves it, when the room disconnects, or when the session ends
(the session closes its viewers); ``close`` is idempotent. ``room_factory`` lets the tests hand in a
stand-in for the room's network calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner, DataStreamAudioReceiver

from avatarstream.integrations.session_reader import SessionReader
from avatarstream.realtime.session.session import ViewerLimitError
from avatarstream.realtime.errors import Conflict, ServerError
from avatarstream.realtime.transports.base import ServedSession, ViewerStats
from avatarstream.realtime.transports.livekit.generator import SessionVideoGenerator
from avatarstream.realtime.transports.livekit.join import JoinRequest

log = logging.getLogger(__name__)
TRANSPORT = "livekit"


class RoomUnreachable(ServerError):
    """The LiveKit server refused the token or could not be reached."""

    status = 502
    code = "livekit_unreachable"


class LiveKitViewer(SessionReader):
    """The session's avatar participant in one LiveKit room (see the module docstring)."""

    def __init__(self, session: ServedSession, request: JoinRequest,
                 room_factory: Callable[[], Any] = rtc.Room) -> None:
        super().__init__(session, transport=TRANSPORT)
        self.request = request
        self.room = room_factory()
        self.generator = SessionVideoGenerator(session, sample_rate=request.sample_rate, reader=self)
        self.runner: AvatarRunner | None = None
        self._closing: asyncio.Task | None = None
        self.left_because: str | None = None

    def stats(self) -> ViewerStats:
        read = super().stats()
        return replace(read, details={
            **read.details, "agent_identity": self.request.agent_identity,
            "frames_published": self.generator.frames_out, "speech_samples": self.generator.speech_samples_out,
            "interruptions": self.generator.interruptions, "left_because": self.left_because})

    async def join(self, timeout_s: float) -> None:
        try:
            await self.open()
        except ViewerLimitError as exc:
            raise Conflict(str(exc)) from None
        try:
            await asyncio.wait_for(self._join_room(), timeout_s)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise RoomUnreachable(f"the avatar did not join the LiveKit room within {timeout_s:g} s "
                                      f"(is agent {self.request.agent_identity!r} in it?)") from None
            if isinstance(exc, rtc.ConnectError):
                raise RoomUnreachable(f"could not join the LiveKit room at {self.request.url}: {exc}") from None
            raise

    async def _join_room(self) -> None:
        room = self.room
        room.on("participant_disconnected", self._on_participant_left)
        room.on("disconnected", self._on_disconnected)
        if not room.isconnected():
            await room.connect(self.request.url, self.request.token)  # the network glue
        receiver = DataStreamAudioReceiver(room, sender_identity=self.request.agent_identity)
        size = self.session.size
        self.runner = AvatarRunner(room, audio_recv=receiver, video_gen=self.generator,
                                   options=AvatarOptions(video_width=size, video_height=size,
                                                         video_fps=self.session.fps,
                                                         audio_sample_rate=self.request.sample_rate,
                                                         audio_channels=1))
        await self.runner.start()  # waits for the agent participant
        log.info("session %s: avatar joined LiveKit room %s for agent %s", self.session.id,
                 getattr(room, "name", "?"), self.request.agent_identity)

    def _on_participant_left(self, participant: Any) -> None:
        if getattr(participant, "identity", None) == self.request.agent_identity:
            self._leave("agent_left")

    def _on_disconnected(self, *_: Any) -> None:
        self._leave("room_disconnected")

    def _leave(self, reason: str) -> None:
        if self._closing is None:
            self.left_because = reason
            self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Leave the room and detach from the session (the session calls it when it ends)."""
        if self.left_because is None and self.session.closed:
            self.left_because = "session_ended"
        await super().close()  # detach first: the session stops counting this viewer at once
        runner, self.runner = self.runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.aclose()
        room = self.room
        with contextlib.suppress(Exception):
            room.off("participant_disconnected", self._on_participant_left)
            room.off("disconnected", self._on_disconnected)
        if room.isconnected():
            with contextlib.suppress(Exception):
                await room.disconnect()


async def join(session: ServedSession, request: JoinRequest, *, timeout_s: float,
               room_factory: Callable[[], Any] = rtc.Room) -> LiveKitViewer:
    """Join ``request``'s room as ``session``'s avatar; raises ``Conflict`` (viewer limit),
    ``SessionLimitError`` (admission), ``RoomUnreachable``."""
    viewer = LiveKitViewer(session, request, room_factory)
    await viewer.join(timeout_s)
    return viewer

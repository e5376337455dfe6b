"""``AvatarSession``: an avatarstream avatar in a LiveKit Agents voice agent, the vendors' contract.

Switching from a hosted vendor is one line::

    avatar = tavus.AvatarSession(...)                                  # before
    avatar = avatarstream.AvatarSession(image="astronaut")             # in process (lite, nothing downloaded)
    avatar = avatarstream.AvatarSession(url="https://avatars.example", api_key="...")  # our server
    await avatar.start(session, room=ctx.room)

Two media paths behind one interface:

* ``InProcessMedia`` (no ``url``; bitHuman's local pattern): an in-process server session
  (``InProcessAvatar``), the agent's TTS routed to it with ``QueueAudioOutput``, published from the
  agent's own participant by ``AvatarRunner`` over ``SessionVideoGenerator``.
* ``ServerMedia`` (``url``): a session on an avatarstream server, which joins the room as its own
  participant (``POST /v1/sessions/{id}/livekit`` with a token minted here, ``lk.publish_on_behalf``
  = the agent) and runs the same generator there; the TTS goes to it with
  ``DataStreamAudioOutput(destination_identity=...)``. The LiveKit API key and secret stay here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from livekit import rtc
from yarl import URL
from livekit.agents.voice.avatar import (
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioOutput,
    QueueAudioOutput,
)
from livekit.agents.voice.avatar import AvatarSession as LiveKitAvatarSession

from avatarstream.engines.base import FPS
from avatarstream.integrations.inprocess import InProcessAvatar
from avatarstream.integrations.livekit.token import avatar_token
from avatarstream.integrations.local_server import LocalAvatarServer
from avatarstream.realtime.client import AvatarClient, ClientError
from avatarstream.realtime.transports.livekit.generator import SessionVideoGenerator
from avatarstream.realtime.transports.livekit.join import DEFAULT_SAMPLE_RATE, JoinRequest

if TYPE_CHECKING:
    from livekit.agents import AgentSession

DEFAULT_AVATAR_IDENTITY = "avatarstream-avatar"


@dataclass(frozen=True)
class AvatarSpec:
    """What the avatar looks like and renders at (the sessions API's fields)."""

    image: str | Path | bytes = "astronaut"
    engine: str = "lite"
    size: int = 512
    controls: Mapping[str, Any] = field(default_factory=dict)
    sample_rate: int = DEFAULT_SAMPLE_RATE  # the agent's TTS audio goes to the avatar at this rate


class AvatarMedia(Protocol):
    """One media path: start routes the agent's audio to the avatar and gets the avatar published."""

    async def start(self, agent_session: "AgentSession", room: rtc.Room) -> None: ...

    def identity(self, room: rtc.Room | None) -> str: ...

    async def aclose(self) -> None: ...


class InProcessMedia:
    """The engine in the agent's process; the agent's participant publishes the avatar."""

    def __init__(self, spec: AvatarSpec, server: LocalAvatarServer | None = None) -> None:
        self.spec = spec
        self.avatar = InProcessAvatar(image=spec.image, engine=spec.engine, size=spec.size,
                                      controls=spec.controls, server=server)
        self.audio: QueueAudioOutput | None = None
        self.generator: SessionVideoGenerator | None = None
        self.runner: AvatarRunner | None = None

    def identity(self, room: rtc.Room | None) -> str:
        return room.local_participant.identity if room is not None else ""

    async def start(self, agent_session: "AgentSession", room: rtc.Room) -> None:
        session = await self.avatar.open()
        # playback_started when the runner publishes the first audio, not when the TTS hands it over
        self.audio = QueueAudioOutput(sample_rate=self.spec.sample_rate, wait_playback_start=True)
        agent_session.output.replace_audio_tail(self.audio)
        self.generator = SessionVideoGenerator(session, sample_rate=self.spec.sample_rate)
        await self.generator.reader.open()  # attach now: the session renders and admission decides here
        self.runner = AvatarRunner(room, audio_recv=self.audio, video_gen=self.generator,
                                   options=AvatarOptions(video_width=session.size, video_height=session.size,
                                                         video_fps=FPS, audio_sample_rate=self.spec.sample_rate,
                                                         audio_channels=1))
        await self.runner.start()

    async def aclose(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.aclose()
        if self.generator is not None:
            await self.generator.aclose()
        await self.avatar.close()


class ServerMedia:
    """A session on an avatarstream server that joins the room as its own participant."""

    def __init__(self, spec: AvatarSpec, *, url: str, api_key: str | None, avatar_identity: str,
                 livekit_url: str | None, livekit_api_key: str | None, livekit_api_secret: str | None) -> None:
        self.spec = spec
        self.client = AvatarClient(url, api_key=api_key)
        self.avatar_identity = avatar_identity
        self.livekit_url = livekit_url
        self.livekit_api_key = livekit_api_key
        self.livekit_api_secret = livekit_api_secret
        self.join: JoinRequest | None = None

    def identity(self, room: rtc.Room | None) -> str:
        return self.avatar_identity

    def join_request(self, room: rtc.Room) -> JoinRequest:
        """The avatar's room, token (``lk.publish_on_behalf`` = the agent) and audio rate."""
        livekit_url = self.livekit_url or os.environ.get("LIVEKIT_URL")
        if not livekit_url:
            raise ValueError("the LiveKit server's URL is needed (livekit_url= or LIVEKIT_URL)")
        token = avatar_token(api_key=self.livekit_api_key or os.environ.get("LIVEKIT_API_KEY", ""),
                             api_secret=self.livekit_api_secret or os.environ.get("LIVEKIT_API_SECRET", ""),
                             room=room.name, identity=self.avatar_identity,
                             agent_identity=room.local_participant.identity)
        return JoinRequest(livekit_url, token, room.local_participant.identity, self.spec.sample_rate)

    async def start(self, agent_session: "AgentSession", room: rtc.Room) -> None:
        self.join = self.join_request(room)
        info = await self.client.create_session(image=self.spec.image, engine=self.spec.engine, size=self.spec.size,
                                                controls=dict(self.spec.controls) or None)
        # the server answers once its avatar is in the room and waiting for this agent's audio
        route = self.client.base_url.join(URL(f"/v1/sessions/{info.id}/livekit"))
        async with self.client.http.post(route, json=self.join.to_json(),
                                         headers={"Authorization": f"Bearer {info.token}"}) as resp:
            if resp.status >= 400:
                raise ClientError(resp.status, await resp.text())
        # wait_playback_start: the agent registers lk.playback_started, which the avatar's receiver sends
        agent_session.output.replace_audio_tail(DataStreamAudioOutput(
            room, destination_identity=self.avatar_identity, sample_rate=self.spec.sample_rate,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO, wait_playback_start=True))

    async def aclose(self) -> None:
        await self.client.close(delete_session=self.client.session is not None)


class AvatarSession(LiveKitAvatarSession):
    """LiveKit Agents' ``AvatarSession`` for an avatarstream avatar (see the module docstring).

    ``url`` given: server mode (``api_key`` for the avatarstream server; ``livekit_url``,
    ``livekit_api_key``, ``livekit_api_secret`` default to ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` /
    ``LIVEKIT_API_SECRET`` and only mint the avatar's token). No ``url``: in process (``local_server``:
    a ``LocalAvatarServer`` to share between agents of one process)."""

    def __init__(self, *, image: str | Path | bytes = "astronaut", engine: str = "lite", size: int = 512,
                 controls: Mapping[str, Any] | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE,
                 url: str | None = None, api_key: str | None = None,
                 avatar_identity: str = DEFAULT_AVATAR_IDENTITY, livekit_url: str | None = None,
                 livekit_api_key: str | None = None, livekit_api_secret: str | None = None,
                 local_server: LocalAvatarServer | None = None) -> None:
        super().__init__()
        if url is not None and local_server is not None:
            raise ValueError("give url (an avatarstream server) or local_server (one in this process), not both")
        if sample_rate % FPS:
            raise ValueError(f"sample_rate {sample_rate} Hz is not a whole number of samples per 40 ms frame")
        spec = AvatarSpec(image, engine, size, dict(controls or {}), sample_rate)
        self.media: AvatarMedia = (
            InProcessMedia(spec, local_server) if url is None else
            ServerMedia(spec, url=url, api_key=api_key, avatar_identity=avatar_identity, livekit_url=livekit_url,
                        livekit_api_key=livekit_api_key, livekit_api_secret=livekit_api_secret))

    @property
    def avatar_identity(self) -> str:
        return self.media.identity(self._room)

    @property
    def provider(self) -> str:
        return "avatarstream"

    async def start(self, agent_session: "AgentSession", room: rtc.Room) -> None:
        try:
            await self.media.start(agent_session, room)
        except BaseException:
            await self.media.aclose()
            raise
        await super().start(agent_session, room)

    async def aclose(self) -> None:
        await self.media.aclose()
        await super().aclose()


__all__ = ["AvatarSession", "AvatarSpec", "InProcessMedia", "ServerMedia", "ClientError"]

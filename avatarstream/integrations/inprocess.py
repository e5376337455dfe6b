"""The in-process engine runner shared by the framework adapters (Pipecat, LiveKit Agents).

``InProcessAvatar`` opens one avatar session in the agent's own process: a private
``LocalAvatarServer`` (the real server application on 127.0.0.1, unless the caller hands one in),
one session created through the sessions API (``AvatarClient``: the same validation of image,
engine, size and controls as a remote server), and the live session object, which an adapter reads
and feeds directly (``SessionReader``, ``ServedSession``) instead of through WebRTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avatarstream.integrations.local_server import LocalAvatarServer
from avatarstream.realtime.client import AvatarClient, ClientError, SessionInfo
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.session.session import AvatarSession


class InProcessAvatar:
    """``session = await InProcessAvatar(image=..., engine=...).open()`` ... ``await avatar.close()``."""

    def __init__(self, *, image: str | Path | bytes = "astronaut", engine: str = "lite", size: int = 512,
                 controls: Mapping[str, Any] | None = None, server: LocalAvatarServer | None = None,
                 config: ServerConfig | None = None) -> None:
        self.image, self.engine, self.size = image, engine, size
        self.controls = dict(controls or {})
        self.server: LocalAvatarServer | None = server
        self._own_server = server is None
        self._config = config
        self.client: AvatarClient | None = None
        self.info: SessionInfo | None = None
        self.session: AvatarSession | None = None

    async def open(self) -> AvatarSession:
        """Start the server (loads and warms the engine) if this runner owns it, create the session."""
        if self.session is not None:
            return self.session
        if self.server is None:
            self.server = LocalAvatarServer(self._config, engine=self.engine)
        url = await self.server.start()
        self.client = AvatarClient(url, api_key=self.server.config.api_key)
        self.info = await self.client.create_session(image=self.image, engine=self.engine, size=self.size,
                                                     controls=self.controls or None)
        session = self.server.session(self.info.id)
        if session is None:
            raise ClientError(0, f"session {self.info.id} is not in this process")
        self.session = session
        return session

    async def close(self) -> None:
        """Delete the session; stop the server if this runner started it. Idempotent."""
        client, self.client = self.client, None
        if client is not None:
            await client.close(delete_session=self.info is not None)
        server, self.server = self.server, None
        if server is not None and self._own_server:
            await server.stop()
        self.session = None

    async def __aenter__(self) -> "InProcessAvatar":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

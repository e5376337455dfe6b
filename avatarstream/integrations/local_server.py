"""An avatarstream server inside the agent's own process, for a quick start without ``avatar serve``.

``LocalAvatarServer`` runs the real application (``realtime/http/app.py`` ``create_app`` with a
``ServerConfig``) on 127.0.0.1 at a free port. Agents talk to it exactly as to a remote server
(``url`` for ``AvatarClient``); being in the same process, they may also read a session's
output directly (``session()`` + ``avatarstream.integrations.session_reader``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.session.session import AvatarSession


class LocalAvatarServer:
    """``async with LocalAvatarServer() as server: ... server.url ...``; stops every session on exit."""

    def __init__(self, config: ServerConfig | None = None, **settings: Any) -> None:
        base = config or ServerConfig()
        # loopback and a free port, whatever the config says: this server is private to the process
        self.config = dataclasses.replace(base, **{**settings, "host": "127.0.0.1", "port": 0})
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the local server is not started: call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def registry(self) -> SessionRegistry:
        if self._runner is None:
            raise RuntimeError("the local server is not started: call start() first")
        return self._runner.app[REGISTRY]

    def session(self, session_id: str) -> AvatarSession | None:
        """The live session object of ``session_id`` (for in-process reading)."""
        return self.registry.get(session_id)

    async def start(self) -> str:
        """Load the engine (warm-up included), listen; returns the URL."""
        if self._runner is not None:
            return self.url
        runner = web.AppRunner(create_app(self.config), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "LocalAvatarServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

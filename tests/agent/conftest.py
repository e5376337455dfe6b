"""A real avatar server (aiohttp on a random port, lite engine, sessions API) for the agent tests."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.session.registry import SessionRegistry


@dataclass
class AgentServer:
    url: str
    registry: SessionRegistry
    http: aiohttp.ClientSession

    async def create(self, **body) -> dict:
        body.setdefault("size", 256)
        async with self.http.post(f"{self.url}/v1/sessions", json=body) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def _engine_loader():
    """The lite engine; AGENT_TEST_ENGINE_LOADER=module:function swaps it for local debugging."""
    spec = os.environ.get("AGENT_TEST_ENGINE_LOADER")
    if not spec:
        return None
    import importlib

    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


async def start_server(idle_timeout: float = 60.0, max_sessions: int = 3, **overrides):
    """The real application (``realtime.http.app.create_app``) on 127.0.0.1, random port."""
    # admission by measured load is tested in tests/realtime/test_capacity.py; here it would make the
    # API tests depend on how busy the machine is
    overrides.setdefault("admission", False)
    config = ServerConfig(engine="lite", size=256, max_sessions=max_sessions, idle_timeout=idle_timeout,
                          port=0, engine_loader=_engine_loader(), **overrides)
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()  # runs on_startup: loads the engine, starts the idle reaper
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    http = aiohttp.ClientSession()
    server = AgentServer(f"http://127.0.0.1:{port}", app[REGISTRY], http)

    async def stop() -> None:
        await http.close()
        await runner.cleanup()

    return server, stop


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    srv, stop = await start_server()
    yield srv
    await stop()


@pytest.fixture
def make_server():
    """``await make_server(idle_timeout=..., max_sessions=...)`` -> (server, async stop)."""
    return start_server


def session_tasks(session_id: str) -> list[asyncio.Task]:
    """Live asyncio tasks that belong to one session (its own tasks and its agent socket's)."""
    return [t for t in asyncio.all_tasks() if session_id in t.get_name() and not t.done()]


@pytest.fixture
def tasks_of():
    return session_tasks

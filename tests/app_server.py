"""One aiohttp application served on a free loopback port for a test, with a client bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import ClientSession, web


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[ClientSession]:
    """Serve ``app`` on 127.0.0.1 (a port the system picks); yields a client whose base URL is that server.
    The server is cleaned up on the way out."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with ClientSession(f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        await runner.cleanup()

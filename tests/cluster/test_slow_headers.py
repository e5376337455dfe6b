"""Slow clients cannot hold connections: a request whose headers have not arrived within the
header timeout (default ``ServerConfig.header_timeout``, 5 s) is dropped, on the server and on the
cluster front, whether the client sends nothing, half a request line, or trickles header lines.
50 such sockets on loopback against each, with a 1 s timeout so the test stays short."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aiohttp import web

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app

# on the async tests only: a sync test under a module-wide asyncio mark makes pytest warn
module_loop = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_S = 1.0
SOCKETS = 50
SLACK_S = 2.0  # closing is a timer on the server's loop: late by the loop's load at most


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def held_for(port: int, kind: int) -> float:
    """Seconds until the server closed a connection that never completes its request's headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        if kind > 0:
            writer.write(b"GET /health HT" if kind == 1 else b"GET /health HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
        while True:
            if kind == 2:  # one more header line every 0.2 s, never the blank line that ends them
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):  # nothing yet: the front still holds it open
                if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                    return time.monotonic() - t0
            if time.monotonic() - t0 > TIMEOUT_S + 10:
                return float("inf")
    except ConnectionError:
        return time.monotonic() - t0
    finally:
        writer.close()


async def assert_drops_slow_headers(app: web.Application, name: str) -> None:
    """Serve ``app``; its SOCKETS slow-header connections are each closed about TIMEOUT_S after they opened,
    while a well-behaved client still gets its answer."""
    runner, port = await serve(app)
    try:
        held = sorted(await asyncio.gather(*(held_for(port, i % 3) for i in range(SOCKETS))))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    print(f"{name}: {SOCKETS} slow-header sockets closed after {held[0]:.2f}-{held[-1]:.2f} s")
    assert TIMEOUT_S - 0.1 <= held[0] and held[-1] <= TIMEOUT_S + SLACK_S


def test_the_default_header_timeout_is_a_few_seconds():
    assert 1.0 <= ServerConfig().header_timeout <= 10.0


@module_loop
async def test_the_server_drops_slow_header_connections(engine_loader):
    app = create_app(ServerConfig(size=256, admission=False, header_timeout=TIMEOUT_S, engine_loader=engine_loader))
    await assert_drops_slow_headers(app, "server")


@module_loop
async def test_the_front_drops_slow_header_connections():
    pytest.importorskip("ray", reason="ray is not installed (pip install 'avatarstream[cluster]')")
    from avatarstream.realtime.cluster.front import FrontConfig, create_front_app
    from avatarstream.realtime.cluster.membership import WorkerWatcher
    from avatarstream.realtime.cluster.placement import PlacementTable

    class NoRay(WorkerWatcher):  # the front's HTTP side alone: no cluster to watch
        def start(self) -> None:
            """Watches nothing: this test has no Ray cluster."""

    app = create_front_app(FrontConfig(header_timeout=TIMEOUT_S), watcher=NoRay(PlacementTable()))
    await assert_drops_slow_headers(app, "front")

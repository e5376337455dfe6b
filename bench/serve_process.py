"""``avatar serve`` (or another ``avatar`` server command) in a child process, as the server suites run it: a free
local port, and waiting until its ``/health`` answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time

import aiohttp

from avatarstream.engines.base import EngineError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen, *, timeout: float = 120,
                       poll_s: float = 0.5) -> None:
    """Return once ``GET url/health`` answers 200; raise ``EngineError`` if ``proc`` exits first (with its
    piped stderr's last 2000 characters, if stderr was piped) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            text = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise EngineError(f"avatar serve exited with code {proc.returncode}: {text[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(poll_s)
    raise EngineError(f"avatar serve did not become healthy in {timeout:.0f} s")

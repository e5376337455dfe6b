"""``avatar serve`` (or another ``avatar`` server command) in a child process, as the server suites run it: a free
local port, waiting until its ``/health`` answers, its CPU time read apart from this process's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

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


class ServeProcess:
    """``avatar serve --port <free port> <args>`` in a child process. Its stderr is piped so that
    ``wait_healthy`` can say why it exited; stdout is discarded."""

    def __init__(self, args: Sequence[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "avatarstream.cli", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self, http: aiohttp.ClientSession, *, timeout: float = 120, poll_s: float = 0.5) -> None:
        """Return once ``/health`` answers 200 (see ``wait_healthy``)."""
        await wait_healthy(http, self.url, self.proc, timeout=timeout, poll_s=poll_s)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        import psutil  # the bench extra

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        """Terminate the server; kill it if it has not exited 10 s later."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

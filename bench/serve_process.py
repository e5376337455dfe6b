"""``avatar serve`` (or another ``avatar`` server command) in a child process, as the server suites run it: a free
local port, waiting until its ``/health`` answers, its CPU time read apart from this process's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import aiohttp

from avatarstream.engines.base import EngineError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen, *, timeout: float = 120,
                       poll_s: float = 0.5, stderr_tail: Callable[[], str] | None = None) -> None:
    """Return once ``GET url/health`` answers 200; raise ``EngineError`` if ``proc`` exits first (with the
    last 2000 characters of ``stderr_tail()``, or of its stderr if that was piped) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if stderr_tail is not None:
                text = stderr_tail()
            else:
                err = proc.stderr.read() if proc.stderr else b""
                text = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise EngineError(f"avatar serve exited with code {proc.returncode}: {text[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(poll_s)
    raise EngineError(f"avatar serve did not become healthy in {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate ``proc`` (SIGTERM: a server shuts down cleanly); kill it if it has not exited ``grace_s``
    seconds later, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServeProcess:
    """``avatar serve --port <free port> <args>`` in a child process. Its stderr goes to a temporary file, not
    a pipe: nothing reads a pipe while the server runs, and a server that logged more than the pipe holds
    (64 KiB) would block on its next log line. ``wait_healthy`` quotes the file's tail if the server exits;
    stdout is discarded."""

    def __init__(self, args: Sequence[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "avatarstream.cli", "serve", "--port", str(self.port), *args]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)

    def stderr_tail(self, chars: int = 2000) -> str:
        """The last ``chars`` characters the server wrote to stderr so far."""
        self._log.flush()
        size = self._log.seek(0, 2)
        self._log.seek(max(0, size - 4 * chars))
        return self._log.read().decode(errors="replace")[-chars:]

    async def ready(self, http: aiohttp.ClientSession, *, timeout: float = 120, poll_s: float = 0.5) -> None:
        """Return once ``/health`` answers 200 (see ``wait_healthy``)."""
        await wait_healthy(http, self.url, self.proc, timeout=timeout, poll_s=poll_s, stderr_tail=self.stderr_tail)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        import psutil  # the bench extra

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        """Terminate the server; kill it if it has not exited 10 s later."""
        stop_process(self.proc, 10)
        self._log.close()

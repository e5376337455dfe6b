"""A fleet of machines on this one, and the failures a fleet has (``avatar bench --suite failover``).

``Fleet`` runs a real multi-node ``avatar cluster`` in network namespaces (``bench/netns.py``):
machine 0 runs the Ray head (``ray start --head``) and the front (``avatar cluster head``),
machines 1..N one worker each (``avatar cluster worker --join``, its own Ray node and
``--advertise-host``), and the last machine is the clients': the caller's thread enters it
(``Fleet.client()``), so its HTTP requests and WebRTC media go to the front's and the workers' own
addresses on the private subnet, never through this machine's network.

Ray's failure detection is tuned to seconds through its environment (``RAY_ENV``: the GCS health
check of every raylet, period x failure threshold), so a lost machine is declared dead in
~``DETECTION_S`` instead of Ray's default ~30 s. The failures (``kill_machine``, ``cut``/``restore``,
``restart_front``) are what the tests in ``tests/cluster/test_fleet.py`` assert and what
``run()`` measures: per failure, the detection time, the sessions lost, the creates refused
during the failure, the recovery time and the fps of the sessions that were not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from avatarstream.bench.netns import Machine, Network
from avatarstream.bench.viewer_recorder import RecordingViewer

HEALTH_CHECK_PERIOD_MS = 1000
HEALTH_CHECK_TIMEOUT_MS = 1000
HEALTH_CHECK_FAILURES = 5
DETECTION_S = (HEALTH_CHECK_PERIOD_MS * HEALTH_CHECK_FAILURES + HEALTH_CHECK_TIMEOUT_MS) / 1000  # ~6 s
CALL_TIMEOUT_S = 1.0  # the front's status call: past it, no new sessions there (well within DETECTION_S)
RAY_ENV = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": str(HEALTH_CHECK_PERIOD_MS),
    "RAY_health_check_timeout_ms": str(HEALTH_CHECK_TIMEOUT_MS),
    "RAY_health_check_failure_threshold": str(HEALTH_CHECK_FAILURES),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",  # every machine gets the cluster's token (RAY_AUTH_TOKEN, made per fleet)
}
RAY_PORT = 6379
FRONT_PORT = 8080
MIN_FPS = 24.0  # what an unaffected session keeps on an idle machine (the bench reports it)
MAX_GAP_S = 1.0  # the longest pause between two frames of an unaffected session, under any load (the tests)


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class Fleet:
    """A Ray head + front, ``workers`` worker machines and one client machine (``net`` must have
    ``workers + 2`` machines). ``logs``: a folder for every process's output."""

    net: Network
    logs: Path
    workers: int = 2
    slots: int = 2
    size: int = 256
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    front: subprocess.Popen | None = None
    worker_procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.net.machines) < self.workers + 2:
            raise ValueError(f"a fleet of {self.workers} workers needs {self.workers + 2} machines")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **RAY_ENV, "RAY_AUTH_TOKEN": secrets.token_hex(32), "AVATARSTREAM_API_KEY": self.api_key}

    @property
    def head(self) -> Machine:
        return self.net.machines[0]

    @property
    def client_machine(self) -> Machine:
        return self.net.machines[self.workers + 1]

    def worker_machine(self, worker_id: str) -> Machine:
        return self.net.machines[int(worker_id[1:])]

    @property
    def worker_ids(self) -> list[str]:
        return [f"w{i}" for i in range(1, self.workers + 1)]

    @property
    def front_url(self) -> str:
        return f"http://{self.head.address}:{FRONT_PORT}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _log(self, name: str) -> Any:
        return open(self.logs / f"{name}.log", "ab")

    def start(self) -> None:
        """The Ray head, the front and the workers (returns at once; ``wait_ready`` waits)."""
        result = self.net.run(self.head, [venv_tool("ray"), "start", "--head", "--node-ip-address", self.head.address,
                                          "--port", str(RAY_PORT), "--include-dashboard=false", "--num-cpus", "0",
                                          "--disable-usage-stats"],
                              timeout=180, env=self.env, stdout=self._log("ray-head"), stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError(f"ray start --head failed: see {self.logs / 'ray-head.log'}")
        self.start_front()
        for wid in self.worker_ids:
            self.start_worker(wid)

    def start_front(self) -> subprocess.Popen:
        self.front = self.net.start(self.head, [
            venv_tool("avatar"), "cluster", "head", "--address", f"{self.head.address}:{RAY_PORT}",
            "--host", self.head.address, "--port", str(FRONT_PORT), "--size", str(self.size),
            "--call-timeout", str(CALL_TIMEOUT_S)],
            env=self.env, stdout=self._log("front"), stderr=subprocess.STDOUT)
        return self.front

    def stop_front(self) -> None:
        """The front process dies (SIGKILL): no goodbye to anyone."""
        if self.front is not None:
            self.front.kill()
            self.front.wait(timeout=30)

    def start_worker(self, worker_id: str) -> subprocess.Popen:
        m = self.worker_machine(worker_id)
        proc = self.net.start(m, [
            venv_tool("avatar"), "cluster", "worker", "--join", "--address", f"{self.head.address}:{RAY_PORT}",
            "--worker-id", worker_id, "--host", m.address, "--advertise-host", m.address, "--slots", str(self.slots),
            "--size", str(self.size), "--no-admission", "--drain-timeout", "5"],
            env=self.env, stdout=self._log(f"worker-{worker_id}"), stderr=subprocess.STDOUT)
        self.worker_procs[worker_id] = proc
        return proc

    def kill_machine(self, worker_id: str) -> list[int]:
        """Everything on the worker's machine dies at once (its Ray node, the actor, the command)."""
        return self.net.kill(self.worker_machine(worker_id))

    def cut(self, worker_id: str) -> None:
        self.net.cut(self.worker_machine(worker_id))

    def restore(self, worker_id: str) -> None:
        self.net.restore(self.worker_machine(worker_id))

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """The calling thread is the client machine (see ``Network.entered``)."""
        with self.net.entered(self.client_machine):
            yield


# ---- a client's view --------------------------------------------------------------------------------
class FleetClient:
    """HTTP to the front and WHEP viewers of the workers, from the client machine's thread."""

    def __init__(self, fleet: Fleet, http: aiohttp.ClientSession) -> None:
        self.fleet = fleet
        self.http = http

    async def health(self, timeout: float = 2.0) -> dict | None:
        try:
            async with self.http.get(self.fleet.front_url + "/health",
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async def workers(self) -> dict[str, dict]:
        health = await self.health()
        return {w["id"]: w for w in health["workers"]} if health else {}

    async def create(self) -> tuple[int, dict]:
        async with self.http.post(self.fleet.front_url + "/v1/sessions", json={"size": self.fleet.size},
                                  headers=self.fleet.auth, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return resp.status, await resp.json()

    async def get(self, session: dict, timeout: float = 5.0) -> int:
        """The status of ``GET /v1/sessions/{id}`` through the front with the session's token (0: no answer)."""
        try:
            async with self.http.get(f"{self.fleet.front_url}/v1/sessions/{session['id']}",
                                     headers={"Authorization": f"Bearer {session['token']}"},
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0

    async def watch(self, session: dict) -> RecordingViewer:
        viewer = RecordingViewer(keep_images=False)
        await viewer.join(self.http, session["whep_url"], session["token"])
        await asyncio.wait_for(viewer.first_video.wait(), 60)
        return viewer

    async def delete(self, session: dict) -> int:
        async with self.http.delete(f"{self.fleet.front_url}/v1/sessions/{session['id']}", headers=self.fleet.auth,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   interval: float = 0.2) -> float:
    """Seconds until ``await predicate()`` holds; AssertionError naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    while not await predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - t0


def fps(viewer: RecordingViewer, t0: float, t1: float) -> float:
    """Video frames the viewer received per second between monotonic times t0 and t1."""
    return sum(t0 <= v.t < t1 for v in viewer.recording.video) / (t1 - t0)


def max_gap(viewer: RecordingViewer, t0: float, t1: float) -> float:
    """The longest time (s) between two video frames received in [t0, t1], its edges included:
    a session that stalled shows it whatever the machine's speed."""
    times = [t0, *sorted(v.t for v in viewer.recording.video if t0 <= v.t < t1), t1]
    return max(b - a for a, b in zip(times, times[1:]))


def worst_window_fps(viewer: RecordingViewer, t0: float, t1: float, window: float = 1.0) -> float:
    starts = [t0 + 0.5 * i for i in range(max(1, int((t1 - t0 - window) / 0.5) + 1))]
    return min(fps(viewer, t, t + window) for t in starts)


def describe(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)

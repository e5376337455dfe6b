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
import tempfile
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
# a check that gets no answer takes its timeout, the next starts a period later: ~10 s to declare a node dead
DETECTION_S = HEALTH_CHECK_FAILURES * (HEALTH_CHECK_PERIOD_MS + HEALTH_CHECK_TIMEOUT_MS) / 1000
CALL_TIMEOUT_S = 1.0  # the front's status call: past it, no new sessions there (well within DETECTION_S)
RAY_ENV = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": str(HEALTH_CHECK_PERIOD_MS),
    "RAY_health_check_timeout_ms": str(HEALTH_CHECK_TIMEOUT_MS),
    "RAY_health_check_failure_threshold": str(HEALTH_CHECK_FAILURES),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",  # every machine gets the cluster's token (RAY_AUTH_TOKEN, made per fleet)
}
VIEWER_FRAMES = 25 * 3600  # frame times a viewer keeps (the recorder's default, 3000, is 2 minutes)
RAY_PORT = 6379
FRONT_PORT = 8080
MIN_FPS = 24.0  # what an unaffected session keeps on an idle machine (the bench reports it)


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
        viewer = RecordingViewer(keep_images=False, max_video_frames=VIEWER_FRAMES)
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
    """The longest time (s) between two video frames received in [t0, t1], its edges included (reported: a
    loaded machine lengthens it as a stall does; the tests account ticks instead, ``bench/media_ticks.py``)."""
    times = [t0, *sorted(v.t for v in viewer.recording.video if t0 <= v.t < t1), t1]
    return max(b - a for a, b in zip(times, times[1:]))


def worst_window_fps(viewer: RecordingViewer, t0: float, t1: float, window: float = 1.0) -> float:
    starts = [t0 + 0.5 * i for i in range(max(1, int((t1 - t0 - window) / 0.5) + 1))]
    return min(fps(viewer, t, t + window) for t in starts)


def describe(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


# ---- avatar bench --suite failover ----------------------------------------------------------------
LONG_CUT_S = DETECTION_S + 4.0  # past Ray's detection: the node is declared dead
SESSIONS_ON_FAILED = 2  # sessions on the machine that fails (w1); B, the watched one, is on w2


@dataclass
class Trial:
    """One failure, as the client machine saw it (seconds from the failure's start unless named)."""

    failure: str
    detection_s: float | None  # until the front reported it (410 / placement paused / -)
    lost: int  # sessions that answered 410
    lost_expected: int  # the sessions on the failed machine (0 for a short cut or the front)
    creates: int  # creates tried during the failure, one a second
    refused: int  # of them, 503 (or no answer)
    placed_on_failed: int  # of them, placed on the failed machine (must be 0)
    recovery_s: float  # until the fleet was whole again (see run_bench's docstring)
    unaffected_fps: float  # B on w2 over the failure
    unaffected_max_gap_s: float
    baseline_fps: float  # B on w2 over the 3 s before the failure (the machine's load at the time)
    notes: str = ""


class FailoverRun:
    def __init__(self, fleet: Fleet, client: FleetClient) -> None:
        self.fleet, self.c = fleet, client
        self.b: dict = {}
        self.viewer: RecordingViewer | None = None

    async def both_placeable(self) -> bool:
        """Every worker up as the front sees it: alive, answering, not draining (full or not)."""
        workers = await self.c.workers()
        return all(w in workers and workers[w]["alive"] and workers[w]["responsive"] and not workers[w]["draining"]
                   for w in self.fleet.worker_ids)

    async def setup(self) -> None:
        await wait_for(self.both_placeable, 240, "both workers up")
        self.b = (await self._on("w2", 1))[0]
        self.viewer = await self.c.watch(self.b)

    async def _drain(self, worker_id: str, draining: bool) -> None:
        async with self.c.http.post(f"{self.fleet.front_url}/v1/cluster/workers/{worker_id}/drain",
                                    json={"draining": draining}, headers=self.fleet.auth) as resp:
            if resp.status != 200:
                raise RuntimeError(f"drain {worker_id}: {resp.status} {await resp.text()}")

    async def _on(self, worker_id: str, n: int) -> list[dict]:
        """``n`` new sessions on ``worker_id`` (the others drain meanwhile)."""
        others = [w for w in self.fleet.worker_ids if w != worker_id]
        for w in others:
            await self._drain(w, True)
        try:
            sessions = []
            for _ in range(n):
                status, body = await self.c.create()
                if status != 201 or body["worker"] != worker_id:
                    raise RuntimeError(f"expected a session on {worker_id}, got {status} {body}")
                sessions.append(body)
        finally:
            for w in others:
                await self._drain(w, False)
        return sessions

    async def _on_w1(self, n: int) -> list[dict]:
        return await self._on("w1", n)

    async def _probe_creates(self, until: Callable[[], Awaitable[bool]], failed: str, limit: float) -> tuple[int, int, int]:
        """Create a session a second until ``until()`` holds: (tried, refused, placed on ``failed``)."""
        tried = refused = on_failed = 0
        t0 = time.monotonic()
        while not await until() and time.monotonic() - t0 < limit:
            tried += 1
            try:
                status, body = await self.c.create()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status, body = 0, {}
            if status == 201:
                on_failed += body["worker"] == failed
                await self.c.delete(body)
            else:
                refused += 1
            await asyncio.sleep(1.0)
        return tried, refused, on_failed

    def _unaffected(self, t0: float, t1: float) -> tuple[float, float, float]:
        """B's fps and longest gap over [t0, t1], and its fps over the 3 s before t0."""
        assert self.viewer is not None
        return (round(fps(self.viewer, t0, t1), 1), round(max_gap(self.viewer, t0, t1), 3),
                round(fps(self.viewer, t0 - 3.0, t0), 1))

    async def _lost(self, sessions: list[dict]) -> int:
        return sum([await self.c.get(s, timeout=3.0) == 410 for s in sessions])

    async def kill(self) -> Trial:
        sessions = await self._on_w1(SESSIONS_ON_FAILED)
        t0 = time.monotonic()
        self.fleet.kill_machine("w1")
        detection = await wait_for(lambda: self._all(sessions, 410), 60, "410 after the kill")
        tried, refused, on_failed = await self._probe_creates(lambda: _elapsed(t0, 3.0), "w1", 10)
        t1 = time.monotonic()
        fps_b, gap, base = self._unaffected(t0, t1)
        lost = await self._lost(sessions)
        t_start = time.monotonic()
        self.fleet.start_worker("w1")
        recovery = await wait_for(self.both_placeable, 180, "w1 replaced")
        return Trial("machine killed", detection, lost, len(sessions), tried, refused, on_failed,
                     recovery, fps_b, gap, base, notes=f"recovery: a replacement machine's command started "
                                                 f"{t_start - t0:.1f} s after the kill, placeable after recovery_s")

    async def long_cut(self) -> Trial:
        sessions = await self._on_w1(SESSIONS_ON_FAILED)
        before = (await self.c.workers())["w1"]["incarnation"]
        t0 = time.monotonic()
        self.fleet.cut("w1")
        try:
            detection = await wait_for(lambda: self._all(sessions, 410), 60, "410 during the long cut")
            tried, refused, on_failed = await self._probe_creates(lambda: _elapsed(t0, LONG_CUT_S), "w1", 60)
            lost = await self._lost(sessions)
        finally:
            self.fleet.restore("w1")
        t_restore = time.monotonic()
        fps_b, gap, base = self._unaffected(t0, t_restore)
        recovery = await wait_for(self.both_placeable, 180, "w1 back after the heal")
        after = (await self.c.workers())["w1"]["incarnation"]
        return Trial(f"link cut {t_restore - t0:.0f} s", detection, lost, len(sessions), tried, refused, on_failed,
                     recovery, fps_b, gap, base, notes=f"recovery from the restore; new incarnation: {after != before}")

    async def short_cut(self) -> Trial:
        sessions = await self._on_w1(SESSIONS_ON_FAILED)
        before = (await self.c.workers())["w1"]["incarnation"]
        t0 = time.monotonic()
        self.fleet.cut("w1")

        async def paused() -> bool:  # w1 is full: its status calls going unanswered is the pause
            return not (await self.c.workers())["w1"]["responsive"]

        try:
            detection = await wait_for(paused, DETECTION_S, "placement paused")
            tried, refused, on_failed = await self._probe_creates(lambda: _elapsed(t0, DETECTION_S / 2), "w1", 10)
        finally:
            self.fleet.restore("w1")
        t_restore = time.monotonic()
        recovery = await wait_for(self.both_placeable, 60, "placement resumed")
        fps_b, gap, base = self._unaffected(t0, time.monotonic())
        lost = await self._lost(sessions)
        same = (await self.c.workers())["w1"]["incarnation"] == before
        for s in sessions:
            await self.c.delete(s)
        return Trial(f"link cut {t_restore - t0:.1f} s", detection, lost, 0, tried, refused, on_failed, recovery,
                     fps_b, gap, base, notes=f"detection: placement paused; recovery from the restore; "
                                       f"same incarnation: {same}")

    async def front_restart(self) -> Trial:
        sessions = await self._on_w1(SESSIONS_ON_FAILED)
        everyone = [self.b, *sessions]
        t0 = time.monotonic()
        self.fleet.stop_front()
        self.fleet.start_front()
        recovery = await wait_for(lambda: self._all(everyone, 200), 120, "routes on the new front")
        fps_b, gap, base = self._unaffected(t0, time.monotonic())
        health = await self.c.health()
        routed = health["sessions"] if health else -1
        for s in sessions:
            await self.c.delete(s)
        return Trial("front restarted", None, 0, 0, 0, 0, 0, recovery, fps_b, gap, base,
                     notes=f"recovery: every session's route answers; the new front routes {routed} sessions "
                           f"for {len(everyone)} running")

    async def _all(self, sessions: list[dict], status: int) -> bool:
        return all([await self.c.get(s, timeout=2.0) == status for s in sessions])


async def _elapsed_since(t0: float, seconds: float) -> bool:
    return time.monotonic() - t0 >= seconds


def _elapsed(t0: float, seconds: float) -> Awaitable[bool]:
    return _elapsed_since(t0, seconds)


async def measure(fleet: Fleet, rounds: int, checkpoint: Callable[[list[Trial]], None]) -> list[Trial]:
    trials: list[Trial] = []
    async with aiohttp.ClientSession() as http:
        run = FailoverRun(fleet, FleetClient(fleet, http))
        await run.setup()
        try:
            for _ in range(rounds):
                for failure in (run.short_cut, run.kill, run.long_cut, run.front_restart):
                    trials.append(await failure())
                    checkpoint(trials)
        finally:
            if run.viewer is not None:
                await run.viewer.close()
    return trials


def kind(t: Trial) -> str:
    if t.failure.startswith("link cut"):
        return "link cut (short)" if t.lost_expected == 0 else "link cut (long)"
    return t.failure


def summarize(trials: list[Trial]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    kinds: dict[str, list[Trial]] = {}
    for t in trials:
        kinds.setdefault(kind(t), []).append(t)
    for name, ts in kinds.items():
        det = sorted(t.detection_s for t in ts if t.detection_s is not None)
        rec = sorted(t.recovery_s for t in ts)
        out[name] = {
            "trials": len(ts),
            "detection_s": {"p50": round(_median(det), 2), "max": round(det[-1], 2)} if det else None,
            "sessions_lost": sum(t.lost for t in ts), "sessions_lost_expected": sum(t.lost_expected for t in ts),
            "creates_during": sum(t.creates for t in ts), "creates_refused": sum(t.refused for t in ts),
            "placed_on_failed_machine": sum(t.placed_on_failed for t in ts),
            "recovery_s": {"p50": round(_median(rec), 2), "max": round(rec[-1], 2)},
            "unaffected_fps": {"min": min(t.unaffected_fps for t in ts), "mean": round(
                sum(t.unaffected_fps for t in ts) / len(ts), 1)},
            "unaffected_max_gap_s": max(t.unaffected_max_gap_s for t in ts),
            "baseline_fps": {"min": min(t.baseline_fps for t in ts)},
        }
    return out


def _median(values: list[float]) -> float:
    n = len(values)
    return (values[(n - 1) // 2] + values[n // 2]) / 2


def run_bench(opts: Any) -> dict:
    """``avatar bench --suite failover``: a fleet of 2 workers (2 slots, lite 256 px) in namespaces;
    each round: a short link cut, a machine killed (and replaced), a long cut (Ray declares the node
    dead; it rejoins), the front restarted. Detection: until the front said so (410 for every
    session of the failed machine; placement paused for a short cut). Recovery: until the fleet was
    whole (both workers alive and answering; for the front: every running session's route answers)."""
    from dataclasses import asdict

    from avatarstream.bench.machine import load_average
    from avatarstream.bench.netns import unavailable

    reason = unavailable()
    if reason is not None:
        from avatarstream.engines.base import EngineError

        raise EngineError(f"the failover bench builds its machines as network namespaces: {reason}")
    rounds = 1 if opts.quick else 3
    out_dir = Path(opts.out_dir)
    result: dict = {"workers": 2, "slots": 2, "engine": "lite", "size": 256, "rounds": rounds,
                    "ray_failure_detection": {k: v for k, v in RAY_ENV.items() if k.startswith("RAY_health")},
                    "front_call_timeout_s": CALL_TIMEOUT_S, "load_average_before": load_average()}
    with Network(4) as net:
        fleet = Fleet(net, Path(tempfile.mkdtemp(prefix="failover-logs-")))  # the processes' output, kept
        result["logs"] = str(fleet.logs)
        fleet.start()
        with fleet.client():
            def checkpoint(trials: list[Trial]) -> None:
                opts.checkpoint({**result, "trials": [asdict(t) for t in trials]})

            trials = asyncio.run(measure(fleet, rounds, checkpoint))
    result["load_average_after"] = load_average()
    result["trials"] = [asdict(t) for t in trials]
    result["summary"] = summarize(trials)
    result["plot"] = str(_plot(out_dir, trials))
    return result


def _plot(out_dir: Path, trials: list[Trial]) -> Path:
    from avatarstream.bench.plotting import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dict.fromkeys(kind(t) for t in trials))
    for i, name in enumerate(names):
        ts = [t for t in trials if kind(t) == name]
        detected = [t.detection_s for t in ts if t.detection_s is not None]  # none for the front's restart
        ax1.scatter([i - 0.1] * len(detected), detected, color="C0", label="detection" if i == 0 else None)
        ax1.scatter([i + 0.1] * len(ts), [t.recovery_s for t in ts], color="C1", label="recovery" if i == 0 else None)
        ax2.scatter([i] * len(ts), [t.unaffected_fps for t in ts], color="C2")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)), names, rotation=15)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("seconds")
    ax1.set_title("detection and recovery per failure")
    ax1.legend()
    ax2.axhline(MIN_FPS, color="gray", ls="--")
    ax2.set_ylabel("fps of the unaffected session")
    ax2.set_title("the other machine's session during the failure")
    path = out_dir / "failover.png"
    save_figure(fig, path, dpi=100)
    return path

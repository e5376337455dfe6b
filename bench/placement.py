"""``avatar bench --suite placement``: placement latency, from ``POST /v1/sessions`` to the first video
frame at a viewer, through a cluster front vs a single server, side by side in one run.

Both run as deployed, each in its own process on this machine, with the lite engine at 256 px and
admission off: ``avatar serve`` and ``avatar cluster head --workers 1`` (the front, an in-process
Ray node and one worker actor). The trials alternate between the two: create a session, join it
with an aiortc WHEP viewer (``viewer_recorder.py``; through the front, the WHEP offer is proxied
to the worker and the media comes from the worker), wait for the first decoded frame, end the
session. Reported per target: create (HTTP round trip) and create -> first frame, p50 / p99 / mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.serve_process import free_port, stop_process
from avatarstream.engines.base import EngineError
from avatarstream.bench.viewer_recorder import RecordingViewer

if TYPE_CHECKING:  # the run_bench contract of `avatar bench`; the CLI imports this module by name only
    from avatarstream.cli.bench import BenchOptions

SIZE = 256
COMMON = ["--size", str(SIZE), "--no-admission", "--log-level", "warning"]
TARGETS = {
    "single": ["serve", "--max-sessions", "2", *COMMON],
    "cluster": ["cluster", "head", "--workers", "1", "--slots", "2", "--num-cpus", "2", *COMMON],
}


def run_bench(opts: BenchOptions) -> dict:
    """Entry point for ``avatar bench --suite placement``."""
    try:
        import ray  # noqa: F401  (the cluster extra)
    except ImportError:
        raise EngineError("the placement benchmark runs a Ray cluster: pip install 'avatarstream[cluster]'") from None
    trials = 3 if opts.quick else 20
    result: dict = {"size": SIZE, "engine": "lite", "trials": trials,
                    "load_average_before": load_average()}
    with _target("single") as single, _target("cluster") as cluster:  # both start at once, then both are awaited
        runs = asyncio.run(_trials({"single": single(), "cluster": cluster()}, trials))
    result["load_average_after"] = load_average()
    result["targets"] = {name: _summary(samples) for name, samples in runs.items()}
    s, c = result["targets"]["single"], result["targets"]["cluster"]
    result["cluster_over_single"] = {k: round(c["first_frame_ms"][k] / s["first_frame_ms"][k], 3)
                                     for k in ("p50", "p99")}
    result["plot"] = str(_plot(Path(opts.out_dir), runs))
    return result


@contextlib.contextmanager
def _target(name: str) -> Iterator[Callable[[], str]]:
    """``avatar <TARGETS[name]>`` in its own process, started at once; yields a call that waits until it can
    place a session and returns its URL."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "avatarstream.cli", *TARGETS[name], "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180

    def ready() -> str:
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise EngineError(f"{name} target did not start: {log.read()[-3000:]}")
            time.sleep(0.5)
        return url

    try:
        yield ready
    finally:
        stop_process(proc, 30)
        log.close()


def _ready(url: str) -> bool:
    try:
        health = json.loads(urllib.request.urlopen(url + "/health", timeout=2).read())
    except OSError:
        return False
    workers = health.get("workers")
    return workers is None or any(w["placeable"] for w in workers)


async def _trials(urls: dict[str, str], trials: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as http:
        for url in urls.values():  # one unmeasured warm-up each (first connections, code paths)
            await _one(http, url)
        for _ in range(trials):
            for name, url in urls.items():
                out[name].append(await _one(http, url))
    return out


async def _one(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(create ms, create -> first frame ms) of one session."""
    t0 = time.perf_counter()
    async with http.post(url + "/v1/sessions", json={"size": SIZE}) as resp:
        info = await resp.json()
        if resp.status != 201:
            raise EngineError(f"{url} refused a session: {resp.status} {info}")
    t_created = time.perf_counter()
    viewer = RecordingViewer(keep_images=False, max_video_frames=1)
    try:
        await viewer.join(http, url + f"/v1/sessions/{info['id']}/whep", info["token"])
        await asyncio.wait_for(viewer.first_video.wait(), 60)
        t_frame = time.perf_counter()
    finally:
        await viewer.close()
        async with http.delete(url + f"/v1/sessions/{info['id']}",
                               headers={"Authorization": f"Bearer {info['token']}"}) as resp:
            await resp.read()
    return (t_created - t0) * 1000, (t_frame - t0) * 1000


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "mean": round(float(a.mean()), 1), "min": round(float(a.min()), 1), "max": round(float(a.max()), 1)}


def _summary(samples: list[tuple[float, float]]) -> dict:
    return {"create_ms": _stats([s[0] for s in samples]), "first_frame_ms": _stats([s[1] for s in samples]),
            "samples": [[round(a, 1), round(b, 1)] for a, b in samples]}


def _plot(out_dir: Path, runs: dict[str, list[tuple[float, float]]]) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, samples in runs.items():
        values = np.sort([s[1] for s in samples])
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=name)
    ax.set_xlabel("create -> first frame at the viewer (ms)")
    ax.set_ylabel("fraction of sessions")
    ax.set_title(f"Placement latency, lite {SIZE} px")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out_dir / "placement.png"
    save_figure(fig, path, dpi=100)
    return path

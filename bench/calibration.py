"""``avatar bench --suite calibration``: admission's start-up calibration beside what a real watched session
costs, on one server in one run, and where the difference goes.

One ``avatar serve`` subprocess (lite, 512 px, admission on: it calibrates when the engine loads) is
measured in three steady windows, each its CPU per thread (``/proc`` through psutil: the main thread runs
the event loop, every other thread is an engine, encoder or executor thread):

1. idle (no session): the server's own cost, ``base``;
2. one session watched by an aiortc WHEP viewer (``viewer_recorder.py``), nothing said (the engine renders
   silence, audio packets are silence);
3. the same with an agent pushing espeak-ng speech over the WebSocket in a loop (``capacity.py``'s session).

A session's cost is its window's CPU less ``base``, as admission's cost model learns it; it is split into the
loop thread's share (aiortc's packetisation, SRTP and sending, the Opus encode, the session clock, the
signalling and agent sockets) and the other threads' (engine render, video encode). The calibration's own
figure and its terms (``calibrated_cores_by_term`` of ``/health``: the engine, the video encode, the Opus
encode, RTP + SRTP + send) are read from the same server. Between the server's windows this process runs the
calibration itself, alternating as it was (the engine and the video encode, frames back to back) and as the
server runs it now (every term, paced at 25 fps), so calibrated and measured figures are side by side on the
same machine at the same time (the machine is shared: its load moves both); the load average is reported for
each window. ``--seconds`` sets the windows (10 s by default), three rounds.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from avatarstream.bench.capacity import SIZE, SPEECH, WatchedSession
from avatarstream.bench.machine import load_average
from avatarstream.bench.serve_process import ServeProcess
from avatarstream.bench.speech import espeak_speech, require_espeak
from avatarstream.engines.base import EngineError

if TYPE_CHECKING:
    from avatarstream.cli.bench import BenchOptions


def run_bench(opts: BenchOptions) -> dict:
    """Entry point for ``avatar bench --suite calibration``."""
    if opts.device != "cpu":
        raise EngineError("the calibration benchmark runs the lite engine on the CPU; use --device cpu")
    require_espeak("calibration")
    window_s = 2.0 if opts.quick else max(5.0, opts.seconds)
    warmup_s = 1.0 if opts.quick else 3.0
    return asyncio.run(_run(window_s, warmup_s, repeats=1 if opts.quick else 3, cal_repeats=1 if opts.quick else 3))


class ThreadCpu:
    """CPU seconds of one process so far: its main (event loop) thread and all its other threads."""

    def __init__(self, pid: int) -> None:
        import psutil  # the bench extra

        self._process = psutil.Process(pid)
        self._pid = pid

    def read(self) -> dict[str, float]:
        """CPU seconds so far: ``loop_user``, ``loop_system`` (the main thread) and ``other`` (all other threads)."""
        out = {"loop_user": 0.0, "loop_system": 0.0, "other": 0.0}
        for t in self._process.threads():
            if t.id == self._pid:
                out["loop_user"] += t.user_time
                out["loop_system"] += t.system_time
            else:
                out["other"] += t.user_time + t.system_time
        return out


async def _window(cpu: ThreadCpu, seconds: float) -> dict:
    c0, t0 = cpu.read(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu.read(), time.monotonic()
    dt = t1 - t0
    cores = {f"{k}_cores": (c1[k] - c0[k]) / dt for k in c0}
    cores["loop_cores"] = cores["loop_user_cores"] + cores["loop_system_cores"]
    cores["cores"] = cores["loop_cores"] + cores["other_cores"]
    return {**cores, "seconds": round(dt, 2), "load_average": load_average()[0]}


def _less(window: dict, base: dict) -> dict:
    """A session's cost: its window less the idle server's."""
    return {k: round(window[k] - base[k], 4)
            for k in ("cores", "loop_cores", "loop_user_cores", "loop_system_cores", "other_cores")}


@functools.cache
def _lite(load_engine: Callable[..., Any], load_portrait: Callable[..., Any]) -> tuple[Any, Any]:
    return load_engine("lite"), load_portrait(None)


def calibrations(repeats: int) -> dict:
    """In this process, alternating: the calibration as it was (the engine and the video encode, frames back
    to back) and as the server now runs it (the engine and every WebRTC term, paced at 25 fps); cores.
    Blocking, with an event loop of its own: run it in a thread of the bench's loop."""
    from avatarstream.engines.portraits import load_portrait
    from avatarstream.engines.registry import load_engine
    from avatarstream.realtime.session.calibration import calibrate
    from avatarstream.realtime.transports.webrtc.media_work import session_media_work
    from avatarstream.realtime.video_settings import VIDEO_DEFAULTS

    engine, portrait = _lite(load_engine, load_portrait)
    out: dict[str, list] = {"before": [], "after": []}
    for _ in range(repeats):
        for name in out:
            work = session_media_work(VIDEO_DEFAULTS)
            try:
                terms = work.terms()
                if name == "before":  # the terms and pace it had: the video encode, frames back to back
                    cal = calibrate(engine, portrait, engine_name="lite", size=SIZE, work=terms[:1], tick_s=0.0)
                else:
                    cal = calibrate(engine, portrait, engine_name="lite", size=SIZE, work=terms)
            finally:
                work.close()
            out[name].append({k: round(v, 4) for k, v in {"cores": cal.cores, **cal.cores_by_term()}.items()})
    return out


async def _run(window_s: float, warmup_s: float, repeats: int, cal_repeats: int) -> dict:
    speech = [espeak_speech(text) for text in SPEECH]
    server = ServeProcess(["--size", str(SIZE), "--log-level", "warning"])
    out: dict = {"engine": "lite", "size": SIZE, "window_s": window_s, "load_average_before": load_average(),
                 "runs": []}
    try:
        async with aiohttp.ClientSession() as http:
            await server.ready(http, poll_s=0.3)
            async with http.get(f"{server.url}/health") as resp:
                cap = (await resp.json())["capacity"]
            out["calibration"] = {"cores": cap["calibrated_cpu_per_active_session_cores"],
                                  "ms_per_frame": cap["calibration_ms_per_frame"],
                                  "cores_by_term": cap["calibrated_cores_by_term"]}
            cpu = ThreadCpu(server.proc.pid)
            await asyncio.sleep(1.0)  # the server settles after start-up
            for _ in range(repeats):
                run: dict = {"idle": await _window(cpu, window_s)}
                for name, said in (("watched_silent", []), ("watched_speaking", speech)):
                    session = WatchedSession(http, server.url)
                    try:
                        await session.start(said)
                        await asyncio.sleep(warmup_s)
                        window = await _window(cpu, window_s)
                        async with http.get(f"{server.url}/health") as resp:
                            admission = (await resp.json())["capacity"]
                    finally:
                        await session.close()
                    run[name] = {**window, "session": _less(window, run["idle"]),
                                 "admission_measured_cores": admission["cpu_per_active_session_cores"]}
                    await asyncio.sleep(1.0)  # the viewer's connection is gone before the next window
                # in this process (a thread: a calibration runs its own event loop), between the server's windows
                run["calibrations"] = await asyncio.to_thread(calibrations, cal_repeats)
                out["runs"].append(run)
                print(f"[calibration] idle {run['idle']['cores']:.3f}, silent {run['watched_silent']['session']}, "
                      f"speaking {run['watched_speaking']['session']}", flush=True)
    finally:
        server.stop()
    out["load_average_after"] = load_average()
    out["summary"] = _summary(out)
    return out


def _summary(out: dict) -> dict:
    cal = out["calibration"]
    summary: dict = {"calibrated_cores": cal["cores"], "calibrated_cores_by_term": cal["cores_by_term"]}
    for name in ("before", "after"):
        runs = [c for run in out["runs"] for c in run["calibrations"][name]]
        summary[f"calibration_{name}_median"] = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
    for name in ("watched_silent", "watched_speaking"):
        costs = [run[name]["session"] for run in out["runs"]]
        mean = {k: round(sum(c[k] for c in costs) / len(costs), 4) for k in costs[0]}
        summary[name] = {**mean, "calibrated_vs_measured": round(cal["cores"] / mean["cores"], 3) if mean["cores"] > 0
                         else None}
    return summary

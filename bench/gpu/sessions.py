"""Item 1, sessions per GPU, and item 4, GPU memory: N served joyvasa sessions, each streamed speech at 1x.

For N = 1, 2, 4, 8, 16 (stopping after the first N that misses 25 fps, or when the time budget is short): N
sessions start (``served.open_sessions``), each fed the shipped speech at 1x; after ``warm_s`` the sinks'
record of ``measure_s`` seconds gives, per session, the delivered fps (fresh frames per tick x 25), and over
all sessions: ``fps_min`` (the worst session), ``fps_p5`` (5th percentile of every session's per-second fps),
frame time p50/p99 (time between fresh frames sent; 40 ms at 25 fps), the server's own late / missing counts,
the lip-sync delay the server's latency preset settled on and the render time it measured (worst session), the
workers' batches (render frames per batch, motion windows per DiT call) and the GPU utilisation.
A step *holds* 25 fps when every session delivers >= 24.75 fps (>= 99 % of its ticks fresh).

Memory (``torch.cuda`` counters): allocated at rest (engine loaded and warmed up, no session), after each added
session, and the peak of each step; ``weights_mb`` counts the engine's parameters and buffers once; a
per-session figure far below it shows the sessions share the weights.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from avatarstream.bench.gpu.deadline import Deadline
from avatarstream.bench.gpu.product import Product, run_async
from avatarstream.bench.gpu.served import (UtilSampler, Window, allocated_mb, close_sessions, feed_speech,
                                           open_sessions, percentile)

STEPS = (1, 2, 4, 8, 16)
HOLD_FPS = 24.75  # every session >= 99 % of its 25 ticks per second fresh


def weights_mb(product: Product) -> float:
    """Parameters and buffers of the motion generator and the human renderer's networks, counted once."""
    modules = [product.engine.model] + product.engine.renderer("human").networks.modules()
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return round(total / 2**20, 1)


def _worker_snapshot(product: Product) -> dict:
    engine = product.engine
    r = engine.render_worker(engine.renderer("human")).stats
    m = engine.motion_worker().stats
    return {"render_frames": r.frames, "render_batches": r.batches, "render_sizes": dict(r.batch_sizes),
            "motion_calls": m.calls, "motion_windows_per_call": dict(m.windows_per_call),
            "motion_multi_session_calls": m.multi_session_calls}


def _worker_delta(before: dict, after: dict) -> dict:
    sizes = {k: v - before["render_sizes"].get(k, 0) for k, v in after["render_sizes"].items()}
    sizes = {k: v for k, v in sizes.items() if v > 0}
    wpc = {k: v - before["motion_windows_per_call"].get(k, 0) for k, v in after["motion_windows_per_call"].items()}
    wpc = {k: v for k, v in wpc.items() if v > 0}
    calls = after["motion_calls"] - before["motion_calls"]
    return {"render_mean_batch": round(sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())), 2),
            "render_max_batch": max(sizes, default=0),
            "motion_mean_windows_per_call": round(sum(k * v for k, v in wpc.items()) / max(1, calls), 2),
            "motion_max_windows_per_call": max(wpc, default=0),
            "motion_multi_session_calls": after["motion_multi_session_calls"] - before["motion_multi_session_calls"]}


async def measure_step(product: Product, n: int, warm_s: float, measure_s: float, util: UtilSampler) -> dict:
    device = product.device
    before_open = allocated_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    after_each: list = []
    served = await open_sessions(product, n, after_each)
    try:
        for k, s in enumerate(served):
            s.feeder = asyncio.ensure_future(feed_speech(s.session, product.speech, offset_s=0.37 * k))
        await asyncio.sleep(warm_s)
        stats0 = [(s.session.stats.frames_missing, s.session.stats.late_ticks, s.session.stats.ticks) for s in served]
        workers0 = _worker_snapshot(product)
        window = Window()
        util.start()
        await asyncio.sleep(measure_s)
        window.close()
        gpu = util.stop()
        workers = _worker_delta(workers0, _worker_snapshot(product))
        fps = [s.sink.delivered_fps(window.t0, window.t1) for s in served]
        per_second = [x for s in served for x in s.sink.fps_per_second(window.t0, window.t1)]
        intervals = [x for s in served for x in s.sink.fresh_intervals_ms(window.t0, window.t1)]
        missing = sum(s.session.stats.frames_missing - m0 for s, (m0, _, _) in zip(served, stats0))
        late = sum(s.session.stats.late_ticks - l0 for s, (_, l0, _) in zip(served, stats0))
        ticks = sum(s.session.stats.ticks - t0 for s, (_, _, t0) in zip(served, stats0))
        pipeline = [s.session.pipeline_stats() for s in served]
        engine_ms = [x["engine_ms_per_tick"] for x in pipeline]
        latency = [x.get("latency") or {} for x in pipeline]  # the server's latency preset, where it has one
    finally:
        await close_sessions(served)
    row = {
        "sessions": n, "seconds": round(window.seconds, 2),
        "fps_per_session": [round(f, 2) for f in fps],
        "fps_min": round(min(fps), 2), "fps_mean": round(float(np.mean(fps)), 2),
        "fps_p5": percentile(per_second, 5),
        "frame_time_p50_ms": percentile(intervals, 50), "frame_time_p99_ms": percentile(intervals, 99),
        "frames_missing": missing, "late_ticks": late, "ticks": ticks,
        "engine_ms_per_tick_mean": round(float(np.mean(engine_ms)), 2),
        "lip_sync_delay_ms_max": max((x["delay_ms"] for x in latency if x.get("delay_ms") is not None), default=None),
        "render_ms_p99_max": max((x["render_ms_p99"] for x in latency if x.get("render_ms_p99") is not None),
                                 default=None),
        "holds_25fps": min(fps) >= HOLD_FPS, **workers, **gpu,
    }
    if device.type == "cuda":
        row["memory"] = {"before_open_mb": before_open, "after_each_open_mb": after_each,
                         "per_session_mb": round((after_each[-1] - before_open) / n, 1),
                         "peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    print(f"gpu check: {n} sessions: fps min {row['fps_min']} p5 {row['fps_p5']}, frame time p50 "
          f"{row['frame_time_p50_ms']} p99 {row['frame_time_p99_ms']} ms, render batch {row['render_mean_batch']}, "
          f"motion windows/call {row['motion_mean_windows_per_call']}, gpu util {row['gpu_util_percent_mean']}",
          flush=True)
    return row


def sessions_per_gpu(product: Product, deadline: Deadline, steps=STEPS, warm_s: float = 2.0,
                     measure_s: float = 5.0, stop_below: bool = True, time_left=None) -> dict:
    """Item 1 and item 4 (see the module docstring). ``time_left``: seconds this section may still use
    (default: the whole budget's ``deadline.left``); a step that would not fit is skipped."""
    time_left = time_left or deadline.left
    device = product.device
    util = UtilSampler(device)
    at_rest = allocated_mb(device)
    rows: list[dict] = []
    skipped: list[dict] = []
    stopped = None
    step_s = warm_s + measure_s + 2.0  # opening and closing the sessions
    for n in steps:
        if stopped is not None:
            skipped.append({"sessions": n, "why": stopped})
            continue
        if time_left() < step_s + 0.5 * n:
            skipped.append({"sessions": n, "why": f"time budget: {time_left():.0f} s left of the section's"})
            continue
        row = run_async(measure_step(product, n, warm_s, measure_s, util))
        rows.append(row)
        if stop_below and not row["holds_25fps"]:
            stopped = f"stopped after {n} sessions: the worst session delivered {row['fps_min']} fps (< 25)"
    held = [r["sessions"] for r in rows if r["holds_25fps"]]
    consecutive = 0
    for r in rows:
        if not r["holds_25fps"]:
            break
        consecutive = r["sessions"]
    memory: dict = {"weights_mb": weights_mb(product)}
    if device.type == "cuda":
        last = rows[-1]["memory"] if rows else {}
        memory.update({
            "at_rest_mb": at_rest, "per_session_mb": last.get("per_session_mb"),
            "per_session_at": rows[-1]["sessions"] if rows else None,
            "peak_mb": max((r["memory"]["peak_mb"] for r in rows), default=None),
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "total_mb": round(torch.cuda.get_device_properties(device).total_memory / 2**20, 1),
        })
        if memory["per_session_mb"] is not None:
            memory["weights_shared_once"] = memory["per_session_mb"] < 0.25 * memory["weights_mb"]
    else:
        memory.update({"at_rest_mb": None, "per_session_mb": None, "peak_mb": None,
                       "unavailable": "torch.cuda memory counters need a CUDA device"})
    return {"steps": list(steps), "warm_s": warm_s, "measure_s": measure_s, "hold_fps": HOLD_FPS,
            "rows": rows, "skipped": skipped, "stopped": stopped,
            "largest_n_at_25fps": consecutive or None, "held": held, "memory": memory}

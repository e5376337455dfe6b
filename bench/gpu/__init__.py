"""``avatar bench --suite gpu``: the one-call GPU check. It measures the product on one CUDA GPU with random
weights of the real shapes and answers, in ``gpu.json`` and ``gpu.png`` (docs/gpu-check.md):

1. ``sessions`` (``sessions.py``): how many served ``joyvasa`` sessions one GPU holds at 25 fps, 512 x 512,
   each streaming speech at 1x; ``fps`` summarises it per session count;
2. ``first_frame`` (``first_frame.py``): portrait bytes to the first rendered frame of a new session;
3. ``audio_to_mouth`` (``audio_to_mouth.py``): a pushed speech onset to the first frame sent that carries it;
   items 1 and 3 run at the engine's default streaming (10-frame chunks, 80 ms lookahead) and again, in
   ``low_latency``, at ``latency="low"`` (2-frame chunks, 40 ms lookahead); ``latency_configs``
   (``latency_configs.py``) puts both side by side: designed delay, measured p50 / p99, sessions at 25 fps,
   whether p50 <= 150 ms, and ``latency_cost``: what each costs in motion windows and compute per frame;
4. ``memory`` (``sessions.py``): GPU memory at rest, per added session, peak;
5. ``stage_budget`` (``stage_budget.py``): ms per frame per stage at batch 1 and at the workers' batch, with
   ``torch_compile`` (``compile_probe.py``) tried under a hard time limit;

plus the component sections kept from the first check (``components.py``: ``renderer``, ``parity``,
``joyvasa``, ``worker``, ``motion_worker``) and ``targets`` (``targets.py``): each target, its figure, met or not.

plus ``denoiser_cost`` (``denoiser_cost.py``: the DiT call per window and per session at 1-8 windows per call,
both latency configs) and what runs (``precision.py``: the GPU kind and compute mode, TF32 off in the FP32 rows,
cuDNN's autotuner on and off for W).

Results survive: the JSON (through ``options.checkpoint``), the plot and ``torch_compile.json`` are written before
every section and at the end; a section that hangs is abandoned after its limit and the rest skipped
(``deadline.py``); ``bench/gpu/device_check.sh`` runs it on the device under a hard guard.

Time: every section states its H100 estimate (``PLAN``, ``QUICK_PLAN``) and runs only when the time left
covers it (``deadline.py``); ``time_budget`` in the JSON says what ran, took how long, and what was skipped.
The full check is planned for <= 360 s on one H100, ``--quick`` (items 1-4, both latency configs) for <= 170 s;
sections with steps (sessions, audio-to-mouth) stop at their own estimate (``Deadline.section_left``). Without a CUDA GPU it
refuses, except with ``--dry-run``: the same code on CPU with the miniature networks and short runs (the tests).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from avatarstream.bench.gpu import components
from avatarstream.bench.gpu.audio_to_mouth import audio_to_mouth
from avatarstream.bench.gpu.compile_probe import probe
from avatarstream.bench.gpu.deadline import Deadline
from avatarstream.bench.gpu.denoiser_cost import denoiser_cost
from avatarstream.bench.gpu.first_frame import first_frame
from avatarstream.bench.gpu.latency_configs import LATENCIES, compare, stream_config, streaming, window_cost
from avatarstream.bench.gpu.plot import plot
from avatarstream.bench.gpu.precision import backend_flags, gpu_kind
from avatarstream.bench.gpu.product import DRY_RUN_RENDERER, build_product, warm_up
from avatarstream.bench.gpu.sessions import STEPS, sessions_per_gpu
from avatarstream.bench.gpu.stage_budget import stage_budget
from avatarstream.bench.gpu.targets import judge
from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.checkpoint import random_motion_generator, small_motion_generator
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks

# H100 estimates in seconds per section (setup: random weights written and loaded, one warm-up stream)
# (the low-latency config's sessions and audio-to-mouth come right after the default's, before everything else)
# sessions: steps of warm_s + measure_s + 2 s (+ 0.5 s per session): full 6.5 s, 1..16 in 48 s; low 5.5 s, 1..8 in
# 30 s; quick 5.5 s, 1..8 in 30 s, low 5 s, 1..8 in 28 s. Audio-to-mouth: ~2 s per onset round + settle + open.
PLAN = {"setup": 60, "sessions": 48, "audio_to_mouth": 28, "low_latency_sessions": 30,
        "low_latency_audio_to_mouth": 28, "latency_cost": 8, "denoiser_cost": 8, "first_frame": 12,
        "stage_budget": 22, "renderer": 14, "parity": 3, "joyvasa": 10, "worker": 13, "motion_worker": 14,
        "torch_compile": 60}
QUICK_PLAN = {"setup": 60, "sessions": 32, "audio_to_mouth": 18, "low_latency_sessions": 28,
              "low_latency_audio_to_mouth": 18, "first_frame": 10}
# The whole check by its own clock; the device call's limit is this + 70 s (docs/gpu-check.md: 430 s and 240 s),
# and the two calls plus the machine's start fit the 15 minutes of device time.
BUDGET_S = 360.0
QUICK_BUDGET_S = 170.0
# torch.compile runs last, in a child, with its own slot of the plan (PLAN["torch_compile"]) as its hard limit
# (or what is left, if less): it cannot take time from the sections before it.
COMPILE_MAX_S = 60.0
# The device calls of docs/gpu-check.md (bench/gpu/device_check.sh guards the check at 420 / 210 s): one full call
# and a --quick rerun within the 15 minutes of device time, the machine's start included
DEVICE_CALL_S = {"full": 450, "quick": 240}
DEVICE_TIME_S = 900
DRY_RUN_HANG_LIMITS_S: dict[str, float] = {}  # the dry run's wait limit per section (tests inject a hang)


def _settings(dry_run: bool, quick: bool) -> dict:
    if dry_run:
        # short windows: the dry run checks that every field is written (a 0.5 s record holds ~12 ticks)
        return {"steps": (1, 2), "warm_s": 0.25, "measure_s": 0.5, "a2m_onsets": 1, "first_frames": 2, "reps": 1,
                "low_steps": (1,), "low_warm_s": 0.25, "low_measure_s": 0.5, "cost_audio_s": 2.0, "cost_reps": 1,
                "renderer_batches": components.BATCHES[:2], "worker_sessions": (1, 2), "worker_s": 0.4,
                "motion_s": 0.3, "joyvasa_reps": 1, "denoiser_windows": (1, 2)}
    if quick:
        return {"steps": STEPS, "warm_s": 1.0, "measure_s": 2.5, "a2m_onsets": 5, "first_frames": 10,
                "low_steps": STEPS, "low_warm_s": 1.0, "low_measure_s": 2.0}
    return {"steps": STEPS, "warm_s": 1.5, "measure_s": 3.0, "a2m_onsets": 8, "first_frames": 12, "reps": 10,
            "low_steps": STEPS, "low_warm_s": 1.0, "low_measure_s": 2.5, "cost_audio_s": 4.0, "cost_reps": 2,
            "renderer_batches": components.BATCHES, "worker_sessions": components.SESSIONS, "worker_s": 3.0,
            "motion_s": 2.0, "joyvasa_reps": 4, "denoiser_windows": (1, 2, 4, 8)}


def _reach(sessions: dict) -> tuple[int | None, int, int]:
    """(largest N at 25 fps, frames per render batch, windows per DiT call) the workers reached there."""
    rows = sessions.get("rows") or []
    largest = sessions.get("largest_n_at_25fps")
    row = next((r for r in rows if r["sessions"] == largest), rows[-1] if rows else None)
    if row is None:
        return largest, 8, 1
    return largest, max(1, row["render_max_batch"]), max(1, row["motion_max_windows_per_call"])


def run_bench(opts) -> dict:
    """``opts``: ``avatarstream.cli.bench.BenchOptions`` (``dry_run``: CPU, miniature networks, short runs;
    ``quick``: items 1-4 only)."""
    dry_run = bool(getattr(opts, "dry_run", False))
    quick = bool(getattr(opts, "quick", False))
    if not dry_run and not torch.cuda.is_available():
        raise EngineError("the gpu suite needs a CUDA GPU (torch.cuda.is_available() is False); "
                          "--dry-run runs the same code on CPU with miniature networks")
    device = torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dry_run:
        torch.set_num_threads(2)
    plan = QUICK_PLAN if quick else PLAN
    deadline = Deadline(QUICK_BUDGET_S if quick else BUDGET_S)
    if dry_run:  # the CPU is not the H100 the estimates are for: the dry run runs every section
        deadline.total_s = 3600.0
        deadline.section_limits = False
    cfg = {**_settings(dry_run, quick), "out_dir": out_dir}
    t0 = time.perf_counter()
    result: dict = {
        "mode": "dry-run (CPU, miniature networks)" if dry_run else "cuda (random weights of the real shapes)",
        "quick": quick, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
        "gpu": gpu_kind(device), "backends": backend_flags(),
        "plan_s": dict(plan), "budget_s": deadline.total_s if not dry_run else None,
    }
    if dry_run:
        deadline.hang_limits.update(DRY_RUN_HANG_LIMITS_S)

    def save() -> None:
        """Everything measured so far: gpu.json (through ``opts.checkpoint``), gpu.png, torch_compile.json."""
        snapshot = {**result, "targets": judge(result, dry_run), "time_budget": deadline.report(),
                    "seconds": round(time.perf_counter() - t0, 1)}
        write_compile_json(out_dir, result.get("torch_compile"))
        try:
            snapshot["plot"] = str(plot(snapshot, out_dir / "gpu.png"))
        except Exception as exc:  # noqa: BLE001 - a plot of a partial result may fail; the JSON must not
            snapshot["plot_error"] = f"{type(exc).__name__}: {exc}"
        getattr(opts, "checkpoint", lambda _r: None)(snapshot)

    deadline.on_section = save
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        holder: dict = {}

        def setup() -> dict:
            product = holder["product"] = build_product(dry_run, Path(tmp), device)
            out = product.describe()
            try:  # a failing warm-up is reported; the sections still run (and report their own failures)
                out["warm_up_s"] = round(warm_up(product), 1)
            except Exception as exc:  # noqa: BLE001
                out["warm_up_error"] = f"{type(exc).__name__}: {exc}"
            return out

        result["product"] = deadline.run("setup", plan["setup"], setup)
        product = holder.get("product")
        if product is None:  # the engine did not build: still measure the networks on their own
            why = f"the engine did not build: {result['product'].get('error') or result['product'].get('skipped')}"
            for name in ("sessions", "memory", "fps", "audio_to_mouth", "low_latency", "latency_cost",
                         "latency_configs", "first_frame", "stage_budget"):
                result[name] = {"skipped": why}
            if not quick:
                networks = LivePortraitNetworks.random(0, config=DRY_RUN_RENDERER if dry_run else None).to(device)
                model = (small_motion_generator(0) if dry_run else random_motion_generator(0)).to(device).eval()
                _component_sections(result, networks, model, device, deadline, plan, cfg, batch=8)
        else:
            try:
                _run_sections(result, product, deadline, plan, cfg, dry_run, quick)
            finally:
                product.engine.close()
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result.setdefault("torch_compile", {"skipped": "not reached"})
    write_compile_json(out_dir, result["torch_compile"])
    result["targets"] = judge(result, dry_run)
    result["time_budget"] = deadline.report()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["plot"] = str(plot(result, out_dir / "gpu.png"))
    return result


def write_compile_json(out_dir: Path, section: dict | None) -> None:
    """``torch_compile.json`` always exists with a ``status`` (the probe's, or why it did not run yet / at all)."""
    section = section if isinstance(section, dict) else {}
    if "status" in section:
        out = dict(section)
    else:
        why = section.get("skipped") or section.get("error") or "not reached yet"
        out = {"status": f"{'error' if 'error' in section else 'not run'}: {why}", "rows": [], "compile_s": {}}
    (out_dir / "torch_compile.json").write_text(json.dumps(out, indent=2, default=str))


def _a2m_counts(sessions: dict) -> list[int]:
    largest = _reach(sessions)[0]
    return [1] + ([largest] if largest and largest != 1 else [])  # the dry run's CPU holds no N: 1 only


def _run_sections(result: dict, product, deadline: Deadline, plan: dict, cfg: dict, dry_run: bool, quick: bool) -> None:
    device = product.device

    def a2m(prefix: str, sessions: dict) -> dict:
        """Item 3 at the engine's current streaming config; stops at its own estimate."""
        name = f"{prefix}audio_to_mouth"
        # at 1 session: a2m_onsets onsets; at the largest N every session probes, at least 2 each (1 in the dry run)
        return deadline.run(name, plan[name], lambda: audio_to_mouth(
            product, _a2m_counts(sessions), onsets_total=cfg["a2m_onsets"], onsets_min=1 if dry_run else 2,
            settle_s=0.3 if dry_run else 1.0, wait_s=1.5 if dry_run else 3.0,
            time_left=deadline.section_left(plan[name])))

    configs = {name: stream_config(product, name) for name in LATENCIES}
    with streaming(product, "default"):
        result["sessions"] = deadline.run("sessions", plan["sessions"], lambda: sessions_per_gpu(
            product, deadline, steps=cfg["steps"], warm_s=cfg["warm_s"], measure_s=cfg["measure_s"],
            stop_below=not dry_run, time_left=deadline.section_left(plan["sessions"])))
        result["audio_to_mouth"] = a2m("", result["sessions"])
    sessions = result["sessions"]
    result["memory"] = sessions.get("memory", {k: v for k, v in sessions.items() if k in ("skipped", "error")})
    result["fps"] = {"per_session_min": {r["sessions"]: r["fps_min"] for r in sessions.get("rows", [])},
                     "per_session_p5": {r["sessions"]: r["fps_p5"] for r in sessions.get("rows", [])},
                     "largest_n_at_25fps": sessions.get("largest_n_at_25fps")}
    with streaming(product, "low") as low:
        low_latency = result["low_latency"] = {
            "engine_option": "latency='low' (avatar serve --latency low)",
            "session_options_source": product.session_options_source,
            "chunk_frames": low.chunk_frames, "lookahead_ms": low.lookahead_ms}
        name = "low_latency_sessions"
        low_latency["sessions"] = deadline.run(name, plan[name], lambda: sessions_per_gpu(
            product, deadline, steps=cfg["low_steps"], warm_s=cfg["low_warm_s"], measure_s=cfg["low_measure_s"],
            stop_below=not dry_run, time_left=deadline.section_left(plan[name])))
        low_latency["audio_to_mouth"] = a2m("low_latency_", low_latency["sessions"])
    if quick:
        result["latency_cost"] = {"skipped": "--quick answers items 1-4 only"}
        result["denoiser_cost"] = {"skipped": "--quick answers items 1-4 only"}
    else:
        result["latency_cost"] = deadline.run("latency_cost", plan["latency_cost"], lambda: window_cost(
            product, cfg["cost_audio_s"], cfg["cost_reps"]))
        result["denoiser_cost"] = deadline.run("denoiser_cost", plan["denoiser_cost"], lambda: denoiser_cost(
            product, cfg["reps"], windows=cfg["denoiser_windows"]))
    result["latency_configs"] = compare(result, configs)
    result["first_frame"] = deadline.run("first_frame", plan["first_frame"],
                                         lambda: first_frame(product, cfg["first_frames"], time_left=deadline.left))
    if quick:
        for name in ("stage_budget", "torch_compile", "renderer", "parity", "joyvasa", "worker", "motion_worker"):
            result[name] = {"skipped": "--quick answers items 1-4 only"}
        return
    _, batch, windows = _reach(sessions)
    result["stage_budget"] = deadline.run("stage_budget", plan["stage_budget"],
                                          lambda: stage_budget(product, batch, windows, cfg["reps"]))
    _component_sections(result, product.engine.renderer("human").networks, product.engine.model, device, deadline,
                        plan, cfg, batch)
    if isinstance(result["stage_budget"], dict) and "rows" in result["stage_budget"]:
        result["stage_budget"]["rows"] += result["torch_compile"].get("rows", [])


def _component_sections(result: dict, networks, model, device: torch.device, deadline: Deadline, plan: dict,
                        cfg: dict, batch: int) -> None:
    """The first check's sections on ``networks`` / ``model``, then torch.compile (not in the dry run)."""
    dry_run = device.type == "cpu"
    result["renderer"] = deadline.run("renderer", plan["renderer"], lambda: components.renderer_latency(
        networks, device, cfg["reps"], batches=cfg["renderer_batches"]))
    result["parity"] = deadline.run("parity", plan["parity"], lambda: components.fp16_parity(networks, device))
    result["joyvasa"] = deadline.run("joyvasa", plan["joyvasa"], lambda: components.joyvasa_latency(
        model, device, cfg["joyvasa_reps"]))
    result["worker"] = deadline.run("worker", plan["worker"], lambda: components.worker_throughput(
        networks, device, seconds=cfg["worker_s"], sessions_list=cfg["worker_sessions"]))
    result["motion_worker"] = deadline.run("motion_worker", plan["motion_worker"], lambda: components.
                                           motion_worker_throughput(model, device, seconds=cfg["motion_s"]))
    # torch.compile last, in a child process, with the time left (up to 150 s) as its hard limit
    if dry_run:  # tests/joyvasa/test_gpu_bench.py runs the probe's child on its own (a dynamo trace on the CPU)
        result["torch_compile"] = {"skipped": "dry run: torch.compile is tried on the GPU"}
        return
    # the workers' batch first (the product's case), batch 1 if its slot has time left
    result["torch_compile"] = deadline.run("torch_compile", min(plan["torch_compile"], 20.0), lambda: probe(
        cfg["out_dir"] / "torch_compile.json", [batch] + ([1] if batch != 1 else []), dry_run,
        timeout_s=max(5.0, min(COMPILE_MAX_S, deadline.left() - 5.0)), reps=cfg["reps"]))


"""``avatar bench --engine export``: every stage on every backend, side by side in one run.

For each stage, backend (eager torch, onnxruntime, TensorRT) and batch size it measures the median latency,
derives frames (or windows) per second, the speed ratio against eager PyTorch running the same graph on the
same device, and the parity of the outputs against that eager run. Writes ``export_bench.png`` (per-stage
latency bars at batch 1; fps against batch for the batched stages) next to the suite's JSON.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.timing import device_sync
from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage, stage_names
from avatarstream.engines.runtimes.stage_runtime import BACKENDS, StageRuntime, open_runtime
from avatarstream.export.parity import compare_outputs

CPU_MAX_BATCH = 2  # warp + SPADE takes seconds per frame on CPU; larger batches only on a GPU


def _backends(requested: str, device: str) -> tuple[list[str], dict[str, str]]:
    wanted = list(BACKENDS) if requested == "all" else [b.strip() for b in requested.split(",")]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise EngineError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)} or all")
    skipped: dict[str, str] = {}
    if "tensorrt" in wanted:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            skipped["tensorrt"] = "tensorrt not installed"
        else:
            if not torch.cuda.is_available() or device != "cuda":
                skipped["tensorrt"] = "no CUDA GPU" if not torch.cuda.is_available() else "needs --device cuda"
    if "onnxruntime" in wanted and device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            skipped["onnxruntime"] = "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda but no CUDA GPU is visible")
    return [b for b in wanted if b not in skipped], skipped


def _time_runtime(runtime: StageRuntime, feeds: dict[str, torch.Tensor], device: str, *, repeats: int,
                  budget_s: float) -> tuple[list[float], dict[str, torch.Tensor]]:
    sync = device_sync(device)
    t0 = time.perf_counter()
    out = runtime.run(feeds)  # warm-up (CUDA-graph capture, ORT allocations)
    sync()
    first = time.perf_counter() - t0
    n = max(1, min(repeats, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = runtime.run(feeds)
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times, {k: v.detach().float().cpu() for k, v in out.items()}


def run_bench(opts, stages: Sequence[str] | None = None) -> dict:
    """``opts`` is ``avatarstream.cli.bench.BenchOptions``; ``stages`` limits the stages (default: all)."""
    from avatarstream.export.exporter import export_all

    device = "cuda" if opts.device == "cuda" else "cpu"
    backends, skipped = _backends(opts.backend, device)
    names = list(stages) if stages is not None else stage_names()
    source = NetworkSource(weights=Path(opts.weights) if opts.weights else None)
    export_dir = Path(opts.out_dir) / "export-engines"
    needs_onnx = any(b in ("onnxruntime", "tensorrt") for b in backends)
    exported = None
    if needs_onnx:
        exported = export_all(source, export_dir, stages=names,
                              backend="tensorrt" if "tensorrt" in backends else "onnx",
                              fp16=bool(opts.fp16))  # FP16 graphs for onnxruntime and TensorRT
    repeats = 3 if opts.quick else 20
    budget_s = 2.0 if opts.quick else 20.0

    from tqdm import tqdm

    results: dict[str, dict] = {}
    for name in tqdm(names, desc="bench", unit="stage"):
        spec = get_stage(name)
        batches = spec.bench_batches[:1] if opts.quick else spec.bench_batches
        if device == "cpu":
            batches = tuple(b for b in batches if b <= CPU_MAX_BATCH) or batches[:1]
        runtimes: dict[str, StageRuntime] = {}
        for backend in backends:
            runtimes[backend] = open_runtime(
                backend, device=device, module_factory=lambda spec=spec: spec.build(source),
                input_names=spec.input_names, output_names=spec.output_names,
                onnx_path=exported.graphs[name].path if exported else None,
                engine_path=exported.engines.get(name) if exported else None,
                fp16=bool(opts.fp16) and backend == "torch" and device == "cuda" and not spec.fp32_only,
                threads=torch.get_num_threads() if device == "cpu" else None,  # same CPU threads as eager torch
            )
        stage_result: dict[str, dict] = {}
        for batch in batches:
            inputs = spec.example_inputs(batch, torch.Generator().manual_seed(11))
            feeds = {n: t.to(device) for n, t in zip(spec.input_names, inputs)}
            rows = int(inputs[0].shape[0])
            per_backend: dict[str, dict] = {}
            reference = None
            for backend in backends:
                times, out = _time_runtime(runtimes[backend], feeds, device, repeats=repeats, budget_s=budget_s)
                median = statistics.median(times)
                entry = {"median_ms": round(median, 3), "min_ms": round(min(times), 3), "runs": len(times),
                         "items_per_s": round(batch * 1000.0 / median, 3)}
                if backend == "torch":
                    reference = out
                elif reference is not None:
                    errors = compare_outputs(reference, out, spec.output_names)
                    entry["parity_max_abs"] = max(e.max_abs for e in errors)
                    entry["parity_relative"] = max(e.relative for e in errors)
                per_backend[backend] = entry
            if "torch" in per_backend:
                eager = per_backend["torch"]["median_ms"]
                for entry in per_backend.values():
                    entry["speedup_vs_eager_torch"] = round(eager / entry["median_ms"], 3)
            stage_result[str(batch)] = {"rows": rows, **per_backend}
        results[name] = stage_result
        del runtimes

    report = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "fp16": bool(opts.fp16), "backends": backends, "skipped_backends": skipped,
        "torch_threads": torch.get_num_threads(), "weights": "random (real shapes)" if source.weights is None else str(source.weights),
        "stages": results,
        "renderer_vs_eager": _renderer_ratio(results),
        "units": "median_ms per call; items_per_s = batch / latency (frames for image stages, windows for dit_denoise)",
    }
    report["plot"] = str(_plot(results, backends, Path(opts.out_dir) / "export_bench.png"))
    return report


def _renderer_ratio(results: dict) -> dict:
    """warp + SPADE (the per-frame renderer): runtime speed over eager torch, per backend and batch."""
    ratios: dict[str, dict] = {}
    for batch, entry in results.get("warping_spade", {}).items():
        for backend, m in entry.items():
            if isinstance(m, dict) and backend != "torch" and "speedup_vs_eager_torch" in m:
                ratios.setdefault(backend, {})[batch] = m["speedup_vs_eager_torch"]
    return ratios


def _plot(results: dict, backends: list[str], path: Path) -> Path:
    plt = pyplot()

    fig, (ax_lat, ax_fps) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(results)
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        values = []
        for name in names:
            first = results[name][min(results[name], key=int)]
            values.append(first.get(backend, {}).get("median_ms", 0.0))
        ax_lat.bar([x + i * width for x in range(len(names))], values, width, label=backend)
    ax_lat.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(names))])
    ax_lat.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency at the smallest batch (ms, log)")
    ax_lat.set_title("per-stage latency")
    ax_lat.legend()
    for name in names:
        batches = sorted(results[name], key=int)
        if len(batches) < 2 and name != "warping_spade":
            continue
        for backend in backends:
            xs = [int(b) for b in batches if backend in results[name][b]]
            ys = [results[name][b][backend]["items_per_s"] for b in batches if backend in results[name][b]]
            if xs:
                ax_fps.plot(xs, ys, marker="o", label=f"{name} / {backend}")
    ax_fps.set_yscale("log")
    ax_fps.set_xlabel("batch")
    ax_fps.set_ylabel("items per second, log (frames; windows for dit_denoise)")
    ax_fps.set_title("throughput vs batch")
    if ax_fps.lines:
        ax_fps.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
    return path

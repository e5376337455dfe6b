"""``avatar bench --engine liveportrait``: per-network milliseconds at batch 1 and batch 8.

CPU always (fp32); with ``--device cuda`` also CUDA fp32 and fp16 (autocast, as LivePortrait's
``flag_use_half_precision``). Weights: ``--weights DIR`` (official layout) or random weights of the
real shapes. Writes ``liveportrait.png`` (ms per frame per network) next to the JSON.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch

from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks, load_networks

BATCHES = (1, 8)
NETWORKS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator", "stitching")


def _inputs(batch: int, device: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    kp_s = (torch.rand(batch, 21, 3, generator=g) - 0.5).to(device)
    return {
        "image": torch.rand(batch, 3, 256, 256, generator=g).to(device),
        "feature_3d": torch.randn(batch, 32, 16, 64, 64, generator=g).to(device) * 0.5,
        "kp_source": kp_s,
        "kp_driving": kp_s + 0.02 * torch.randn(batch, 21, 3, generator=g).to(device),
        "warped": torch.randn(batch, 256, 64, 64, generator=g).to(device) * 0.5,
        "stitch_in": torch.randn(batch, 126, generator=g).to(device) * 0.3,
    }


def _calls(nets: LivePortraitNetworks, x: dict[str, torch.Tensor]):
    return {
        "appearance_feature_extractor": lambda: nets.appearance_feature_extractor(x["image"]),
        "motion_extractor": lambda: nets.motion_extractor(x["image"]),
        "warping_module": lambda: nets.warping_module(x["feature_3d"], x["kp_driving"], x["kp_source"]),
        "spade_generator": lambda: nets.spade_generator(x["warped"]),
        "stitching": lambda: nets.stitching(x["stitch_in"]),
    }


def time_call(fn, device: str, iters: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_device(nets: LivePortraitNetworks, device: str, fp16: bool, quick: bool) -> dict:
    nets.to(device)
    g = torch.Generator().manual_seed(0)
    result: dict[str, dict] = {}
    for batch in BATCHES:
        x = _inputs(batch, device, g)
        calls = _calls(nets, x)
        # CPU batch 8 of the full networks takes minutes: one timed run; GPUs get proper repetitions
        iters = 1 if quick or (device == "cpu" and batch > 1) else (3 if device == "cpu" else 20)
        warmup = 0 if quick or device == "cpu" and batch > 1 else (1 if device == "cpu" else 5)
        for name in NETWORKS:
            amp = (torch.autocast("cuda", dtype=torch.float16) if fp16 and name != "stitching"
                   else contextlib.nullcontext())
            with torch.inference_mode(), amp:
                times = time_call(calls[name], device, iters, warmup)
            ms = statistics.median(times)
            result.setdefault(name, {})[f"batch_{batch}"] = {
                "ms": round(ms, 3), "ms_per_frame": round(ms / batch, 3), "runs": len(times)}
        per_frame = sum(result[n][f"batch_{batch}"]["ms_per_frame"] for n in ("warping_module", "spade_generator"))
        result.setdefault("render_frame_w_plus_g", {})[f"batch_{batch}"] = {
            "ms_per_frame": round(per_frame, 3), "fps": round(1000 / per_frame, 2)}
    return result


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(NETWORKS)
    configs = [(setup, b) for setup in results for b in BATCHES]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(configs))
    for i, (setup, b) in enumerate(configs):
        vals = [results[setup][n][f"batch_{b}"]["ms_per_frame"] for n in names]
        ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"{setup}, batch {b}")
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (log)")
    ax.set_title("LivePortrait networks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(opts) -> dict:
    torch.manual_seed(0)
    if opts.weights:
        nets = load_networks(opts.weights, "human")
        weights = str(opts.weights)
    else:
        nets = LivePortraitNetworks.random(seed=0)
        weights = "random (official shapes)"
    results = {"cpu_fp32": bench_device(nets, "cpu", False, opts.quick)}
    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but no CUDA GPU is available")
        results["cuda_fp32"] = bench_device(nets, "cuda", False, opts.quick)
        results["cuda_fp16"] = bench_device(nets, "cuda", True, opts.quick)
        nets.to("cpu")
    png = Path(opts.out_dir) / "liveportrait.png"
    plot(results, png)
    return {"weights": weights, "threads": torch.get_num_threads(), "results": results, "plot": str(png)}

"""``avatar bench --engine loopy``: per-frame render time of the Loopy pipeline.

Without ``--weights``: random weights; always the tiny config (64x64) on the CPU, and with
``--device cuda`` also the tiny and the full SD-1.5-sized config (512x512, fp16). With
``--weights DIR``: that trained model on ``--device``. Timings cover everything per frame: wav2vec2 features,
reference net, 25 DDIM steps x 3 guidance passes, VAE decode, MP4 mux. Writes a PNG of the
per-stage split next to the JSON.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import speechlike_audio
from avatarstream.engines.loopy.checkpoint import load_weights_dir, random_weights
from avatarstream.engines.loopy.config import get_config
from avatarstream.engines.loopy.pipeline import LoopyPipeline


def bench_config(name: str, device: str, seconds: float, steps: int, out_dir, weights_dir=None) -> dict:
    if weights_dir is not None:
        weights = load_weights_dir(weights_dir)
        cfg = weights.config
    else:
        cfg = get_config(name)
        weights = random_weights(cfg, seed=0)
    pipe = LoopyPipeline(weights, device)
    portrait = (np.random.default_rng(1).random((cfg.resolution, cfg.resolution, 3)) * 255).astype(np.uint8)
    audio = speechlike_audio(seconds)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = pipe.render(portrait, audio, out_dir / f"loopy-{name}.mp4", work_dir=out_dir / f"loopy-{name}-work",
                         num_steps=steps, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    frames = result.num_frames
    entry = {
        "config": cfg.name, "device": device, "dtype": str(pipe.dtype).replace("torch.", ""),
        "resolution": cfg.resolution, "frames": frames, "clip_frames": cfg.clip_frames, "ddim_steps": steps,
        "guidance_passes": 3, "wall_s": round(wall, 3), "ms_per_frame": round(1000 * wall / frames, 2),
        "stage_ms_per_frame": {k: round(v / frames, 2) for k, v in result.stage_ms.items()},
        "weights": str(weights_dir) if weights_dir is not None else "random",
        "load_avg_1min_after": load_average()[0],
        "parameters_m": round(sum(p.numel() for p in weights.model.parameters()) / 1e6, 2),
    }
    if device == "cuda":
        entry["gpu_peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return entry


def _label(e: dict) -> str:
    return f"{e['config']} {e['resolution']}px\n{e['device']} {e['dtype']}"


def _plot(entries: list[dict], path) -> None:
    plt = pyplot()

    stages = sorted({s for e in entries for s in e["stage_ms_per_frame"]})
    fig, ax = plt.subplots(figsize=(7, 3 + 0.4 * len(entries)))
    labels = [_label(e) for e in entries]
    left = np.zeros(len(entries))
    for s in stages:
        vals = np.array([e["stage_ms_per_frame"].get(s, 0.0) for e in entries])
        ax.barh(labels, vals, left=left, label=s)
        left += vals
    ax.set_xscale("log" if left.max() / max(left.min(), 1e-9) > 50 else "linear")
    ax.set_xlabel("ms per output frame (25 DDIM steps x 3 passes)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Loopy render time per frame")
    save_figure(fig, path, dpi=120)


def run_bench(opts) -> dict:
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = 5 if opts.quick else 25
    seconds = 0.48 if opts.quick else min(float(opts.seconds), 2.0)
    if opts.weights:  # a trained weights directory on the chosen device
        entries = [bench_config("weights", opts.device, seconds, steps, out_dir, opts.weights)]
        _plot(entries, out_dir / "loopy.png")
        return {"runs": entries, "plot": str(out_dir / "loopy.png")}
    entries = [bench_config("tiny", "cpu", seconds, steps, out_dir)]
    if opts.device == "cuda":
        if not torch.cuda.is_available():
            from avatarstream.engines.base import EngineError

            raise EngineError("--device cuda requested but no CUDA GPU is available")
        entries.append(bench_config("tiny", "cuda", seconds, steps, out_dir))
        entries.append(bench_config("full", "cuda", seconds, steps, out_dir))
    _plot(entries, out_dir / "loopy.png")
    return {"runs": entries, "plot": str(out_dir / "loopy.png"),
            "note": "random weights of the real shapes; per-frame time includes every pipeline stage"}

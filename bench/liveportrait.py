"""``avatar bench --engine liveportrait``: per-network milliseconds at batch 1 and batch 8.

CPU always (fp32); with ``--device cuda`` also CUDA fp32 and fp16 (autocast, as LivePortrait's
``flag_use_half_precision``). Weights: ``--weights DIR`` (official layout) or random weights of the
real shapes. Writes ``liveportrait.png`` (ms per frame per network) next to the JSON.

``paste_back``: the per-frame paste of a rendered 512 crop into the bundled human and cat portraits (512 framing),
three ways timed in interleaved rounds: the reference function as it ran per frame before (``paste_back``, the
mask warped every frame), ``PasteBack(keep_detail=False)`` (the same formula bit for bit, per-portrait parts
cached) and ``PasteBack()`` (the default: keeps the picture's detail where the render is unchanged); with the
ratios to the first. Written to ``paste_back.png``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.timing import call_times_ms, device_sync
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks, load_networks
from avatarstream.engines.liveportrait.source import (PasteBack, crop_transform, crop_transform_animal,
                                                     crop_with_transform, paste_back, reframe, resize_to_limit)

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
                times = call_times_ms(calls[name], iters, warmup=warmup, sync=device_sync(device))
            ms = statistics.median(times)
            result.setdefault(name, {})[f"batch_{batch}"] = {
                "ms": round(ms, 3), "ms_per_frame": round(ms / batch, 3), "runs": len(times)}
        per_frame = sum(result[n][f"batch_{batch}"]["ms_per_frame"] for n in ("warping_module", "spade_generator"))
        result.setdefault("render_frame_w_plus_g", {})[f"batch_{batch}"] = {
            "ms_per_frame": round(per_frame, 3), "fps": round(1000 / per_frame, 2)}
    return result


def _grouped_bars(path: Path, groups: list[str], series: list[tuple[str, list[float]]], *, ylabel: str,
                  title: str, figsize: tuple[float, float], tick_labels: list[str], tick_size: float | None = None,
                  log: bool = False) -> None:
    """One bar per (group, series), the series side by side within each group; written to ``path``."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        ax.bar([j + i * width for j in range(len(groups))], values, width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(tick_labels, fontsize=tick_size)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def plot(results: dict[str, dict], path: Path) -> None:
    names = list(NETWORKS)
    series = [(f"{setup}, batch {b}", [results[setup][n][f"batch_{b}"]["ms_per_frame"] for n in names])
              for setup in results for b in BATCHES]
    _grouped_bars(path, names, series, ylabel="ms per frame (log)", title="LivePortrait networks", figsize=(10, 4.5),
                  tick_labels=[n.replace("_", "\n") for n in names], tick_size=8, log=True)


PASTE_WAYS = ("reference_per_frame", "reference_cached", "keep_detail")


def _paste_sources() -> dict:
    """The bundled human and cat, cropped (LivePortrait scale 2.3) and framed into 512 as the joyvasa engine does."""
    from avatarstream.engines.face import detect_face
    from avatarstream.engines.face.framing import frame_portrait
    from avatarstream.engines.portraits import load_portrait

    out = {}
    for name, kind in (("human", "human"), ("cat", "animal")):
        image = resize_to_limit(load_portrait(name, kind=kind).image)
        face = detect_face(image, kind)
        m = (crop_transform_animal if face.kind == "animal" else crop_transform)(face.points)
        framed = frame_portrait(image, face, 512)
        out[name] = reframe(crop_with_transform(image, m), framed.matrix, framed.image)
    return out


def bench_paste_back(quick: bool, rounds: int = 5, frames: int = 40) -> dict:
    """ms per pasted frame, the three ways interleaved round by round (medians over rounds), and their ratios."""
    rng = np.random.default_rng(0)
    result = {}
    for name, source in _paste_sources().items():
        rendered = source.crop.copy()  # a render moving the mouth region, unchanged elsewhere
        rendered[330:420, 190:330] = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
        ways = {"reference_per_frame": lambda g, s=source: paste_back(g, s),
                "reference_cached": PasteBack(source, keep_detail=False), "keep_detail": PasteBack(source)}
        times: dict[str, list[float]] = {w: [] for w in PASTE_WAYS}
        n = 5 if quick else frames
        for _ in range(2 if quick else rounds):
            for way in PASTE_WAYS:
                fn = ways[way]
                fn(rendered)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn(rendered)
                times[way].append((time.perf_counter() - t0) * 1000 / n)
        ms = {w: round(statistics.median(times[w]), 3) for w in PASTE_WAYS}
        result[name] = {"frame": list(source.image.shape[:2]), "ms_per_frame": ms, "frames_per_round": n,
                        "rounds": len(times["keep_detail"]),
                        "ratio_to_reference_per_frame": {w: round(ms[w] / ms["reference_per_frame"], 3)
                                                         for w in PASTE_WAYS}}
    return result


def plot_paste_back(result: dict, path: Path) -> None:
    names = list(result)
    series = [(way.replace("_", " "), [result[n]["ms_per_frame"][way] for n in names]) for way in PASTE_WAYS]
    _grouped_bars(path, names, series, ylabel="ms per frame (CPU)",
                  title="paste-back of a 512 render into the 512 framing", figsize=(7, 3.5), tick_labels=names)


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
    pasted = bench_paste_back(opts.quick)
    paste_png = Path(opts.out_dir) / "paste_back.png"
    plot_paste_back(pasted, paste_png)
    return {"weights": weights, "threads": torch.get_num_threads(), "results": results, "plot": str(png),
            "paste_back": pasted, "paste_back_plot": str(paste_png)}

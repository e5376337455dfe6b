"""Item 5, the stage budget: ms per output frame of every stage of a joyvasa frame, at batch 1 and at the batch
the shared workers reached with the most sessions (``sessions``), each stage timed alone (synchronised,
median of ``reps``), so the limit is visible.

Stages (per frame = per call / frames the call serves):

* ``audio_encoder``: HuBERT on one streaming window's audio (1 s of context + chunk + lookahead), once per
  chunk (``chunk_frames`` frames); batch k = k sessions' windows in one call (the product runs batch 1, in each
  session's thread);
* ``dit_step``: one denoiser call for k windows (2 k rows: guidance) x ``steps`` per window, per chunk;
* ``warping`` (W) and ``spade`` (G) for a batch of frames; ``warping+spade`` where the two run as one CUDA graph
  or one ``torch.compile`` d function;
* ``host_copy``: the rendered batch to uint8 host frames (``tensor_to_images``);
* ``keypoints``: the keypoint driver with LivePortrait's stitching MLP, as the product runs it for a render batch
  (numpy per frame, one stitching call per batch, its result left on the GPU), per frame;
* ``paste_back``: the render pasted into the portrait's framing (CPU, per frame, in each session's thread).

Modes: ``eager_fp32``; ``fp16_autocast`` (CUDA); ``cuda_graph`` (W+G FP16 as one graph per batch size, the DiT
step FP32 at one window); ``torch_compile`` (from ``compile_probe``, guarded). ``product`` sums, per frame, what
the engine runs today (W + G in FP16 autocast on CUDA, FP32 on CPU; DiT FP32 eager; batch 1 audio encoder) at
each batch; ``gpu_fps_ceiling`` is 1000 / its GPU part: frames per second one GPU could render if nothing else
limited it, ``/ 25`` sessions.
"""

from __future__ import annotations

import numpy as np
import torch

from avatarstream.bench.gpu.components import GraphedWarpDecode, median_ms, render_inputs
from avatarstream.bench.gpu.precision import cudnn_benchmark, fp32_precision
from avatarstream.bench.gpu.product import SIZE, Product
from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.engines.joyvasa.streaming import StreamingMotionGenerator
from avatarstream.engines.liveportrait.renderer import tensor_to_images

GPU_STAGES = ("audio_encoder", "dit_step", "warping", "spade", "host_copy")


def _autocast(device: torch.device, fp16: bool):
    return torch.autocast("cuda", dtype=torch.float16, enabled=fp16 and device.type == "cuda")


def _row(stage: str, mode: str, batch: int, ms_call: float, frames_per_call: float, **extra) -> dict:
    return {"stage": stage, "mode": mode, "batch": batch, "ms_per_call": round(ms_call, 3),
            "ms_per_frame": round(ms_call / frames_per_call, 3), **extra}


def renderer_rows(product: Product, batch: int, reps: int) -> list[dict]:
    device = product.device
    networks = product.engine.renderer("human").networks
    f_s, kp_s, kp_d = render_inputs(networks, batch, device, seed=batch)
    rows = []
    for mode, fp16 in (("eager_fp32", False), ("fp16_autocast", True)):
        if fp16 and device.type != "cuda":
            continue
        with torch.inference_mode(), _autocast(device, fp16), fp32_precision(tf32=False):
            warped = networks.warping_module(f_s, kp_driving=kp_d, kp_source=kp_s)["out"]

            def w():
                return networks.warping_module(f_s, kp_driving=kp_d, kp_source=kp_s)["out"]

            def g(warped=warped):
                return networks.spade_generator(warped)

            bench = torch.backends.cudnn.benchmark
            rows.append(_row("warping", mode, batch, median_ms(w, device, reps), batch, cudnn_benchmark=bench))
            rows.append(_row("spade", mode, batch, median_ms(g, device, reps), batch, cudnn_benchmark=bench))
            if device.type == "cuda":  # W's 3-D convolutions and grid sample: does cuDNN's autotuner change it?
                with cudnn_benchmark(not bench):
                    w()  # the autotuner's trials, untimed
                    rows.append(_row("warping", f"{mode}+cudnn_benchmark_{'on' if not bench else 'off'}", batch,
                                     median_ms(w, device, reps), batch, cudnn_benchmark=not bench))
            image = g().float()
    if device.type == "cuda":
        def graph_row() -> dict:
            graphed = GraphedWarpDecode(networks, f_s, kp_s, kp_d)
            return _row("warping+spade", "cuda_graph_fp16", batch,
                        median_ms(lambda: graphed(f_s, kp_s, kp_d), device, reps), batch)

        rows.append(_optional("warping+spade", "cuda_graph_fp16", batch, graph_row))
    rows.append(_row("host_copy", "eager_fp32", batch, median_ms(lambda: tensor_to_images(image), device, reps), batch))
    return rows


def _optional(stage: str, mode: str, batch: int, make_row) -> dict:
    """An optional mode's row, or the reason it failed (the eager rows stand either way)."""
    try:
        return make_row()
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA graph capture that fails on this machine
        return {"stage": stage, "mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}


def motion_rows(product: Product, windows: int, reps: int) -> list[dict]:
    """Audio encoder and one DiT step for ``windows`` streaming windows at once."""
    engine, device = product.engine, product.device
    model, cfg = engine.model, engine.stream_config
    chunk, length = cfg.chunk_frames, cfg.chunk_frames + cfg.lookahead_audio_frames
    steps = model.schedule().num_steps
    g = torch.Generator().manual_seed(windows)
    audio = torch.randn(windows, (cfg.context_frames + length) * SAMPLES_PER_FRAME, generator=g) * 0.1
    rows = []
    with torch.inference_mode(), fp32_precision(tf32=False):
        rows.append(_row("audio_encoder", "eager_fp32", windows,
                         median_ms(lambda: model.audio_features(audio), device, reps), windows * chunk,
                         calls_per_window=1))
        d, p, dtype = model.cfg.feature_dim, model.cfg.n_prev_motions, model.audio_feature_map.weight.dtype
        k = 2 * windows
        x = torch.randn(k, length, model.cfg.motion_feat_dim, generator=g).to(device, dtype)
        a = torch.randn(k, length, d, generator=g).to(device, dtype)
        pm = torch.randn(k, p, model.cfg.motion_feat_dim, generator=g).to(device, dtype)
        pa = torch.randn(k, p, d, generator=g).to(device, dtype)
        step = torch.full((k,), steps // 2, dtype=torch.long, device=device)
        net = model.denoising_net
        cross = net.cross_attention_terms(torch.cat([pa, a], 1))
        def dit_row(fp16: bool) -> dict:
            with _autocast(device, fp16):
                ms = median_ms(lambda: net(x, a, pm, pa, step, cross), device, reps)
            return _row("dit_step", "fp16_autocast" if fp16 else "eager_fp32", windows, ms * steps, windows * chunk,
                        ms_per_step=round(ms, 3), steps=steps)

        def graph_row() -> dict:
            from avatarstream.engines.joyvasa.cuda_graphs import GraphedDenoiser

            graphed = GraphedDenoiser(model, length)
            denoise = graphed.guided_denoiser(a[1:2].float(), pm[:1].float(), pa[:1].float())
            x1 = x[:2].float()
            ms = median_ms(lambda: denoise(x1, steps // 2), device, reps)
            return _row("dit_step", "cuda_graph_fp32", windows, ms * steps, windows * chunk,
                        ms_per_step=round(ms, 3), steps=steps)

        rows.append(dit_row(False))
        if device.type == "cuda":
            rows.append(_optional("dit_step", "fp16_autocast", windows, lambda: dit_row(True)))
            if windows == 1:
                rows.append(_optional("dit_step", "cuda_graph_fp32", windows, graph_row))
    return rows


def cpu_rows(product: Product, reps: int) -> list[dict]:
    """Keypoint driving (with stitching) and paste-back, per frame, on one prepared portrait."""
    engine = product.engine
    prepared = engine.prepare_portrait(product.portrait(), SIZE, engine.live_preset)
    gen = StreamingMotionGenerator(engine.model, engine.template, engine.stream_config, worker=engine.motion_worker())
    try:
        gen.push_audio(product.speech[8000: 8000 + 40 * SAMPLES_PER_FRAME])
        motions = gen.pull_motion()
    finally:
        gen.close()
    reference = gen.reference_frame or motions[0]
    driver = prepared.driver(reference, 1.0)
    motion = motions[len(motions) // 2]
    rendered = np.full((512, 512, 3), 128, np.uint8)
    device = torch.device("cpu")  # paste-back is CPU work
    batch = engine.batch_size  # the product drives a render batch at once: one stitching call, left on the device
    frames = [motion] * batch
    rows = [_row("keypoints", "eager_fp32", batch, median_ms(lambda: driver.batch(frames), product.device, reps),
                 batch, how="KeypointDriver.batch: numpy per frame, one stitching call per batch on the device")]
    if prepared.paste_back is not None:
        rows.append(_row("paste_back", "cpu", 1, median_ms(lambda: prepared.finish(rendered, SIZE), device, reps), 1))
    return rows


def product_totals(rows: list[dict], batch: int, windows: int, fp16: bool) -> dict:
    """What the engine runs per frame at ``batch`` frames / ``windows`` motion windows per call."""
    def pick(stage: str, mode: str, b: int) -> float | None:
        r = next((r for r in rows if r["stage"] == stage and r["mode"] == mode and r["batch"] == b), None)
        return None if r is None else r["ms_per_frame"]

    render_mode = "fp16_autocast" if fp16 else "eager_fp32"
    parts = {"audio_encoder": pick("audio_encoder", "eager_fp32", 1),
             "dit_step": pick("dit_step", "eager_fp32", windows),
             "warping": pick("warping", render_mode, batch), "spade": pick("spade", render_mode, batch),
             "host_copy": pick("host_copy", "eager_fp32", batch),
             "keypoints": next((r["ms_per_frame"] for r in rows if r["stage"] == "keypoints"), None),
             "paste_back": pick("paste_back", "cpu", 1)}
    gpu = sum(v for k, v in parts.items() if k in GPU_STAGES and v is not None)
    cpu = sum(v for k, v in parts.items() if k not in GPU_STAGES and v is not None)
    return {"batch": batch, "motion_windows": windows, "ms_per_frame": {k: v for k, v in parts.items()},
            "gpu_ms_per_frame": round(gpu, 3), "cpu_ms_per_frame": round(cpu, 3),
            "gpu_fps_ceiling": round(1000.0 / gpu, 1) if gpu > 0 else None,
            "sessions_ceiling": round(1000.0 / gpu / 25.0, 2) if gpu > 0 else None}


def stage_budget(product: Product, batch: int, windows: int, reps: int, compiled: dict | None = None) -> dict:
    """Rows at batch 1 and at ``batch`` frames / ``windows`` motion windows (the workers' reach)."""
    batches = sorted({1, max(1, batch)})
    window_counts = sorted({1, max(1, windows)})
    rows: list[dict] = []
    for b in batches:
        rows += renderer_rows(product, b, reps)
    for k in window_counts:
        rows += motion_rows(product, k, reps)
    rows += cpu_rows(product, reps)
    for r in (compiled or {}).get("rows", []):
        rows.append(r)
    errors = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    fp16 = product.engine.fp16
    pairs = [(1, 1)] + ([(batches[-1], window_counts[-1])] if (batches[-1], window_counts[-1]) != (1, 1) else [])
    totals = [product_totals(rows, b, k, fp16) for b, k in pairs]
    for r in rows:
        print(f"gpu check: stage {r['stage']:<14} {r['mode']:<16} batch {r['batch']}: {r['ms_per_frame']:8.3f} ms/frame")
    return {"batches": batches, "motion_windows": window_counts, "reps": reps, "rows": rows, "errors": errors,
            "product": totals,
            "note": "per output frame; the audio encoder and DiT once per chunk of chunk_frames frames"}

"""The GPU check's component sections (``avatar bench --suite gpu``), on the engine's own networks:

* ``renderer``: LivePortrait W + G (warping + SPADE) in ms per frame at batch 1, 2 and 8 for eager FP32, FP16
  autocast and the FP16 step replayed as a CUDA graph (one graph per batch size), with peak GPU memory;
* ``parity``: FP16 autocast against FP32 on the same frames (max abs error relative to the FP32 range);
* ``joyvasa``: one motion window (audio features + every diffusion step, classifier-free guidance batched) in
  ms, eager and with the denoising step as a CUDA graph (``engines.joyvasa.cuda_graphs``);
* ``worker``: the shared render worker (``engines.liveportrait.render_worker``) serving 1, 2, 4 and 8 concurrent
  sessions that each submit 2-frame chunks back to back: total and per-session fps, p50/p99 chunk latency,
  mean batch size.
* ``motion_worker``: the DiT denoising of streaming motion windows (the engine's default chunk + lookahead,
  every diffusion step) for 1, 2, 4 and 8 concurrent sessions that each denoise windows back to back, two ways
  side by side: ``alone`` (each session's thread samples on its own, as before the shared worker) and ``worker``
  (the shared ``engines.joyvasa.motion_worker``, one DiT call per step for all sessions): windows per second,
  motion frames per second per session (25 keeps up with real time), p50/p99 window latency, the worker/alone
  ratio and the worker's mean windows per call. The audio encoder is not included.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

import numpy as np
import torch

from avatarstream.bench.gpu.precision import fp32_precision
from avatarstream.bench.joyvasa import window_latency
from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.motion_worker import MotionWindow, MotionWorker, step_noise
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.offline import initial_noise, sample_window
from avatarstream.engines.joyvasa.options import MOTION_MAX_BATCH, MOTION_MAX_WAIT_MS
from avatarstream.engines.joyvasa.streaming import StreamingConfig
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks
from avatarstream.engines.liveportrait.render_worker import RenderWorker
from avatarstream.engines.liveportrait.renderer import PreparedAvatar, Renderer

BATCHES = (1, 2, 8)
SESSIONS = (1, 2, 4, 8)
CHUNK_FRAMES = 2  # frames per session request (80 ms of motion)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def render_inputs(networks: LivePortraitNetworks, batch: int, device: torch.device, seed: int = 0):
    """A source volume and keypoints of the networks' shapes (from running F and M on a random image)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 256, 256, generator=g).to(device)
    with torch.inference_mode():
        f_s = networks.appearance_feature_extractor(image)
        kp = networks.motion_extractor(image)["kp"].reshape(1, -1, 3)
    kp_s = kp.expand(batch, -1, -1).contiguous()
    kp_d = kp_s + 0.02 * torch.randn(kp_s.shape, generator=g).to(device)
    return f_s.expand(batch, *f_s.shape[1:]).contiguous(), kp_s, kp_d


class GraphedWarpDecode:
    """W + G for one batch size captured as a CUDA graph over static input buffers (FP16 autocast inside)."""

    def __init__(self, networks: LivePortraitNetworks, f_s, kp_s, kp_d, fp16: bool = True) -> None:
        device = f_s.device
        if device.type != "cuda":
            raise EngineError("CUDA graphs need a CUDA device")
        self.inputs = [t.clone() for t in (f_s, kp_s, kp_d)]

        def step():
            with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                warped = networks.warping_module(self.inputs[0], kp_driving=self.inputs[2], kp_source=self.inputs[1])["out"]
                return networks.spade_generator(warped)

        with torch.inference_mode(), torch.cuda.device(device):
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = step()

    def __call__(self, f_s, kp_s, kp_d) -> torch.Tensor:
        for buf, t in zip(self.inputs, (f_s, kp_s, kp_d)):
            buf.copy_(t)
        self.graph.replay()
        return self.out


def renderer_latency(networks: LivePortraitNetworks, device: torch.device, reps: int, batches=BATCHES) -> dict:
    rows: list[dict] = []
    errors: list[dict] = []
    for batch in batches:
        f_s, kp_s, kp_d = render_inputs(networks, batch, device, seed=batch)
        modes: dict[str, Callable[[], object]] = {}
        fp32 = Renderer(networks, device=str(device))
        args = (f_s, kp_s, kp_d)

        def in_fp32(r=fp32, a=args, tf32=False):
            with fp32_precision(tf32):
                return r.warp_decode(*a)

        modes["eager_fp32"] = in_fp32  # TF32 off: FP32 as labelled
        if device.type == "cuda":
            modes["eager_tf32"] = lambda: in_fp32(tf32=True)  # cuDNN's default on an H100: TF32 convolutions
            fp16 = Renderer(networks, device=str(device), fp16=True)
            modes["eager_fp16"] = lambda r=fp16, a=args: r.warp_decode(*a)
            try:
                graphed = GraphedWarpDecode(networks, f_s, kp_s, kp_d)
                modes["cuda_graph_fp16"] = lambda g=graphed, a=args: g(*a)
            except Exception as exc:  # noqa: BLE001 - the eager rows stand; the failure is reported
                errors.append({"mode": "cuda_graph_fp16", "batch": batch, "error": f"{type(exc).__name__}: {exc}"})
        for mode, fn in modes.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = median_ms(fn, device, reps)
            row = {"mode": mode, "batch": batch, "ms_per_batch": round(ms, 3), "ms_per_frame": round(ms / batch, 3),
                   "fps": round(1000.0 * batch / ms, 1),
                   "tf32": {"eager_fp32": False, "eager_tf32": True}.get(mode, "n/a (fp16)")}
            if device.type == "cuda":
                row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            rows.append(row)
            print(f"gpu bench: renderer {mode:<16} batch {batch}: {ms / batch:8.2f} ms/frame")
    return {"rows": rows, "errors": errors}


def fp16_parity(networks: LivePortraitNetworks, device: torch.device) -> dict:
    if device.type != "cuda":
        return {"skipped": "FP16 autocast needs a CUDA device"}
    f_s, kp_s, kp_d = render_inputs(networks, 2, device, seed=7)
    ref = Renderer(networks, device=str(device)).warp_decode(f_s, kp_s, kp_d)
    half = Renderer(networks, device=str(device), fp16=True).warp_decode(f_s, kp_s, kp_d)
    graphed = GraphedWarpDecode(networks, f_s, kp_s, kp_d)(f_s, kp_s, kp_d).float()
    scale = float(ref.abs().max())
    return {"fp16_vs_fp32_relative": float((half - ref).abs().max()) / scale,
            "cuda_graph_fp16_vs_fp32_relative": float((graphed - ref).abs().max()) / scale}


def joyvasa_latency(model: DitTalkingHead, device: torch.device, reps: int) -> dict:
    with fp32_precision(tf32=False):  # FP32 as labelled; window_latency times every call under inference_mode
        out = {"eager_fp32": window_latency(model, reps, sync=lambda: sync(device))}
        if device.type == "cuda":
            from avatarstream.engines.joyvasa.cuda_graphs import GraphedDenoiser

            out["cuda_graph_fp32"] = window_latency(model, reps, sync=lambda: sync(device),
                                                    graphed=GraphedDenoiser(model))
    for mode, r in out.items():
        print(f"gpu bench: joyvasa {mode}: {r['window_ms']:.1f} ms per {r['window_frames']}-frame window")
    return out


def worker_throughput(networks: LivePortraitNetworks, device: torch.device, seconds: float,
                      sessions_list=SESSIONS, max_batch: int = 8) -> dict:
    renderer = Renderer(networks, device=str(device), fp16=device.type == "cuda")
    f_s, kp_s, kp_d = render_inputs(networks, 1, device, seed=11)
    avatar = PreparedAvatar(feature_3d=f_s, motion=None, keypoints=kp_s)  # type: ignore[arg-type]
    chunk = [kp_d[0].cpu().numpy()] * CHUNK_FRAMES
    rows = []
    for n in sessions_list:
        worker = RenderWorker(renderer, max_batch=max_batch, max_wait_ms=4.0, max_pending=max(64, 4 * n * CHUNK_FRAMES))
        worker.render([(avatar, k) for k in chunk])  # warm-up (allocations, kernels)

        def one_chunk(k: int, _g: torch.Generator, worker: RenderWorker = worker) -> None:
            worker.render([(avatar, kp) for kp in chunk], session=k)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = worker.stats.frames
        wall, latencies = _sessions_run(n, seconds, one_chunk)
        frames = worker.stats.frames - before
        all_lat = sorted(x for lat in latencies for x in lat)
        sizes = worker.stats.batch_sizes
        row = {
            "sessions": n, "fps_total": round(frames / wall, 1), "fps_per_session": round(frames / wall / n, 1),
            "chunk_latency_p50_ms": round(float(np.percentile(all_lat, 50)), 1),
            "chunk_latency_p99_ms": round(float(np.percentile(all_lat, 99)), 1),
            "mean_batch": round(sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())), 2),
            "max_batch": worker.stats.max_batch_seen, "min_session_chunks": min(len(x) for x in latencies),
        }
        if device.type == "cuda":
            row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        worker.close()
        rows.append(row)
        print(f"gpu bench: worker {n} sessions: {row['fps_total']} fps total, {row['fps_per_session']} per session, "
              f"p50 {row['chunk_latency_p50_ms']} ms, mean batch {row['mean_batch']}")
    return {"chunk_frames": CHUNK_FRAMES, "max_batch": max_batch, "seconds": seconds, "rows": rows}


def _motion_window(model: DitTalkingHead, length: int, generator: torch.Generator) -> dict:
    """sample_window's inputs for one streaming window of random audio features (the start context)."""
    cfg = model.cfg
    return {"audio_feat": torch.randn(1, length, cfg.feature_dim, generator=generator),
            "prev_motion": model.start_motion_feat.detach().float().cpu(),
            "prev_audio": model.start_audio_feat.detach().float().cpu(),
            "x_T": initial_noise(model, length, generator)}


def _sessions_run(n: int, seconds: float, one_window: Callable[[int, torch.Generator], None]) -> tuple[float, list]:
    """n threads call one_window(session, generator) back to back for ``seconds``: (wall s, latencies per session)."""
    latencies: list[list[float]] = [[] for _ in range(n)]
    stop = time.perf_counter() + seconds
    start = threading.Barrier(n)

    def session(k: int) -> None:
        g = torch.Generator().manual_seed(100 + k)
        start.wait()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            one_window(k, g)
            latencies[k].append((time.perf_counter() - t0) * 1000.0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=session, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def motion_worker_throughput(model: DitTalkingHead, device: torch.device, seconds: float, sessions_list=SESSIONS,
                             max_batch: int = MOTION_MAX_BATCH, max_wait_ms: float = MOTION_MAX_WAIT_MS) -> dict:
    """Streaming motion windows denoised per second by n sessions, each on its own vs through the shared worker."""
    config = StreamingConfig()  # the engine's default chunk and lookahead
    length, chunk = config.chunk_frames + config.lookahead_audio_frames, config.chunk_frames
    steps = model.schedule().num_steps
    inputs = _motion_window(model, length, torch.Generator().manual_seed(0))

    def alone(k: int, g: torch.Generator) -> None:
        sample_window(model, inputs["audio_feat"], inputs["prev_motion"], inputs["prev_audio"], inputs["x_T"],
                      cfg_scale=config.cfg_scale, generator=g)

    rows = []
    for n in sessions_list:
        worker = MotionWorker(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_pending=max(64, 2 * n))

        def shared(k: int, g: torch.Generator, worker: MotionWorker = worker) -> None:
            noise = step_noise(tuple(inputs["x_T"].shape), steps, g)
            worker.sample(k, MotionWindow(inputs["audio_feat"], inputs["prev_motion"], inputs["prev_audio"],
                                          inputs["x_T"], noise, config.cfg_scale))

        g0 = torch.Generator().manual_seed(1)
        alone(0, g0), shared(0, g0)  # warm-up (allocations, kernels)
        row: dict = {"sessions": n}
        for mode, fn in (("alone", alone), ("worker", shared)):
            wall, latencies = _sessions_run(n, seconds, fn)
            sync(device)
            windows = sum(len(x) for x in latencies)
            all_lat = sorted(x for lat in latencies for x in lat)
            row[mode] = {
                "windows_per_s": round(windows / wall, 2),
                "motion_fps_per_session": round(windows * chunk / wall / n, 1),
                "window_latency_p50_ms": round(float(np.percentile(all_lat, 50)), 2),
                "window_latency_p99_ms": round(float(np.percentile(all_lat, 99)), 2),
                "min_session_windows": min(len(x) for x in latencies),
            }
        worker.close()
        row["worker_vs_alone"] = round(row["worker"]["windows_per_s"] / max(row["alone"]["windows_per_s"], 1e-9), 2)
        row["worker"]["mean_windows_per_call"] = round(worker.stats.mean_windows_per_call, 2)
        row["worker"]["multi_session_calls"] = worker.stats.multi_session_calls
        rows.append(row)
        print(f"gpu bench: motion {n} sessions: alone {row['alone']['windows_per_s']} windows/s, worker "
              f"{row['worker']['windows_per_s']} ({row['worker_vs_alone']}x), "
              f"{row['worker']['motion_fps_per_session']} motion fps per session, "
              f"{row['worker']['mean_windows_per_call']} windows per call")
    return {"window_frames": length, "chunk_frames": chunk, "steps": steps, "max_batch": max_batch,
            "max_wait_ms": max_wait_ms, "seconds": seconds, "rows": rows}

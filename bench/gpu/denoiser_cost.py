"""The denoiser's cost per window and per session, for both latency configs, and what batching across sessions
buys: one DiT call (2 rows per window: classifier-free guidance) timed alone for k = 1, 2, 4, 8 windows of each
config's length, FP32 eager with TF32 off, under ``inference_mode``, synchronised, median of ``reps``.

Per config and k: ``call_ms``; ``ms_per_window`` = steps x call_ms / k (the GPU time one window costs when k share
every call); ``window_latency_ms`` = steps x call_ms (a window's own wait: its 50 sequential calls);
``gpu_ms_per_s_at_k_sessions`` = windows/s per session x steps x call_ms(k) (k sessions, their windows always
batched together: the denoiser's share of one GPU second); ``fits_k_sessions`` when that is < 1000;
``batching_gain`` = k x call_ms(1) / call_ms(k) (windows per call bought for the price of one).
"""

from __future__ import annotations

import torch

from avatarstream.bench.gpu.components import median_ms
from avatarstream.bench.gpu.latency_configs import LATENCIES, describe, stream_config
from avatarstream.bench.gpu.precision import fp32_precision
from avatarstream.bench.gpu.product import Product

WINDOWS = (1, 2, 4, 8)


def denoiser_cost(product: Product, reps: int, windows=WINDOWS) -> dict:
    model, device = product.engine.model, product.device
    net, cfg = model.denoising_net, model.cfg
    steps = model.schedule().num_steps
    dtype = model.audio_feature_map.weight.dtype
    g = torch.Generator().manual_seed(0)
    rows = []
    for latency in LATENCIES:
        config = stream_config(product, latency)
        length = config.chunk_frames + config.lookahead_audio_frames
        d = describe(config, latency)
        per_k = []
        for k in windows:
            n = 2 * k

            def rand(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=g).to(device, dtype)

            x, a = rand(n, length, cfg.motion_feat_dim), rand(n, length, cfg.feature_dim)
            pm, pa = rand(n, cfg.n_prev_motions, cfg.motion_feat_dim), rand(n, cfg.n_prev_motions, cfg.feature_dim)
            step = torch.full((n,), max(1, steps // 2), dtype=torch.long, device=device)
            with torch.inference_mode(), fp32_precision(tf32=False):
                cross = net.cross_attention_terms(torch.cat([pa, a], 1))
                call_ms = median_ms(lambda args=(x, a, pm, pa, step, cross): net(*args), device, reps)
            per_k.append({"windows_per_call": k, "call_ms": round(call_ms, 3),
                          "ms_per_window": round(steps * call_ms / k, 2),
                          "window_latency_ms": round(steps * call_ms, 2),
                          "gpu_ms_per_s_at_k_sessions": round(d["windows_per_s_per_session"] * steps * call_ms, 1)})
        base = per_k[0]["call_ms"]
        for r in per_k:
            r["fits_k_sessions"] = r["gpu_ms_per_s_at_k_sessions"] < 1000.0
            r["batching_gain"] = round(r["windows_per_call"] * base / r["call_ms"], 2) if r["call_ms"] > 0 else None
        alone = per_k[0]
        rows.append({**d, "steps": steps, "ms_per_window_alone": alone["ms_per_window"],
                     "gpu_ms_per_s_per_session_alone": alone["gpu_ms_per_s_at_k_sessions"],
                     "sessions_alone": int(1000.0 // alone["gpu_ms_per_s_at_k_sessions"])
                     if alone["gpu_ms_per_s_at_k_sessions"] > 0 else None,
                     "by_windows_per_call": per_k})
        print(f"gpu check: denoiser {latency}: {alone['ms_per_window']} ms per window alone, "
              f"{alone['gpu_ms_per_s_at_k_sessions']} GPU ms per second per session; batched "
              + ", ".join(f"{r['windows_per_call']}: {r['gpu_ms_per_s_at_k_sessions']} ms/s" for r in per_k),
              flush=True)
    return {"precision": "FP32 eager, TF32 off, inference_mode", "reps": reps, "rows": rows,
            "note": "the DiT call alone (no audio encoder, no posterior update, no host work); a session's windows "
                    "batch with others' only when they are in flight together (the sessions rows' "
                    "motion_mean_windows_per_call says how often they were)"}

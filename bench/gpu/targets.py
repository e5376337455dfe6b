"""The product's targets for one H100, each stated in the JSON with the figure it is judged on and whether it
was met (None: not measured in this run). Dry-run figures (CPU, miniature networks) are not judged."""

from __future__ import annotations

TARGETS = {
    "sessions_at_25fps": ">= 8 sessions, each delivering 25 fps at 512 x 512 (sessions.largest_n_at_25fps)",
    "audio_to_mouth_p50_ms": "<= 150 ms p50, at 1 session (audio_to_mouth.rows[sessions=1].p50_ms)",
    "audio_to_mouth_p50_ms_low_latency": "<= 150 ms p50, at 1 session, engine latency='low' "
                                         "(low_latency.audio_to_mouth.rows[sessions=1].p50_ms; the cost in sessions "
                                         "is latency_configs.rows[latency=low].largest_n_at_25fps)",
    "first_frame_p50_ms": "<= 300 ms p50 (first_frame.p50_ms, the face given; dlib's CPU time stated apart)",
    "wg_fp16_batched_speedup": ">= 2x per frame: W + G eager FP32 (TF32 off) at batch 1 over the best FP16 mode "
                               "at the largest batch (renderer rows; over_tf32: the same against TF32, cuDNN's "
                               "default)",
}


def _judge(measured, ok) -> bool | None:
    return None if measured is None else bool(ok(measured))


def wg_speedup(result: dict) -> dict:
    rows = (result.get("renderer") or {}).get("rows") or []
    base = next((r for r in rows if r["mode"] == "eager_fp32" and r["batch"] == 1), None)
    fp16 = [r for r in rows if r["mode"] in ("eager_fp16", "cuda_graph_fp16")]
    if base is None or not fp16:
        return {"measured": None, "why": "no FP16 W + G rows (CPU run, or the renderer section did not run)"}
    top = max(r["batch"] for r in fp16)
    best = min((r for r in fp16 if r["batch"] == top), key=lambda r: r["ms_per_frame"])
    same = next((r for r in rows if r["mode"] == "eager_fp32" and r["batch"] == top), None)
    tf32 = next((r for r in rows if r["mode"] == "eager_tf32" and r["batch"] == 1), None)
    return {"measured": round(base["ms_per_frame"] / best["ms_per_frame"], 2), "best_mode": best["mode"],
            "batch": top, "fp32": "TF32 off",
            "same_batch_fp32_over_fp16": round(same["ms_per_frame"] / best["ms_per_frame"], 2) if same else None,
            "over_tf32": round(tf32["ms_per_frame"] / best["ms_per_frame"], 2) if tf32 else None}


def judge(result: dict, dry_run: bool) -> dict:
    sessions = result.get("sessions") or {}
    a2m_rows = (result.get("audio_to_mouth") or {}).get("rows") or []
    one = next((r for r in a2m_rows if r["sessions"] == 1), None)
    low_rows = (((result.get("low_latency") or {}).get("audio_to_mouth")) or {}).get("rows") or []
    low_one = next((r for r in low_rows if r["sessions"] == 1), None)
    first = result.get("first_frame") or {}
    measured = {
        "sessions_at_25fps": {"measured": sessions.get("largest_n_at_25fps")},
        "audio_to_mouth_p50_ms": {"measured": one["p50_ms"] if one else None},
        "audio_to_mouth_p50_ms_low_latency": {"measured": low_one["p50_ms"] if low_one else None},
        "first_frame_p50_ms": {"measured": first.get("p50_ms")},
        "wg_fp16_batched_speedup": wg_speedup(result),
    }
    checks = {
        "sessions_at_25fps": lambda v: v >= 8,
        "audio_to_mouth_p50_ms": lambda v: v <= 150,
        "audio_to_mouth_p50_ms_low_latency": lambda v: v <= 150,
        "first_frame_p50_ms": lambda v: v <= 300,
        "wg_fp16_batched_speedup": lambda v: v >= 2.0,
    }
    out = {}
    for name, target in TARGETS.items():
        m = measured[name]
        out[name] = {"target": target, **m,
                     "met": None if dry_run else _judge(m["measured"], checks[name])}
    if dry_run:
        out["note"] = "dry run: CPU and miniature networks; the figures check the code, they are not judged"
    return out

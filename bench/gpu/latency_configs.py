"""The latency question, answered side by side: the joyvasa engine's streaming at its ``default`` settings
(10-frame chunks, 80 ms lookahead) and at ``low`` (2-frame chunks, 40 ms lookahead: ``latency="low"``,
what ``avatar serve --latency low`` selects; ``engines.joyvasa.options.STREAM_LATENCIES``).

Designed audio-in -> mouth-out of a config (docs/joyvasa.md, "Delay"):
  wait for the chunk and the lookahead audio, (chunk - 1 + ceil(lookahead / 40)) x 40 ms (default 440, low 80),
  + the server's render margin (``delay_ms`` - that wait: the latency preset sizes it from the measured render
  time, which includes the window's compute) + the wait for the next 40 ms tick (20 on average);
the session's lip-sync delay ``delay_ms`` is the first two together, so designed = ``delay_ms`` + 20.

``streaming(product, latency)`` switches the product's engine to a config for the sessions opened inside it
(the engine's ``stream_config``, the same ``StreamingConfig`` that ``load_engine("joyvasa", latency=...)``
builds; the weights and shared workers stay loaded: a second engine would load them again), with the session
options of the server preset that selects it (``--latency low`` for "low", the server's default otherwise).
``window_cost`` measures what a config costs, standalone on the engine's motion generator (no server, no
renderer): windows per second of audio and ms of motion compute per emitted frame, both configs in turn in one
run. ``compare`` is the JSON's ``latency_configs``: per config its settings, designed and measured delay at each
session count, largest N at 25 fps, and whether p50 <= 150 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from avatarstream.bench.gpu.product import Product, session_options
from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.engines.joyvasa.options import STREAM_LATENCIES, JoyVasaOptions
from avatarstream.engines.joyvasa.streaming import FRAME_MS, StreamingConfig, StreamingMotionGenerator

LATENCIES = ("default", "low")
TARGET_MS = 150.0  # audio-in -> mouth-out p50


def stream_config(product: Product, latency: str) -> StreamingConfig:
    """The engine's streaming config with ``latency``'s chunk and lookahead (seed, guidance and fill kept)."""
    chunk, lookahead = JoyVasaOptions(latency=latency).stream_settings()
    config = dataclasses.replace(product.engine.stream_config, chunk_frames=chunk, lookahead_ms=lookahead)
    config.validate(product.engine.model.cfg.n_motions)
    return config


# the server preset that selects each engine config: ``avatar serve --latency low`` passes latency="low" to the
# engine (avatarstream.cli.serve.latency_engine_options) and sizes its own margin by the p90 render time
SERVER_PRESETS = {"default": None, "low": "low"}  # None: the server's default preset (adaptive)


@contextlib.contextmanager
def streaming(product: Product, latency: str):
    """Sessions opened inside run as ``avatar serve --engine joyvasa`` runs them with ``latency``: the engine's
    streaming config and the server's session options; the product's own are back afterwards."""
    engine = product.engine
    before = engine.stream_config, product.session_options, product.session_options_source
    engine.stream_config = stream_config(product, latency)
    product.session_options, product.session_options_source = session_options(SERVER_PRESETS[latency])
    try:
        yield engine.stream_config
    finally:
        engine.stream_config, product.session_options, product.session_options_source = before


def describe(config: StreamingConfig, latency: str) -> dict:
    wait = config.chunk_frames - 1 + config.lookahead_audio_frames
    return {"latency": latency, "chunk_frames": config.chunk_frames, "lookahead_ms": config.lookahead_ms,
            "window_frames": config.chunk_frames + config.lookahead_audio_frames,
            "engine_wait_frames": wait, "engine_wait_ms": wait * FRAME_MS,
            "windows_per_s_per_session": round(1000.0 / (config.chunk_frames * FRAME_MS), 2)}


def _one_stream(product: Product, config: StreamingConfig, audio: np.ndarray) -> tuple[int, int, float, dict]:
    """(windows, frames, seconds of motion compute, ms per stage summed) for ``audio`` pushed 40 ms at a time,
    then flushed. Stages: ``audio_features`` (the encoder over the window's audio and its 1 s of left context),
    ``diffusion`` (the 50 denoising steps)."""
    gen = StreamingMotionGenerator(product.engine.model, product.engine.template, config)
    frames = 0
    t = time.perf_counter()
    for i in range(0, audio.size, SAMPLES_PER_FRAME):
        gen.push_audio(audio[i:i + SAMPLES_PER_FRAME])
        frames += len(gen.pull_motion())
    frames += len(gen.flush())
    if product.device.type == "cuda":
        import torch

        torch.cuda.synchronize(product.device)
    return len(gen.chunk_ms), frames, time.perf_counter() - t, dict(gen.times.ms)


def window_cost(product: Product, audio_s: float, reps: int) -> dict:
    """Each config ``reps`` times in turn (default, low, default, ...) on ``audio_s`` seconds of the shipped speech,
    after one warm-up pass each; the motion generator alone, one stream, no shared worker."""
    audio = product.speech[: int(audio_s * 16000)]
    configs = {name: stream_config(product, name) for name in LATENCIES}
    for config in configs.values():
        _one_stream(product, config, audio[: 20 * SAMPLES_PER_FRAME])  # warm-up (kernels, allocations)
    runs: dict[str, list[tuple[int, int, float, dict]]] = {name: [] for name in LATENCIES}
    for _ in range(reps):
        for name, config in configs.items():
            runs[name].append(_one_stream(product, config, audio))
    rows = []
    for name, config in configs.items():
        windows = sum(r[0] for r in runs[name])
        frames = sum(r[1] for r in runs[name])
        seconds = sum(r[2] for r in runs[name])
        stages = {k: sum(r[3].get(k, 0.0) for r in runs[name]) for k in ("audio_features", "diffusion")}
        rows.append({**describe(config, name), "windows": windows, "frames": frames,
                     **{f"{k}_ms_per_window": round(v / windows, 2) for k, v in stages.items()},
                     "windows_per_audio_s": round(windows / (reps * audio.size / 16000), 2),
                     "ms_per_window": round(1000 * seconds / windows, 2),
                     "ms_per_emitted_frame": round(1000 * seconds / frames, 2),
                     "realtime_factor": round(seconds / (reps * audio.size / 16000), 3)})
    base, low = rows
    return {"audio_s": round(audio.size / 16000, 2), "reps": reps, "order": "default, low alternating", "rows": rows,
            "low_over_default": {"windows": round(low["windows"] / base["windows"], 2),
                                 "ms_per_emitted_frame": round(low["ms_per_emitted_frame"]
                                                               / base["ms_per_emitted_frame"], 2)}}


def compare(result: dict, configs: dict[str, StreamingConfig]) -> dict:
    """``latency_configs``: per config, designed vs measured audio-in -> mouth-out at each session count."""
    sections = {"default": (result.get("sessions") or {}, result.get("audio_to_mouth") or {}),
                "low": ((result.get("low_latency") or {}).get("sessions") or {},
                        (result.get("low_latency") or {}).get("audio_to_mouth") or {})}
    rows = []
    for name, config in configs.items():
        sessions, a2m = sections[name]
        d = describe(config, name)
        measured = []
        for r in a2m.get("rows") or []:
            margin = round(r["delay_ms"] - d["engine_wait_ms"], 1)
            measured.append({"sessions": r["sessions"], "engine_wait_ms": d["engine_wait_ms"],
                             "server_margin_ms": margin, "tick_wait_ms": 20.0, "designed_ms": r["designed_ms"],
                             "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "onsets": r["onsets"],
                             "meets_150ms_p50": None if r["p50_ms"] is None else r["p50_ms"] <= TARGET_MS})
        rows.append({**d, "largest_n_at_25fps": sessions.get("largest_n_at_25fps"),
                     "fps_min_by_sessions": {x["sessions"]: x["fps_min"] for x in sessions.get("rows") or []},
                     "audio_to_mouth": measured,
                     "sessions_meeting_150ms": [m["sessions"] for m in measured if m["meets_150ms_p50"]]})
    return {"formula": "designed = (chunk - 1 + ceil(lookahead / 40)) x 40 ms (engine wait) + server margin "
                       "(session delay_ms - engine wait; sized from the measured render time, window compute "
                       "included: p99 + 5 ms under the server's adaptive preset, p90 under low) + 20 ms (mean wait "
                       "for the next tick)",
            "server_presets": {k: v or "the server's default (adaptive)" for k, v in SERVER_PRESETS.items()},
            "target_p50_ms": TARGET_MS, "settings": {k: list(v) for k, v in STREAM_LATENCIES.items()},
            "rows": rows}


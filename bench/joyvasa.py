"""``avatar bench --engine joyvasa``: per-window latency and the streaming-vs-offline motion study.

Results (JSON, returned to ``avatarstream.cli.bench``):

* ``latency_cpu``: audio features for one 4 s window, one denoising step (batch [uncond, cond]), one
  whole window (all diffusion steps) and one streaming chunk, at 1 and at 2 torch threads.
* ``latency_cuda`` (``--device cuda`` with a GPU): the same in fp32 eager, fp16 eager and fp16 with
  the step replayed as a CUDA graph (``engines.joyvasa.cuda_graphs``).
* ``streaming_vs_offline``: for one audio clip, per-dimension RMSE between streaming motion and the
  offline reference algorithm, over chunk sizes, lookaheads and both future-fill modes, next to the
  seed noise floor (offline with another seed). Plots: ``joyvasa_rmse.png``, ``joyvasa_latency.png``.
* ``live_vs_offline``: the same metric between the joyvasa engine's two motion paths as configured by
  default: ``open_stream``'s streaming generator (``JoyVasaOptions`` chunk / lookahead, ``LIVE_PRESET``
  CFG) and ``render_file``'s offline generator (``OFFLINE_PRESET`` CFG), same audio and seed. Alone:
  ``python -m avatarstream.bench.joyvasa [--quick] [--seconds S] [--weights DIR] [--out FILE]``.

Weights: ``--weights`` (a directory with ``JoyVASA/motion_generator/*.pt`` and the template, or a
checkpoint file); without it, seeded random weights of the real shapes. ``--quick`` uses the
miniature model (``checkpoint.SMALL_CONFIG``) as a smoke run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import espeak_speech, speechlike_audio
from avatarstream.bench.timing import median_ms
from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError
from avatarstream.engines.joyvasa.checkpoint import load_motion_generator, random_motion_generator, small_motion_generator
from avatarstream.engines.joyvasa.motion import MotionTemplate
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.offline import generate_offline, initial_noise
from avatarstream.engines.joyvasa.options import LIVE_PRESET, OFFLINE_PRESET, JoyVasaOptions
from avatarstream.engines.joyvasa.sampler import sample
from avatarstream.engines.joyvasa.streaming import FRAME_MS, StreamingConfig, StreamingMotionGenerator

GENERATOR_FILE = "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt"
TEMPLATE_FILE = "JoyVASA/motion_template/motion_template.pkl"
SENTENCES = ["Hello there. My name is Ava, and I am a talking portrait.",
             "Open your mouth wide and say papa, mama, baba.",
             "The quick brown fox jumps over the lazy dog, twice in a row."]
GROUPS = {"exp": slice(0, 63), "scale": slice(63, 64), "t": slice(64, 67), "pitch": slice(67, 68),
          "yaw": slice(68, 69), "roll": slice(69, 70)}


# -- inputs -------------------------------------------------------------------------------------

def bench_audio(seconds: float) -> tuple[np.ndarray, str]:
    """``seconds`` of espeak-ng speech (with pauses), or a speech-like synthetic signal without espeak-ng."""
    n = int(seconds * SAMPLE_RATE)
    if shutil.which("espeak-ng"):
        parts: list[np.ndarray] = []
        i = 0
        while sum(p.size for p in parts) < n:
            parts += [espeak_speech(SENTENCES[i % len(SENTENCES)], words_per_minute=150),
                      np.zeros(int(0.4 * SAMPLE_RATE), np.float32)]
            i += 1
        return np.concatenate(parts)[:n], "espeak-ng speech"
    return speechlike_audio(seconds), "synthetic speech-like signal"


def load_bench_model(opts) -> tuple[DitTalkingHead, MotionTemplate, str]:
    if opts.weights:
        root = Path(opts.weights)
        ckpt = root if root.is_file() else root / GENERATOR_FILE
        model, _ = load_motion_generator(ckpt)
        tpl_path = (root.parent if root.is_file() else root) / TEMPLATE_FILE
        template = MotionTemplate.load(tpl_path) if tpl_path.is_file() else MotionTemplate.synthetic()
        return model, template, f"checkpoint {ckpt}"
    if opts.quick:
        return small_motion_generator(0), MotionTemplate.synthetic(), "random weights, miniature model (quick)"
    return random_motion_generator(0), MotionTemplate.synthetic(), "random weights of the real shapes (seed 0)"


# -- latency --------------------------------------------------------------------------------------

@torch.inference_mode()
def window_latency(model: DitTalkingHead, reps: int, sync=lambda: None, graphed=None) -> dict:
    """Every timed call (audio features, the eager or graphed denoising step, whole windows) runs under
    ``inference_mode``: no autograd bookkeeping in either mode, so eager and graphed compare like for like."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(1, cfg.n_motions * SAMPLES_PER_FRAME, generator=g) * 0.1
    feat = model.audio_features(audio)
    prev_m, prev_a = model.start_motion_feat.float(), model.start_audio_feat.float()
    x_T = initial_noise(model, cfg.n_motions, g).to(model.device)
    if graphed is not None:
        make = lambda: graphed.guided_denoiser(feat, prev_m, prev_a)  # noqa: E731
    else:
        make = lambda: model.guided_denoiser(feat, prev_m, prev_a)  # noqa: E731
    denoise = make()
    x_in = torch.cat([x_T, x_T])
    out = {
        "audio_features_ms": median_ms(lambda: model.audio_features(audio), reps, sync=sync),
        "denoise_step_ms": median_ms(lambda: denoise(x_in, 10), max(3, reps * 3), sync=sync),
        "window_ms": median_ms(lambda: sample(make(), x_T, model.schedule(), generator=torch.Generator().manual_seed(1)),
                               max(1, reps // 2), sync=sync),
        "steps": cfg.n_diff_steps,
        "window_frames": cfg.n_motions,
    }
    out["window_ms"] += out["audio_features_ms"]
    out["window_realtime_factor"] = out["window_ms"] / (cfg.n_motions * FRAME_MS)
    return out


def chunk_latency(model: DitTalkingHead, template: MotionTemplate, config: StreamingConfig, audio: np.ndarray) -> dict:
    gen = StreamingMotionGenerator(model, template, config)
    for i in range(0, audio.size, 320):
        gen.push_audio(audio[i:i + 320])
        gen.pull_motion()
        if len(gen.chunk_ms) >= 3:
            break
    ms = gen.chunk_ms[1:] or gen.chunk_ms
    mean = float(np.mean(ms))
    return {"chunk_frames": config.chunk_frames, "lookahead_ms": config.lookahead_ms, "future_fill": config.future_fill,
            "cuda_graphs": config.cuda_graphs,
            "chunk_ms": mean, "stage_ms": gen.times.mean_ms(), "realtime_factor": mean / (config.chunk_frames * FRAME_MS),
            "algorithmic_latency_ms": gen.lookahead_frames * FRAME_MS + FRAME_MS}


def cpu_latency(model, template, audio, quick: bool) -> dict:
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[f"threads_{threads}"] = {
                "window": window_latency(model, reps=1 if not quick else 2),
                "stream_chunks": [chunk_latency(model, template, StreamingConfig(chunk_frames=10, future_fill=fill), audio)
                                  for fill in ("null", "truncate")],
            }
    finally:
        torch.set_num_threads(before)
    return out


def cuda_latency(model: DitTalkingHead, template: MotionTemplate, audio: np.ndarray) -> dict:
    from avatarstream.engines.joyvasa.cuda_graphs import GraphedDenoiser

    sync = torch.cuda.synchronize
    out = {"gpu": torch.cuda.get_device_name(0)}
    m32 = model.to("cuda").float()
    out["fp32_eager"] = window_latency(m32, reps=5, sync=sync)
    m16 = m32.half()
    out["fp16_eager"] = window_latency(m16, reps=5, sync=sync)
    out["fp16_cuda_graph"] = window_latency(m16, reps=5, sync=sync, graphed=GraphedDenoiser(m16))
    out["fp16_stream_chunks"] = [chunk_latency(m16, template, StreamingConfig(chunk_frames=n, future_fill=fill,
                                                                               cuda_graphs=graphs), audio)
                                 for n in (5, 10) for fill in ("truncate", "null") for graphs in (False, True)]
    model.float().cpu()
    return out


# -- streaming vs offline -------------------------------------------------------------------------

def _stream(model, template, config: StreamingConfig, audio: np.ndarray) -> np.ndarray:
    gen = StreamingMotionGenerator(model, template, config)
    frames = []
    for i in range(0, audio.size, 320):  # 20 ms pieces
        gen.push_audio(audio[i:i + 320])
        frames += gen.pull_motion()
    frames += gen.flush()
    return np.stack([f.vector() for f in frames])


def _rmse(a: np.ndarray, b: np.ndarray, template: MotionTemplate) -> dict:
    na, nb = template.normalize(a), template.normalize(b)
    per_dim = np.sqrt(np.mean((na - nb) ** 2, axis=0))
    phys = np.sqrt(np.mean((a - b) ** 2, axis=0))
    return {"mean_normalized": float(per_dim.mean()),
            "per_dim_normalized": [round(float(x), 5) for x in per_dim],
            "groups": {k: float(phys[s].mean()) for k, s in GROUPS.items()}}


def study_grid(quick: bool) -> list[StreamingConfig]:
    if quick:
        return [StreamingConfig(chunk_frames=n, lookahead_ms=la, future_fill=f, audio_context_ms=0 if n == 100 else 1000)
                for n in (10, 100) for la in (0, 80) for f in ("null", "truncate") if n + la // 40 <= 100]
    grid = [StreamingConfig(chunk_frames=5, lookahead_ms=80, future_fill="truncate")]
    grid += [StreamingConfig(chunk_frames=n, lookahead_ms=la, future_fill="truncate") for n in (10, 25) for la in (0, 80, 200)]
    grid += [StreamingConfig(chunk_frames=n, lookahead_ms=80, future_fill="null") for n in (10, 25)]
    # chunk = window: exact without encoder left context, and the effect of 1 s of left context alone
    grid += [StreamingConfig(chunk_frames=100, lookahead_ms=0, audio_context_ms=ctx, future_fill="truncate")
             for ctx in (0, 1000)]
    return grid


def streaming_study(model, template, audio: np.ndarray, grid: list[StreamingConfig], progress=print) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        n_frames = -(-audio.size // SAMPLES_PER_FRAME)  # a stream's count; offline has one more on whole frames
        offline = generate_offline(model, audio, template=template, seed=0).frames()[:n_frames]
        reference = np.stack([f.vector() for f in offline])
        offline_s = time.perf_counter() - t0
        other = np.stack([f.vector() for f in generate_offline(model, audio, template=template, seed=1).frames()])
        other = other[:n_frames]
        runs = []
        for cfg in grid:
            t0 = time.perf_counter()
            s = _stream(model, template, cfg, audio)
            if s.shape != reference.shape:
                raise EngineError(f"streaming gave {s.shape[0]} frames, offline {reference.shape[0]}")
            r = _rmse(s, reference, template)
            r.update(chunk_frames=cfg.chunk_frames, lookahead_ms=cfg.lookahead_ms, future_fill=cfg.future_fill,
                     audio_context_ms=cfg.audio_context_ms, lookahead_frames=cfg.chunk_frames - 1 + cfg.lookahead_audio_frames,
                     wall_s=round(time.perf_counter() - t0, 1))
            runs.append(r)
            progress(f"  chunk {cfg.chunk_frames:3d} lookahead {cfg.lookahead_ms:4.0f} ms {cfg.future_fill:8s} "
                     f"context {cfg.audio_context_ms:4.0f} ms "
                     f"rmse {r['mean_normalized']:.4f} ({r['wall_s']} s)")
        return {"frames": int(reference.shape[0]), "offline_wall_s": round(offline_s, 1),
                "seed_noise_floor": _rmse(other, reference, template), "runs": runs,
                "units": "mean_normalized / per_dim_normalized: RMSE in template-normalised units (exp z-score, others "
                         "min-max); groups: RMSE in LivePortrait units (angles in degrees), averaged within the group"}
    finally:
        torch.set_num_threads(before)


def live_vs_offline(model, template, audio: np.ndarray, progress=print) -> dict:
    """RMSE between the engine's default live motion (streaming) and its offline motion (render_file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        defaults = JoyVasaOptions()
        live = StreamingConfig(chunk_frames=defaults.chunk_frames, lookahead_ms=defaults.lookahead_ms,
                               cfg_scale=LIVE_PRESET.cfg_scale, seed=defaults.seed)
        n_frames = -(-audio.size // SAMPLES_PER_FRAME)  # render_file's count

        def offline(seed: int) -> np.ndarray:
            clip = generate_offline(model, audio, template=template, cfg_scale=OFFLINE_PRESET.cfg_scale, seed=seed)
            return np.stack([f.vector() for f in clip.frames()[:n_frames]])

        t0 = time.perf_counter()
        reference = offline(defaults.seed)
        offline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        streamed = _stream(model, template, live, audio)
        live_s = time.perf_counter() - t0
        if streamed.shape != reference.shape:
            raise EngineError(f"streaming gave {streamed.shape[0]} frames, offline {reference.shape[0]}")
        result = {"frames": n_frames, "live": {"chunk_frames": live.chunk_frames, "lookahead_ms": live.lookahead_ms,
                                               "future_fill": live.future_fill, "audio_context_ms": live.audio_context_ms,
                                               "cfg_scale": live.cfg_scale},
                  "offline_cfg_scale": OFFLINE_PRESET.cfg_scale, "seed": defaults.seed,
                  "live_vs_offline": _rmse(streamed, reference, template),
                  "seed_noise_floor": _rmse(offline(defaults.seed + 1), reference, template),
                  "offline_wall_s": round(offline_s, 1), "live_wall_s": round(live_s, 1)}
        r, floor = result["live_vs_offline"], result["seed_noise_floor"]
        progress(f"  live vs offline: rmse {r['mean_normalized']:.4f} (seed noise floor {floor['mean_normalized']:.4f}); "
                 + ", ".join(f"{k} {v:.4f}" for k, v in r["groups"].items()))
        return result
    finally:
        torch.set_num_threads(before)


# -- plots ----------------------------------------------------------------------------------------

def plot(result: dict, out_dir: Path) -> list[str]:
    plt = pyplot()

    paths = []
    study = result["streaming_vs_offline"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for fill, marker in (("truncate", "o"), ("null", "s")):
        las = sorted({r["lookahead_ms"] for r in study["runs"] if r["future_fill"] == fill})
        for la in las:
            rs = sorted((r for r in study["runs"] if r["future_fill"] == fill and r["lookahead_ms"] == la),
                        key=lambda r: r["chunk_frames"])
            ax1.plot([r["chunk_frames"] for r in rs], [r["mean_normalized"] for r in rs], marker=marker,
                     label=f"{fill}, lookahead {la:.0f} ms")
    ax1.axhline(study["seed_noise_floor"]["mean_normalized"], ls="--", c="gray", label="offline, other seed")
    ax1.annotate("chunk 100: 0 = no left context (exact),\nupper = 1 s encoder left context", (100, 0.02),
                 fontsize=7, ha="right")
    ax1.set_xscale("log")
    ax1.set_xlabel("chunk (frames)")
    ax1.set_ylabel("RMSE vs offline (normalised units, mean of 70 dims)")
    ax1.set_title(f"streaming vs offline motion ({result['weights']})", fontsize=9)
    ax1.legend(fontsize=7)
    default = min(study["runs"], key=lambda r: (abs(r["chunk_frames"] - 10) + abs(r["lookahead_ms"] - 80)
                                                 + (r["future_fill"] != "null")))
    ax2.plot(default["per_dim_normalized"], label=f"chunk {default['chunk_frames']}, {default['lookahead_ms']:.0f} ms, "
                                                  f"{default['future_fill']}")
    ax2.plot(study["seed_noise_floor"]["per_dim_normalized"], ls="--", c="gray", label="offline, other seed")
    ax2.set_xlabel("motion dim (0-62 exp, 63 scale, 64-66 t, 67-69 pitch/yaw/roll)")
    ax2.set_ylabel("RMSE (normalised)")
    ax2.legend(fontsize=8)
    p = out_dir / "joyvasa_rmse.png"
    save_figure(fig, p, dpi=110)
    paths.append(str(p))

    fig, ax = plt.subplots(figsize=(8, 4))
    labels, vals = [], []
    for key, lat in result["latency_cpu"].items():
        labels += [f"CPU {key}\nwindow", f"CPU {key}\nchunk10 null", f"CPU {key}\nchunk10 trunc"]
        vals += [lat["window"]["window_ms"]] + [c["chunk_ms"] for c in lat["stream_chunks"]]
    for key in ("fp32_eager", "fp16_eager", "fp16_cuda_graph"):
        if key in result.get("latency_cuda", {}):
            labels.append(f"CUDA {key}\nwindow")
            vals.append(result["latency_cuda"][key]["window_ms"])
    ax.bar(range(len(vals)), vals)
    ax.set_xticks(range(len(vals)), labels, fontsize=6)
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title("JoyVASA latency: 100-frame window (4 s of video) and 10-frame chunk (0.4 s)", fontsize=9)
    p = out_dir / "joyvasa_latency.png"
    save_figure(fig, p, dpi=110)
    paths.append(str(p))
    return paths


def run_bench(opts) -> dict:
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, template, weights = load_bench_model(opts)
    seconds = min(opts.seconds, 3.0) if opts.quick else opts.seconds
    audio, audio_kind = bench_audio(seconds)
    print(f"joyvasa bench: {weights}; {seconds:.1f} s of {audio_kind}; CPU latency ...")
    result: dict = {"weights": weights, "audio": audio_kind, "seconds": seconds, "config": model.cfg.__dict__}
    result["latency_cpu"] = cpu_latency(model, template, audio, opts.quick)
    if opts.device == "cuda":
        result["latency_cuda"] = cuda_latency(model, template, audio) if torch.cuda.is_available() \
            else {"skipped": "--device cuda given but torch.cuda.is_available() is False"}
    print("streaming vs offline (1 torch thread) ...")
    result["streaming_vs_offline"] = streaming_study(model, template, audio, study_grid(opts.quick))
    print("the engine's live vs offline motion (1 torch thread) ...")
    result["live_vs_offline"] = live_vs_offline(model, template, audio)
    result["plots"] = plot(result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    """Only the ``live_vs_offline`` figure (the whole bench: ``avatar bench --engine joyvasa``)."""
    import argparse
    import json
    import platform

    p = argparse.ArgumentParser(prog="python -m avatarstream.bench.joyvasa", description=main.__doc__)
    p.add_argument("--weights", default=None, help="weights directory or checkpoint (default: random weights)")
    p.add_argument("--quick", action="store_true", help="the miniature model instead of the real shapes")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds of speech (default 6)")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    opts = p.parse_args(argv)
    model, template, weights = load_bench_model(opts)
    audio, audio_kind = bench_audio(opts.seconds)
    print(f"joyvasa live vs offline: {weights}; {opts.seconds:.1f} s of {audio_kind}")
    result = {"weights": weights, "audio": audio_kind, "seconds": opts.seconds, "machine": platform.processor()
              or platform.machine(), "torch_threads": 1, **live_vs_offline(model, template, audio)}
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``avatar bench --engine lite``: the lite engine's cost per 40 ms frame at 512x512.

Two runs on one stream setup, side by side:

* throughput: audio fed in 20 ms packets as fast as possible -> max fps and per-stage ms
  (features, motion, render, encode = aiortc's VP8 and H.264 encoders on the frame);
* real time: the same, paced at 25 fps on the wall clock, engine alone and engine + VP8 ->
  fps reached and CPU cores used (process CPU time / wall time, from psutil; 1.0 = one core busy).

The portrait is the demo astronaut; the demo cat (whose face fills the frame) gets an engine-only
throughput run too. The audio is a synthetic speech-like signal (voiced syllables with formant glides and pauses) so
the bench needs no TTS. Writes ``lite.png`` (per-stage bars + per-frame timeline) next to the JSON.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import psutil

from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import speechlike_audio
from avatarstream.engines.base import FPS, SAMPLE_RATE, Portrait

PACKET = SAMPLE_RATE // 50  # 20 ms, as WebRTC delivers microphone audio


class _Encoders:
    """The WebRTC-side cost: aiortc's own VP8 (libvpx) and H.264 (PyAV libx264) encoders, as the
    server's video track uses them, fed the engine's frames."""

    def __init__(self, size: int, codecs: tuple[str, ...] = ("vp8", "h264")) -> None:
        import av
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        self.av = av
        self.codecs = {name: get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000))
                       for name, mime in (("vp8", "video/VP8"), ("h264", "video/H264")) if name in codecs}
        self.n = 0

    def encode(self, image: np.ndarray) -> dict[str, float]:
        ms = {}
        for name, enc in self.codecs.items():
            t = time.perf_counter()
            frame = self.av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.n * (90000 // FPS)
            frame.time_base = Fraction(1, 90000)
            enc.encode(frame)
            ms[name] = (time.perf_counter() - t) * 1000
        self.n += 1
        return ms


def _run(engine, portrait: Portrait, audio: np.ndarray, size: int, paced: bool, encoders: _Encoders | None):
    stream = engine.open_stream(portrait, size=size)
    proc = psutil.Process()
    per_frame = []
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    start = time.perf_counter()
    for i in range(0, audio.size, PACKET):
        if paced:
            due = start + i / SAMPLE_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t = time.perf_counter()
        frames = stream.feed(audio[i:i + PACKET])
        engine_ms = (time.perf_counter() - t) * 1000
        for k, f in enumerate(frames):
            enc = encoders.encode(f.image) if encoders else {}
            per_frame.append({"engine_ms": engine_ms if k == 0 else 0.0, "t": time.perf_counter() - start,
                              **{f"encode_{c}_ms": v for c, v in enc.items()}})
    wall = time.perf_counter() - wall0
    cpu1 = proc.cpu_times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    stream.close()
    return stream, per_frame, wall, cpu_s


def run_bench(opts) -> dict:
    from avatarstream.engines.lite.engine import LiteEngine
    from avatarstream.engines.portraits import load_portrait

    size = 512
    seconds = 2.0 if opts.quick else float(opts.seconds)
    audio = speechlike_audio(seconds)
    engine = LiteEngine(seed=0)
    portrait = load_portrait("human")
    t = time.perf_counter()
    engine.prepare(portrait, size)
    open_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    engine.open_stream(portrait, size=size).close()
    open_cached_ms = (time.perf_counter() - t) * 1000

    encoders = _Encoders(size)
    stream, per_frame, wall, cpu_s = _run(engine, portrait, audio, size, paced=False, encoders=encoders)
    stages = {k: round(v, 3) for k, v in stream.stage_times.mean_ms().items()}
    for codec in ("vp8", "h264"):
        stages[f"encode_{codec}"] = round(float(np.mean([f[f"encode_{codec}_ms"] for f in per_frame])), 3)
    stages["encode"] = stages["encode_vp8"]
    n = len(per_frame)
    engine_ms = stages.get("features", 0) + stages.get("motion", 0) + stages.get("render", 0)
    throughput = {
        "frames": n, "wall_s": round(wall, 3), "fps": round(n / wall, 2),
        "engine_only_fps": round(1000 / max(engine_ms, 1e-6), 1),
        "cpu_cores": round(cpu_s / wall, 3),
    }
    # real time: 25 fps on the wall clock, engine alone and engine + VP8 (what a WebRTC viewer costs)
    realtime = {}
    for label, enc in (("engine", None), ("engine_vp8", _Encoders(size, ("vp8",)))):
        _, frames, w, c = _run(engine, portrait, audio, size, paced=True, encoders=enc)
        span = frames[-1]["t"] - frames[0]["t"] if len(frames) > 1 else w
        realtime[label] = {"frames": len(frames), "wall_s": round(w, 3), "fps": round((len(frames) - 1) / span, 2),
                           "cpu_cores": round(c / w, 3)}
    # the demo cat: its face fills the frame, so the warped region is the whole picture
    cat = load_portrait("cat")
    engine.prepare(cat, size)
    cat_stream, _, cat_wall, cat_cpu = _run(engine, cat, audio, size, paced=False, encoders=None)
    cat_result = {"stage_ms": {k: round(v, 3) for k, v in cat_stream.stage_times.mean_ms().items()},
                  "render_roi": list(engine.prepare(cat, size)[1].roi),
                  "engine_only_fps": round(cat_stream.stage_times.calls.get("render", 0) / cat_wall, 1)}
    result = {
        "size": size, "fps_target": FPS, "audio_s": seconds, "open_ms": round(open_ms, 1),
        "open_cached_ms": round(open_cached_ms, 1), "stage_ms": stages, "throughput": throughput,
        "realtime_25fps": realtime, "render_roi": list(engine.prepare(portrait, size)[1].roi), "cat": cat_result,
        "meets_goal": bool(realtime["engine_vp8"]["fps"] >= FPS * 0.97 and realtime["engine_vp8"]["cpu_cores"] < 1.0),
    }
    _plot(opts.out_dir / "lite.png", stages, per_frame, result)
    result["plot"] = str(opts.out_dir / "lite.png")
    return result


def _plot(path, stages: dict, per_frame: list[dict], result: dict) -> None:
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["features", "motion", "render", "encode_vp8", "encode_h264"]
    vals = [stages.get(k, 0.0) for k in names]
    a.bar(names, vals, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#937860"])
    a.axhline(1000 / FPS, color="k", ls="--", lw=1, label="40 ms frame budget")
    a.set_ylabel("ms per frame")
    a.set_title(f"lite engine, {result['size']}x{result['size']}")
    a.legend()
    for lbl in a.get_xticklabels():
        lbl.set_rotation(20)
    eng = [f["engine_ms"] for f in per_frame]
    b.plot(eng, lw=0.8, label="engine feed (ms)")
    b.plot([f["encode_vp8_ms"] for f in per_frame], lw=0.8, label="VP8 encode (ms)")
    b.set_xlabel("frame")
    rt = result["realtime_25fps"]
    b.set_title(f"at 25 fps: engine {rt['engine']['cpu_cores']} cores, "
                f"engine+VP8 {rt['engine_vp8']['cpu_cores']} cores", fontsize=10)
    b.legend()
    save_figure(fig, path, dpi=100)

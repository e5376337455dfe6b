"""``avatar bench --suite capacity``: how many lite-engine sessions one server sustains, before and after
shared encoding, and what each video encoder setting costs against the quality it gives.

Three parts, side by side in one run:

1. Encoder settings (in this process): ~100 real lite-engine frames (espeak-ng speech, 512x512)
   are encoded with aiortc's own VP8 encoder (its built-in settings) and with each candidate
   ``VideoEncoding``; every packet is decoded again and compared with the frame sent: PSNR (RGB)
   and SSIM (luma, 11x11 Gaussian window), encode ms/frame, kbps.
2. Server capacity: for each encoder mode (``aiortc``: per-viewer encoding with aiortc's settings,
   the server as it was; ``shared-video``: video encoded once per session, audio by each viewer's
   sender; ``shared``: the default, video and Opus audio once per session) an ``avatar serve``
   subprocess (admission
   off, so overload shows) gets sessions one by one, each with an aiortc WHEP viewer
   (``viewer_recorder.py``) and an agent pushing espeak-ng speech over the WebSocket. After each
   added session: server CPU (cores, from its process times) per session, delivered fps per session
   (frames the viewer received), p99 frame lateness (arrival vs the frame's pts, relative to the
   session's best frame). Then one session with 1..V viewers: the cost of each extra viewer.
3. Admission (``capacity_admission.py``): sessions asked / admitted / refused and each admitted
   session's delivered fps, watched and unwatched sessions mixed (the unwatched ones' viewers
   come late), with admission by measured load on and off on the same sequence.

Viewers and agents run in this process on the same machine (their decoding costs CPU too, the
same for both modes); the load average is reported before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import av
import numpy as np

from avatarstream.bench import capacity_admission
from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.serve_process import ServeProcess
from avatarstream.engines.base import FPS, EngineError
from avatarstream.bench.speech import espeak_speech, pcm_bytes, require_espeak
from avatarstream.bench.viewer_recorder import RecordingViewer
from avatarstream.realtime.client import AvatarClient
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.video_settings import VIDEO_DEFAULTS, VideoEncoding

if TYPE_CHECKING:  # the run_bench contract of `avatar bench`; the CLI imports this module by name only
    from avatarstream.cli.bench import BenchOptions

SIZE = 512
SUSTAINED_FPS = 24.0
SPEECH = ["Hello there, how are you today?", "Open your mouth wide and say papa, mama, baba.",
          "The weather is lovely, let us go for a walk."]


@dataclass(frozen=True)
class Plan:
    modes: tuple[str, ...]  # server encoder modes compared
    max_sessions: int
    max_viewers: int
    warmup_s: float
    window_s: float
    quality_frames: int
    stop_below_fps: float  # stop adding sessions once one delivers less than this


def plan_for(opts: BenchOptions) -> Plan:
    if opts.quick:  # a smoke run (the tests): every part and field, over windows too short for figures
        return Plan(("aiortc", "shared"), max_sessions=2, max_viewers=2, warmup_s=0.5, window_s=1.0,
                    quality_frames=10, stop_below_fps=0.0)
    return Plan(("aiortc", "shared-video", "shared"), max_sessions=8, max_viewers=3, warmup_s=2.0,
                window_s=max(3.0, min(opts.seconds, 10.0)), quality_frames=100, stop_below_fps=12.0)


def run_bench(opts: BenchOptions) -> dict:
    """Entry point for ``avatar bench --suite capacity``."""
    if opts.device != "cpu":
        raise EngineError("the capacity benchmark runs the lite engine on the CPU; use --device cpu")
    require_espeak("capacity")
    plan = plan_for(opts)
    result: dict = {"size": SIZE, "engine": "lite", "plan": asdict(plan),
                    "load_average_before": load_average()}
    speech = [espeak_speech(text) for text in SPEECH]
    result["encoders"] = encoder_quality(speech, plan.quality_frames)
    result["servers"] = {mode: asyncio.run(_server_capacity(mode, plan, speech)) for mode in plan.modes}
    result["admission_mix"] = capacity_admission.admission_mix(opts.quick, opts.seconds, speech)
    result["admission_mix"]["summary"] = capacity_admission.summary(result["admission_mix"])
    result["admission_mix"]["plot"] = str(capacity_admission.plot_mix(Path(opts.out_dir), result["admission_mix"]))
    result["load_average_after"] = load_average()
    result["summary"] = _summary(result)
    result["plot"] = str(_plot(Path(opts.out_dir), result))
    return result


# ---- 1. encoder settings: quality vs cost ---------------------------------------------------------
def candidate_settings() -> dict[str, VideoEncoding | None]:
    """None = aiortc's own VP8 encoder with its built-in settings."""
    d = VIDEO_DEFAULTS
    out: dict[str, VideoEncoding | None] = {"aiortc vp8 (old)": None}
    for speed in (6, 8, 10, 12, 16):
        out[f"vp8 speed {speed}"] = VideoEncoding(codec="vp8", vp8_speed=speed)
    out["vp8 speed 10, 500 kbps"] = VideoEncoding(codec="vp8", bitrate_kbps=500)
    out["vp8 speed 10, 1200 kbps"] = VideoEncoding(codec="vp8", bitrate_kbps=1200)
    out["vp8 speed 10, 2 threads"] = VideoEncoding(codec="vp8", threads=2)
    out["h264 ultrafast"] = VideoEncoding(codec="h264", h264_preset="ultrafast")
    out["h264 superfast"] = VideoEncoding(codec="h264", h264_preset="superfast")
    out[f"default ({d.codec} speed {d.vp8_speed}, {d.bitrate_kbps} kbps)"] = d
    return out


def render_frames(speech: list[np.ndarray], n: int) -> list[np.ndarray]:
    from avatarstream.engines.portraits import load_portrait
    from avatarstream.engines.registry import load_engine

    stream = load_engine("lite").open_stream(load_portrait(None), size=SIZE)
    audio = np.concatenate(speech)
    frames: list[np.ndarray] = []
    for i in range(0, audio.size - 640, 640):
        frames += [f.image for f in stream.feed(audio[i:i + 640])]
        if len(frames) >= n:
            break
    stream.close()
    return frames[:n]


def encoder_quality(speech: list[np.ndarray], n_frames: int) -> dict[str, dict]:
    frames = render_frames(speech, n_frames)
    return {name: _measure_encoder(frames, settings) for name, settings in candidate_settings().items()}


def _measure_encoder(frames: list[np.ndarray], settings: VideoEncoding | None) -> dict:
    from aiortc.codecs.vpx import Vp8Encoder

    codec = "vp8" if settings is None else settings.codec
    decoder = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    packets, seconds = [], 0.0
    if settings is None:
        enc = Vp8Encoder()
        for i, image in enumerate(frames):
            t0 = time.perf_counter()
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i * 3600, Fraction(1, 90000)
            payloads, _ = enc.encode(frame)
            seconds += time.perf_counter() - t0
            packets.append(b"".join(_vp8_depayload(p) for p in payloads))
    else:
        fe = FrameEncoder(codec, SIZE, settings)
        for i, image in enumerate(frames):
            packet, _ = fe.encode(image, i * 3600)
            packets.append(bytes(packet))
        seconds = fe.encode_seconds
    psnr, ssim = [], []
    for image, data in zip(frames, packets):
        for decoded in decoder.decode(av.Packet(data)):
            out = decoded.to_ndarray(format="rgb24")
            psnr.append(psnr_rgb(image, out))
            ssim.append(ssim_luma(image, out))
    return {"ms_per_frame": round(1000 * seconds / len(frames), 2),
            "kbps": round(sum(map(len, packets)) * 8 / 1000 / len(frames) * FPS, 1),
            "psnr_db": round(float(np.mean(psnr)), 2), "ssim": round(float(np.mean(ssim)), 4),
            "frames_decoded": len(psnr), "settings": None if settings is None else
            {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(settings).items()}}


def _vp8_depayload(payload: bytes) -> bytes:
    from aiortc.codecs.vpx import vp8_depayload

    return vp8_depayload(payload)


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ssim_luma(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma planes (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5)."""
    from scipy.ndimage import gaussian_filter

    weights = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ weights, b.astype(np.float64) @ weights
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, 1.5, truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


# ---- 2. server capacity ---------------------------------------------------------------------------
def _start_server(mode: str) -> ServeProcess:
    """``avatar serve`` in a subprocess (its CPU is measured apart from the viewers')."""
    return ServeProcess(["--size", str(SIZE), "--max-sessions", "64", "--no-admission", "--video-encoder", mode,
                         "--log-level", "warning"])


class WatchedSession:
    """One session: an agent pushing speech in a loop (none for ``start(speech=[])``), and its WHEP viewers."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.client = AvatarClient(url, http=http)
        self.viewers: list[RecordingViewer] = []
        self._speaker: asyncio.Task | None = None

    async def start(self, speech: list[np.ndarray]) -> None:
        await self.client.create_session(size=SIZE)
        await self.add_viewer()
        if speech:
            await self.client.connect(sample_rate=16000)
            self._speaker = asyncio.create_task(self._speak(speech), name="bench-agent")

    async def add_viewer(self) -> None:
        viewer = RecordingViewer(keep_images=False, max_video_frames=100_000)
        info = self.client.session
        assert info is not None  # start() created it
        await viewer.join(self.http, info.whep_url, info.token)
        await asyncio.wait_for(viewer.first_video.wait(), 30)
        self.viewers.append(viewer)

    async def _speak(self, speech: list[np.ndarray]) -> None:
        i = 0
        while True:
            audio = speech[i % len(speech)]
            await self.client.push_audio(pcm_bytes(audio))
            await self.client.end_utterance()
            await asyncio.sleep(audio.size / 16000 + 0.3)
            i += 1

    async def close(self) -> None:
        if self._speaker is not None:
            self._speaker.cancel()
            await asyncio.gather(self._speaker, return_exceptions=True)
        for v in self.viewers:
            await v.close()
        await self.client.close()


def _viewer_window(viewer: RecordingViewer, t0: float, t1: float) -> tuple[float, np.ndarray]:
    """(delivered fps, lateness in s of each frame) of the frames received in [t0, t1)."""
    video = viewer.recording.video
    t = np.array([v.t for v in video])
    pts = np.array([v.pts for v in video], dtype=np.float64) / 90_000
    offset = t - pts
    late = offset - offset.min()  # relative to the session's best-delivered frame
    inside = (t >= t0) & (t < t1)
    return float(inside.sum() / (t1 - t0)), late[inside]


async def _measure(server: ServeProcess, sessions: list[WatchedSession], plan: Plan) -> dict:
    await asyncio.sleep(plan.warmup_s)
    c0, t0 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(plan.window_s)
    c1, t1 = server.cpu_seconds(), time.monotonic()
    fps, lateness = [], []
    for s in sessions:
        for v in s.viewers:
            f, late = _viewer_window(v, t0, t1)
            fps.append(f)
            lateness.append(late)
    late_all = np.concatenate(lateness) if lateness else np.zeros(0)
    cores = (c1 - c0) / (t1 - t0)
    return {"server_cpu_cores": round(cores, 3), "server_cpu_per_session": round(cores / len(sessions), 3),
            "fps_min": round(min(fps), 2), "fps_mean": round(float(np.mean(fps)), 2),
            "fps_per_viewer": [round(f, 2) for f in fps],
            "lateness_p99_ms": round(float(np.percentile(late_all, 99)) * 1000, 1) if late_all.size else None,
            "load_average": load_average()[0]}


async def _server_capacity(mode: str, plan: Plan, speech: list[np.ndarray]) -> dict:
    server = _start_server(mode)
    out: dict = {"mode": mode, "by_sessions": [], "by_viewers": []}
    async with aiohttp.ClientSession() as http:
        sessions: list[WatchedSession] = []
        try:
            await server.ready(http, poll_s=0.3)
            await asyncio.sleep(min(1.0, plan.warmup_s))  # the server settles after start-up
            idle0, t0 = server.cpu_seconds(), time.monotonic()
            await asyncio.sleep(plan.window_s)
            out["idle_cpu_cores"] = round((server.cpu_seconds() - idle0) / (time.monotonic() - t0), 3)
            for n in range(1, plan.max_sessions + 1):
                s = WatchedSession(http, server.url)
                sessions.append(s)
                await s.start(speech)
                point = {"sessions": n, **await _measure(server, sessions, plan)}
                out["by_sessions"].append(point)
                print(f"[capacity] {mode}: {n} session(s): {point['fps_min']:.1f} fps min, "
                      f"{point['server_cpu_per_session']:.2f} cores/session", flush=True)
                if point["fps_min"] < plan.stop_below_fps:
                    break
            for s in sessions:
                await s.close()
            sessions = [WatchedSession(http, server.url)]
            await sessions[0].start(speech)
            for v in range(1, plan.max_viewers + 1):
                if v > 1:
                    await sessions[0].add_viewer()
                out["by_viewers"].append({"viewers": v, **await _measure(server, sessions, plan)})
        finally:
            for s in sessions:
                with contextlib.suppress(Exception):
                    await s.close()
            server.stop()
    ok = [p["sessions"] for p in out["by_sessions"] if p["fps_min"] >= SUSTAINED_FPS]
    out["sustained_sessions"] = _sustained(out["by_sessions"])
    out["max_tested_sessions_ok"] = max(ok) if ok else 0
    bv = out["by_viewers"]
    # what each added viewer of one session costs the server: 2nd, 3rd ...
    out["extra_viewer_cpu_cores"] = [round(b["server_cpu_cores"] - a["server_cpu_cores"], 3) for a, b in zip(bv, bv[1:])]
    if len(bv) >= 2:
        out["second_viewer_cpu_cores"] = out["extra_viewer_cpu_cores"][0]
        out["second_viewer_cost_ratio"] = round(out["second_viewer_cpu_cores"] / max(1e-6, bv[0]["server_cpu_cores"] - out["idle_cpu_cores"]), 3)
    if len(bv) >= 3:
        out["third_viewer_cpu_cores"] = out["extra_viewer_cpu_cores"][1]
    return out


def _sustained(points: list[dict]) -> int:
    """Sessions sustained: the largest N such that every step up to N kept every session >= 24 fps."""
    n = 0
    for p in points:
        if p["fps_min"] < SUSTAINED_FPS:
            break
        n = p["sessions"]
    return n


def _summary(result: dict) -> dict:
    servers = result["servers"]
    out = {mode: {"sustained_sessions_at_24fps": s["sustained_sessions"],
                  "cpu_per_session_1": s["by_sessions"][0]["server_cpu_per_session"] if s["by_sessions"] else None,
                  "second_viewer_cpu_cores": s.get("second_viewer_cpu_cores"),
                  "second_viewer_cost_ratio": s.get("second_viewer_cost_ratio"),
                  "third_viewer_cpu_cores": s.get("third_viewer_cpu_cores"),
                  "load_average_viewer_sweep": [p["load_average"] for p in s["by_viewers"]]}
           for mode, s in servers.items()}
    return out


def _plot(out_dir: Path, result: dict) -> Path:
    plt = pyplot()

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (a_fps, a_cpu, a_late), (a_view, a_q, a_txt) = axes
    colours = {"aiortc": "tab:red", "per-viewer": "tab:orange", "shared-video": "tab:green", "shared": "tab:blue"}
    for mode, s in result["servers"].items():
        pts = s["by_sessions"]
        n = [p["sessions"] for p in pts]
        c = colours.get(mode, None)
        label = {"aiortc": "aiortc per-viewer encoders", "shared-video": "shared video, per-viewer audio",
                 "shared": "shared video + audio"}.get(mode, mode)
        a_fps.plot(n, [p["fps_min"] for p in pts], "o-", color=c, label=f"{label} (min)")
        a_fps.plot(n, [p["fps_mean"] for p in pts], "o--", color=c, alpha=0.5, label=f"{label} (mean)")
        a_cpu.plot(n, [p["server_cpu_per_session"] for p in pts], "o-", color=c, label=label)
        a_late.plot(n, [p["lateness_p99_ms"] or 0 for p in pts], "o-", color=c, label=label)
        bv = s["by_viewers"]
        a_view.plot([p["viewers"] for p in bv], [p["server_cpu_cores"] for p in bv], "o-", color=c, label=label)
    a_fps.axhline(SUSTAINED_FPS, color="grey", ls=":", lw=1)
    a_fps.set(xlabel="sessions (1 viewer + 1 agent each)", ylabel="delivered fps per session", title="frame rate")
    a_cpu.set(xlabel="sessions", ylabel="server CPU cores per session", title="server CPU per session")
    a_late.set(xlabel="sessions", ylabel="p99 frame lateness (ms)", title="frame lateness")
    a_view.set(xlabel="viewers of one session", ylabel="server CPU cores", title="cost of more viewers")
    for ax in (a_fps, a_cpu, a_late, a_view):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for name, e in result["encoders"].items():
        a_q.scatter(e["ms_per_frame"], e["psnr_db"], color="tab:red" if "aiortc" in name else "tab:blue")
        a_q.annotate(f"{name}\n{e['kbps']:.0f} kbps, SSIM {e['ssim']:.3f}", (e["ms_per_frame"], e["psnr_db"]),
                     fontsize=6)
    a_q.set(xlabel="encode ms/frame (512x512)", ylabel="PSNR dB (decoded vs sent)", title="encoder quality vs cost")
    a_q.grid(alpha=0.3)
    a_txt.axis("off")
    lines = [f"load average before {result['load_average_before']}", f"after {result['load_average_after']}", ""]
    for mode, s in result["summary"].items():
        lines.append(f"{mode}: {s['sustained_sessions_at_24fps']} session(s) >= 24 fps; "
                     f"2nd viewer {s['second_viewer_cpu_cores']}, 3rd {s['third_viewer_cpu_cores']} cores")
    for name, m in result.get("admission_mix", {}).get("summary", {}).items():
        lines.append(f"{name}: {m['asked']} asked, {m['viewers_admitted']} watched, {m['viewers_refused']} refused; "
                     f"min {m['fps_min']} fps")
    a_txt.text(0, 1, "\n".join(lines), va="top", fontsize=9, family="monospace")
    fig.suptitle("avatar bench --suite capacity (lite engine, 512x512, server + clients on one machine)")
    path = out_dir / "capacity.png"
    save_figure(fig, path, dpi=100)
    return path

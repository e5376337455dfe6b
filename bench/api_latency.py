"""``avatar bench --engine api``: latency of the agent API, measured like an agent and a viewer see it.

A real server (``create_app``, lite engine, 127.0.0.1, random port) runs in this process; a
real aiortc viewer joins over WHEP and an agent pushes espeak-ng speech over the WebSocket.

* ``create_to_first_frame_ms``: ``POST /v1/sessions`` sent -> first decoded video frame at the viewer
  (split into ``create_ms`` and ``join_ms``: WHEP offer sent -> first frame).
* ``push_to_playback_started_ms``: first audio frame sent on the socket -> ``playback_started`` received.
* ``push_to_mouth_ms``: first audio frame sent -> first received video frame whose mouth (re-detected
  with ``engines.face``) opens clearly beyond idle motion; ``viewer`` uses the frame's arrival time,
  ``sender`` the time the server sent it (RTCP sender reports), so the transport share shows.
  The leading silence espeak-ng puts before each word is subtracted (it is content, not latency).

Each is reported as p50/p90/p99 over several sessions / utterances; a PNG plot goes next to the JSON.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import web
from tqdm import tqdm

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import espeak_speech, pcm_bytes, require_espeak
from avatarstream.engines.base import EngineError
from avatarstream.bench.viewer_recorder import Recording, RecordingViewer, mouth_openings
from avatarstream.realtime.client import AvatarClient
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.session.registry import SessionRegistry

if TYPE_CHECKING:  # the run_bench contract of `avatar bench`; the CLI imports this module by name only
    from avatarstream.cli.bench import BenchOptions

UTTERANCES = ["papa", "hello there", "mama", "open wide", "baba", "how are you", "yes", "goodbye"]
SIZE = 512


def run_bench(opts: BenchOptions) -> dict:
    """Entry point for ``avatar bench --engine api``."""
    if opts.device != "cpu":
        raise EngineError("the api benchmark runs the lite engine on the CPU; use --device cpu")
    require_espeak("api")
    return asyncio.run(_bench(opts))


def speech_onset(audio: np.ndarray, rate: int = 16000, threshold: float = 0.02) -> float:
    """Seconds of leading silence in ``audio`` (first 10 ms window louder than ``threshold``)."""
    hop = rate // 100
    n = audio.size // hop
    loud = np.nonzero(np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1)) > threshold)[0]
    return float(loud[0] * hop / rate) if loud.size else 0.0


def stats_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"n": 0, "p50": None, "p90": None, "p99": None}
    ms = np.asarray(values_s) * 1000
    return {"n": int(ms.size), **{f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)},
            "mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1)}


async def _start_server() -> tuple[str, SessionRegistry, web.AppRunner]:
    app = create_app(ServerConfig(engine="lite", size=SIZE, max_sessions=2, port=0))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", app[REGISTRY], runner


async def _bench(opts: BenchOptions) -> dict:

    n_sessions = 1 if opts.quick else 5
    n_utterances = 3 if opts.quick else max(8, int(opts.seconds * 2))
    speech = [espeak_speech(UTTERANCES[i % len(UTTERANCES)]) for i in range(n_utterances)]
    url, registry, runner = await _start_server()
    http = aiohttp.ClientSession()
    result: dict = {"size": SIZE, "engine": "lite", "sessions": n_sessions, "utterances": n_utterances,
                    "load_average_before": load_average()}
    try:
        # 1) session create -> first video frame at the viewer
        create, join, first = [], [], []
        for _ in tqdm(range(n_sessions), desc="sessions", unit="session"):
            client = AvatarClient(url, http=http)
            t0 = time.monotonic()
            info = await client.create_session(size=SIZE)
            t1 = time.monotonic()
            viewer = RecordingViewer(keep_images=False)
            await viewer.join(http, info.whep_url, info.token)
            await asyncio.wait_for(viewer.first_video.wait(), 30)
            first_at = viewer.recording.video[0].t
            create.append(t1 - t0)
            join.append(first_at - t1)
            first.append(first_at - t0)
            await viewer.close()
            await client.close()

        # 2) pushed audio -> playback_started, and -> mouth motion at the viewer
        client = AvatarClient(url, http=http)
        info = await client.create_session(size=SIZE)
        session = registry.get(info.id)
        assert session is not None  # created in this process a moment ago
        viewer = RecordingViewer(keep_images=True, max_video_frames=5000, image_size=256)
        await viewer.join(http, info.whep_url, info.token)
        await asyncio.wait_for(viewer.first_video.wait(), 30)
        await client.connect(sample_rate=16000)
        await asyncio.sleep(1.5)  # idle motion: the reference for "the mouth moved"
        t_idle_end = time.monotonic()
        pushes, to_started = [], []
        for audio in tqdm(speech, desc="utterances", unit="utt"):
            mark = client.mark()
            t_push, wall_push = time.monotonic(), time.time()
            await client.push_audio(pcm_bytes(audio))
            await client.end_utterance()
            await client.wait_for("playback_started", start=mark, timeout=10)
            to_started.append(time.monotonic() - t_push)
            await client.wait_for("playback_finished", start=mark, timeout=30)
            onset = speech_onset(audio)
            pushes.append((t_push + onset, wall_push + onset, audio.size / 16000 - onset))
            await asyncio.sleep(0.6)  # back to idle between utterances
        await viewer.close()
        stats = session.pipeline_stats()
        result["server"] = {"delay_frames": session.delay_frames, "lookahead_frames": session.lookahead_frames,
                            "frames_missing": stats["frames_missing"], "late_ticks": stats["late_ticks"],
                            "engine_ms_per_tick": round(stats["engine_ms_per_tick"], 2)}
        await client.close()
    finally:
        await http.close()
        await runner.cleanup()

    result["load_average_after"] = load_average()  # other work on the machine skews timings
    rec = viewer.recording
    mouth_viewer, mouth_sender, mouth_info = _mouth_latencies(rec, pushes, t_idle_end)
    result.update({
        "create_ms": stats_ms(create),
        "join_ms": stats_ms(join),
        "create_to_first_frame_ms": stats_ms(first),
        "push_to_playback_started_ms": stats_ms(to_started),
        "push_to_mouth_ms": {"viewer": stats_ms(mouth_viewer), "sender": stats_ms(mouth_sender)},
        "mouth_detection": mouth_info,
    })
    result["plot"] = str(_plot(opts.out_dir, first, to_started, mouth_viewer, mouth_sender, rec, pushes, mouth_info))
    return result


def _mouth_latencies(rec: Recording, pushes: list[tuple[float, float, float]],
                     t_idle_end: float) -> tuple[list[float], list[float], dict[str, Any]]:
    """Per utterance: first frame after the push whose mouth opening clearly exceeds idle motion."""

    arrivals = np.array([v.t for v in rec.video])
    sent = rec.video_times()  # sender wall clock (time.time)
    mouth = mouth_openings([v.image for v in tqdm(rec.video, desc="mouth", unit="frame", leave=False)])
    idle = mouth[arrivals < t_idle_end]
    idle_top = float(np.nanpercentile(idle, 98)) if np.isfinite(idle).any() else 0.0
    speaking_top = float(np.nanpercentile(mouth, 95))
    threshold = idle_top + 0.25 * max(speaking_top - idle_top, 1e-6)
    viewer, sender = [], []
    for t_push, wall_push, seconds in pushes:
        window = (arrivals >= t_push) & (arrivals < t_push + seconds + 2.0)
        hits = np.nonzero(window & (mouth > threshold))[0]
        if hits.size:
            viewer.append(arrivals[hits[0]] - t_push)
            sender.append(sent[hits[0]] - wall_push)
    info = {"idle_p98": round(idle_top, 4), "speaking_p95": round(speaking_top, 4), "threshold": round(threshold, 4),
            "frames": int(len(rec.video)), "face_found": round(float(np.isfinite(mouth).mean()), 3),
            "utterances_detected": len(viewer), "_series": (arrivals, mouth)}
    return viewer, sender, info


def _plot(out_dir: Path, first: list[float], to_started: list[float], mouth_viewer: list[float],
          mouth_sender: list[float], rec: Recording, pushes: list[tuple[float, float, float]],
          mouth_info: dict[str, Any]) -> Path:
    plt = pyplot()

    arrivals, mouth = mouth_info.pop("_series")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7))
    series = [("create -> first frame", first), ("push -> playback_started", to_started),
              ("push -> mouth (viewer)", mouth_viewer), ("push -> mouth (sender)", mouth_sender)]
    for name, values in series:
        if values:
            ms = np.sort(np.asarray(values) * 1000)
            ax1.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", label=f"{name} (p50 {np.median(ms):.0f} ms)")
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("fraction")
    ax1.set_title("agent API latency (lite engine, 512x512, 127.0.0.1)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    t0 = pushes[0][0] - 1.0 if pushes else arrivals[0]
    ax2.plot(arrivals - t0, mouth, lw=0.8, label="mouth opening at the viewer")
    ax2.axhline(mouth_info["threshold"], color="grey", ls="--", lw=0.8, label="motion threshold")
    for i, (t_push, _, seconds) in enumerate(pushes):
        ax2.axvspan(t_push - t0, t_push - t0 + seconds, color="orange", alpha=0.15, label="utterance pushed (length)" if i == 0 else None)
    ax2.set_xlabel("seconds")
    ax2.legend(fontsize=8)
    path = Path(out_dir) / "api_latency.png"
    save_figure(fig, path, dpi=110)
    return path

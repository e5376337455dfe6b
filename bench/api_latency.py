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

Each is reported as p50/p90/p99 over several sessions / utterances, for each latency preset side by side
(``classic``: the fixed settings before they were measured; ``adaptive``, the default; ``low``): one server
per preset in this process; the presets take turns in blocks (one session + viewer at a time, the others'
servers idle), alternating over rounds so that every preset meets the machine's changing load.
``side_by_side`` puts the figures next to the delay in effect and the smoothness counters (frames missing
at their send tick, late clock ticks, video ticks the viewer's sender skipped). A PNG plot goes next to the
JSON.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import web
from tqdm import tqdm

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import espeak_speech, pcm_bytes, require_espeak, speech_onset
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


def stats_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"n": 0, "p50": None, "p90": None, "p99": None}
    ms = np.asarray(values_s) * 1000
    return {"n": int(ms.size), **{f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)},
            "mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1)}


PRESETS = ("classic", "adaptive", "low")  # classic: the fixed settings before issue 26, side by side
UTTERANCES_PER_BLOCK = 5  # then the next preset takes its turn (short blocks: the presets meet the same load)


async def start_server(latency: str, max_sessions: int = 4) -> tuple[str, SessionRegistry, web.AppRunner]:
    """A server (lite, 512 px, the ``latency`` preset) in this process on a random loopback port."""
    app = create_app(ServerConfig(engine="lite", size=SIZE, max_sessions=max_sessions, port=0, latency=latency))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", app[REGISTRY], runner


def server_figures(session: Any) -> dict:
    """The session's latency settings in effect and its smoothness counters (for side-by-side runs)."""
    stats = session.pipeline_stats()
    skipped = [v.get("video", {}).get("skipped", 0) for v in session.viewer_stats() if v.get("transport") == "webrtc"]
    return {**stats["latency"], "ticks": stats["ticks"], "frames_missing": stats["frames_missing"],
            "late_ticks": stats["late_ticks"], "video_ticks_skipped": max(skipped) if skipped else None,
            "engine_ms_per_tick": round(stats["engine_ms_per_tick"], 2)}


class _Speaker:
    """One block of the push -> mouth part: a session of one preset's server, its WHEP viewer and agent
    socket, 1.5 s of idle motion (the reference for "the mouth moved"), then utterances one by one."""

    def __init__(self, preset: str, url: str, registry: SessionRegistry) -> None:
        self.preset, self.url, self.registry = preset, url, registry
        self.pushes: list[tuple[float, float, float]] = []  # (push + onset, wall push + onset, seconds)
        self.to_started: list[float] = []

    async def open(self, http: aiohttp.ClientSession) -> None:
        self.client = AvatarClient(self.url, http=http)
        info = await self.client.create_session(size=SIZE)
        session = self.registry.get(info.id)
        assert session is not None  # created in this process a moment ago
        self.session = session
        self.viewer = RecordingViewer(keep_images=True, max_video_frames=5000, image_size=256)
        await self.viewer.join(http, info.whep_url, info.token)
        await asyncio.wait_for(self.viewer.first_video.wait(), 30)
        await self.client.connect(sample_rate=16000)
        await asyncio.sleep(1.5)  # idle motion (and the render margin measured)
        self.t_idle_end = time.monotonic()

    async def say(self, audio: np.ndarray) -> None:
        mark = self.client.mark()
        t_push, wall_push = time.monotonic(), time.time()
        await self.client.push_audio(pcm_bytes(audio))
        await self.client.end_utterance()
        await self.client.wait_for("playback_started", start=mark, timeout=10)
        self.to_started.append(time.monotonic() - t_push)
        await self.client.wait_for("playback_finished", start=mark, timeout=30)
        onset = speech_onset(audio)
        self.pushes.append((t_push + onset, wall_push + onset, audio.size / 16000 - onset))

    async def close(self) -> dict:
        figures = server_figures(self.session)
        await self.viewer.close()
        await self.client.close()
        return figures


async def _create_to_first_frame(http: aiohttp.ClientSession, url: str) -> tuple[float, float, float]:
    client = AvatarClient(url, http=http)
    t0 = time.monotonic()
    info = await client.create_session(size=SIZE)
    t1 = time.monotonic()
    viewer = RecordingViewer(keep_images=False)
    await viewer.join(http, info.whep_url, info.token)
    await asyncio.wait_for(viewer.first_video.wait(), 30)
    first_at = viewer.recording.video[0].t
    await viewer.close()
    await client.close()
    return t1 - t0, first_at - t1, first_at - t0


def sum_counters(blocks: list[dict]) -> dict:
    """The server figures of several blocks: counters added up, settings of the last block."""
    out = dict(blocks[-1])
    for key in ("ticks", "frames_missing", "late_ticks", "video_ticks_skipped"):
        out[key] = sum(b[key] or 0 for b in blocks)
    out["delay_ms_per_block"] = [b["delay_ms"] for b in blocks]
    return out


BlockRunner = Callable[[aiohttp.ClientSession, str, str, SessionRegistry, list[np.ndarray]], Awaitable[None]]


async def alternate_presets(opts: BenchOptions, run_block: BlockRunner) -> dict:
    """Speak the bench's utterances (2 with ``--quick``, else 2 per second of ``--seconds``, at least 8) in
    rounds of blocks of up to ``UTTERANCES_PER_BLOCK``: ``run_block(http, preset, url, registry, utterances)``
    for one preset at a time (so each runs alone), each preset going first in turn (so each meets the
    machine's changing load as the others do); one server per preset in this process, cleaned up at the end.
    Returns the result's common fields (``presets`` left empty for the caller) with the load average before
    and after (other work on the machine skews timings)."""
    n_utterances = 2 if opts.quick else max(8, int(opts.seconds * 2))
    n_rounds = 1 if opts.quick else -(-n_utterances // UTTERANCES_PER_BLOCK)
    speech = [espeak_speech(UTTERANCES[i % len(UTTERANCES)]) for i in range(n_utterances)]
    per_block = -(-n_utterances // n_rounds)
    http = aiohttp.ClientSession()
    result: dict = {"size": SIZE, "engine": "lite", "rounds": n_rounds, "utterances": n_utterances,
                    "presets": {}, "load_average_before": load_average()}
    servers = {p: await start_server(p) for p in PRESETS}  # an unwatched server costs next to nothing
    try:
        for r in tqdm(range(n_rounds), desc="rounds", unit="round"):
            for preset in PRESETS[r % 3:] + PRESETS[:r % 3]:  # each preset goes first in turn
                url, registry, _ = servers[preset]
                await run_block(http, preset, url, registry, speech[r * per_block:(r + 1) * per_block])
    finally:
        for _, _, runner in servers.values():
            await runner.cleanup()
        await http.close()
    result["load_average_after"] = load_average()
    return result


async def _bench(opts: BenchOptions) -> dict:
    first: dict[str, list[tuple[float, float, float]]] = {p: [] for p in PRESETS}
    to_started: dict[str, list[float]] = {p: [] for p in PRESETS}
    mouth: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in PRESETS}
    detection: dict[str, list[dict]] = {p: [] for p in PRESETS}
    figures: dict[str, list[dict]] = {p: [] for p in PRESETS}

    async def run_block(http: aiohttp.ClientSession, preset: str, url: str, registry: SessionRegistry,
                        utterances: list[np.ndarray]) -> None:
        first[preset].append(await _create_to_first_frame(http, url))
        block = _Speaker(preset, url, registry)
        await block.open(http)
        for audio in utterances:
            await block.say(audio)
            await asyncio.sleep(0.6)  # back to idle between utterances
        figures[preset].append(await block.close())
        to_started[preset] += block.to_started
        viewer_s, sender_s, info = mouth_latencies(block.viewer.recording, block.pushes, block.t_idle_end)
        info.pop("_series")
        mouth[preset][0].extend(viewer_s)
        mouth[preset][1].extend(sender_s)
        detection[preset].append(info)

    result = await alternate_presets(opts, run_block)

    for preset in PRESETS:
        create, join, total = (list(x) for x in zip(*first[preset], strict=True))
        result["presets"][preset] = {
            "create_ms": stats_ms(create), "join_ms": stats_ms(join), "create_to_first_frame_ms": stats_ms(total),
            "push_to_playback_started_ms": stats_ms(to_started[preset]),
            "push_to_mouth_ms": {"viewer": stats_ms(mouth[preset][0]), "sender": stats_ms(mouth[preset][1])},
            "mouth_detection": detection[preset],
            "server": sum_counters(figures[preset]),
        }
    result["side_by_side"] = side_by_side(result["presets"], "push_to_mouth_ms")
    curves = {p: (to_started[p], mouth[p][0], mouth[p][1]) for p in PRESETS}
    result["plot"] = str(plot_cdfs(opts.out_dir, curves, "api_latency.png",
                                   "agent API: push -> mouth by latency preset (lite engine, 512x512, 127.0.0.1)",
                                   [("push -> mouth at the viewer", 1), ("push -> mouth at the sender", 2),
                                    ("push -> playback_started", 0)]))
    return result


def side_by_side(presets: dict, key: str) -> list[dict]:
    """One row per preset: p50/p99 of ``key`` at the viewer and at the sender, the delay in effect and
    the smoothness counters."""
    rows = []
    for name, r in presets.items():
        srv = r["server"]
        rows.append({"preset": name, "viewer_p50": r[key]["viewer"]["p50"], "viewer_p99": r[key]["viewer"]["p99"],
                     "sender_p50": r[key]["sender"]["p50"], "sender_p99": r[key]["sender"]["p99"],
                     "delay_ms": srv["delay_ms"], "margin_ms": srv["margin_ms"],
                     "render_ms_p99": srv["render_ms_p99"], "frames_missing": srv["frames_missing"],
                     "late_ticks": srv["late_ticks"], "video_ticks_skipped": srv["video_ticks_skipped"],
                     "ticks": srv["ticks"]})
    return rows


def mouth_latencies(rec: Recording, pushes: list[tuple[float, float, float]],
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


def plot_cdfs(out_dir: Path, curves: dict[str, tuple], name: str, title: str,
              panels: list[tuple[str, int]]) -> Path:
    """One panel per ``(title, index into each preset's curves)``: the CDF of each preset's values."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8), sharex=True)
    colors = {"classic": "tab:grey", "adaptive": "tab:blue", "low": "tab:orange"}
    for ax, (panel, i) in zip(np.atleast_1d(axes), panels, strict=True):
        for preset, series in curves.items():
            values = series[i]
            if values:
                ms = np.sort(np.asarray(values) * 1000)
                ax.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", color=colors.get(preset),
                        label=f"{preset}: p50 {np.median(ms):.0f}, p99 {np.percentile(ms, 99):.0f} ms")
        ax.set_title(panel)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    np.atleast_1d(axes)[0].set_ylabel("fraction")
    fig.suptitle(title)
    path = Path(out_dir) / name
    save_figure(fig, path, dpi=110)
    return path

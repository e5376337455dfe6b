"""The admission part of ``avatar bench --suite capacity``: sessions asked, admitted and refused, and
the frame rate each admitted session delivers, with watched and unwatched sessions mixed; with
admission by measured load on (the default) and off, side by side on the same sequence.

For each setting an ``avatar serve`` subprocess (lite engine, ``SIZE`` px, shared encoding, no
``--max-sessions``) gets, one by one:

1. ``asked`` sessions (``POST /v1/sessions``). Every other created session is watched at once: an
   aiortc WHEP viewer (``viewer_recorder.py``) and an agent pushing espeak-ng speech over the
   WebSocket; the others stay unwatched (created, nobody watching: an agent that connects its
   viewer later, a page that creates on load and starts on a click). ``settle_s`` after each
   watched session, so the admission window measures it.
2. A viewer (and an agent) for each unwatched session, the late viewers, ``settle_s`` apart.
3. Over ``window_s``: each watched session's delivered frame rate: frames sent with a newly
   rendered frame per second (``/metrics``' per-session counters: ticks minus ticks that repeated
   the previous frame because the engine had not rendered theirs), and frames its viewer received per second (which
   counts repeated frames too: a viewer receives ~25 fps even from an engine that renders 10);
   the server's CPU (cores, from its process times) and ``/health``'s capacity figures.

Reported per setting: sessions asked / created / refused at creation, late viewers asked /
admitted / refused (with each refusal's message), each admitted session's fps, the lowest, and
how many delivered >= 24 fps. Viewers and agents run in this process on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.serve_process import ServeProcess
from avatarstream.bench.speech import pcm_bytes
from avatarstream.bench.viewer_recorder import RecordingViewer
from avatarstream.realtime.client import AvatarClient, ClientError

SIZE = 512
SUSTAINED_FPS = 24.0


@dataclass(frozen=True)
class MixPlan:
    asked: int  # sessions asked for
    settle_s: float  # wait after each session starts rendering (the admission window measures it)
    window_s: float  # the delivered frame rate is measured over this window at the end
    admission_window_s: float  # the server's --admission-window


def mix_plan(quick: bool, seconds: float) -> MixPlan:
    if quick:
        return MixPlan(asked=3, settle_s=1.6, window_s=1.0, admission_window_s=1.0)
    return MixPlan(asked=8, settle_s=4.5, window_s=max(4.0, min(seconds, 10.0)), admission_window_s=3.0)


def _start_server(admission: bool, plan: MixPlan) -> ServeProcess:
    """``avatar serve`` in a subprocess, admission on or off."""
    args = ["--size", str(SIZE), "--video-encoder", "shared", "--admission-window", str(plan.admission_window_s),
            "--log-level", "warning"]
    return ServeProcess([*args, "--no-admission"] if not admission else args)


@dataclass
class _Asked:
    """One session asked for: its client, and its viewer once one was admitted."""

    index: int
    client: AvatarClient
    watch_at_once: bool
    viewer: RecordingViewer | None = None
    speaker: asyncio.Task | None = None
    refused: str | None = None  # the 503's message, at creation or for its viewer


async def _speak(client: AvatarClient, speech: list[np.ndarray]) -> None:
    i = 0
    while True:
        audio = speech[i % len(speech)]
        await client.push_audio(pcm_bytes(audio))
        await client.end_utterance()
        await asyncio.sleep(audio.size / 16000 + 0.3)
        i += 1


async def _counters(http: aiohttp.ClientSession, url: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """(when, {session id: (ticks, ticks sent without a newly rendered frame)}) of every session, from one
    ``GET /metrics`` (one instant for all sessions: reading them one by one from a busy server skews the
    windows)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    when = time.monotonic()
    values: dict[str, dict[str, float]] = {"ticks": {}, "missing": {}}
    for family in text_string_to_metric_families(text):
        key = {"avatar_session_ticks": "ticks", "avatar_session_frames_missing": "missing"}.get(family.name)
        if key is not None:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    values[key][sample.labels["session"]] = sample.value
    return when, {sid: (ticks, values["missing"].get(sid, 0.0)) for sid, ticks in values["ticks"].items()}


def _refusal_message(text: str) -> str:
    """The ``message`` of a JSON error inside ``RecordingViewer``'s 'WHEP offer refused: 503 {...}'."""
    body = text[text.find("{"):]
    with contextlib.suppress(ValueError):
        return str(json.loads(body).get("message", text))
    return text


async def _watch(http: aiohttp.ClientSession, asked: _Asked, speech: list[np.ndarray]) -> bool:
    """Attach a viewer, then an agent that speaks; False (with the refusal kept) on 503."""
    info = asked.client.session
    assert info is not None
    viewer = RecordingViewer(keep_images=False, max_video_frames=100_000)
    try:
        await viewer.join(http, info.whep_url, info.token)
    except RuntimeError as exc:
        await viewer.close()
        if "503" not in str(exc):
            raise
        asked.refused = _refusal_message(str(exc))
        return False
    await asyncio.wait_for(viewer.first_video.wait(), 30)
    asked.viewer = viewer
    await asked.client.connect(sample_rate=16000)
    asked.speaker = asyncio.create_task(_speak(asked.client, speech), name=f"mix-agent-{asked.index}")
    return True


async def _run_setting(admission: bool, plan: MixPlan, speech: list[np.ndarray]) -> dict:
    server = _start_server(admission, plan)
    out: dict = {"admission": admission, "asked": plan.asked}
    sessions: list[_Asked] = []
    async with aiohttp.ClientSession() as http:
        try:
            await server.ready(http)
            await asyncio.sleep(plan.admission_window_s)  # the server's own base cost, measured alone
            refused_at_create: list[str] = []
            for i in range(plan.asked):
                client = AvatarClient(server.url, http=http)
                try:
                    await client.create_session(size=SIZE)
                except ClientError as exc:
                    if exc.status != 503:
                        raise
                    refused_at_create.append(str(exc))
                    continue
                asked = _Asked(i, client, watch_at_once=i % 2 == 0)
                sessions.append(asked)
                if asked.watch_at_once and await _watch(http, asked, speech):
                    await asyncio.sleep(plan.settle_s)
            late = [s for s in sessions if not s.watch_at_once]
            at_once = [s for s in sessions if s.watch_at_once]
            for asked in late:
                if await _watch(http, asked, speech):
                    await asyncio.sleep(plan.settle_s)
            m0, before = await _counters(http, server.url)
            c0, t0 = server.cpu_seconds(), time.monotonic()
            await asyncio.sleep(plan.window_s)
            c1, t1 = server.cpu_seconds(), time.monotonic()
            m1, after = await _counters(http, server.url)
            async with http.get(f"{server.url}/health") as resp:
                health = await resp.json()
            per_session: list[dict[str, Any]] = []
            for s in sessions:
                fps = received = None
                info = s.client.session
                if s.viewer is not None and info is not None and info.id in before and info.id in after:
                    (ticks0, missing0), (ticks1, missing1) = before[info.id], after[info.id]
                    fps = round(((ticks1 - ticks0) - (missing1 - missing0)) / (m1 - m0), 2)
                    times = np.array([v.t for v in s.viewer.recording.video])
                    received = round(float(((times >= t0) & (times < t1)).sum() / (t1 - t0)), 2)
                per_session.append({"session": s.index, "watched": "at once" if s.watch_at_once else "late",
                                    "admitted": s.viewer is not None, "fps": fps, "received_fps": received,
                                    "refused": s.refused})
            fps_all = [p["fps"] for p in per_session if p["fps"] is not None]
            out.update({
                "created": len(sessions), "refused_at_create": refused_at_create,
                "viewers_asked": len(sessions),
                "viewers_admitted": sum(s.viewer is not None for s in sessions),
                "viewers_refused": sum(s.viewer is None for s in sessions),
                "watched_at_once_admitted": sum(s.viewer is not None for s in at_once),
                "late_viewers_asked": len(late), "late_viewers_admitted": sum(s.viewer is not None for s in late),
                "refusals": [s.refused for s in sessions if s.refused],
                "sessions": per_session,
                "fps_min": min(fps_all) if fps_all else None,
                "fps_mean": round(float(np.mean(fps_all)), 2) if fps_all else None,
                "sessions_at_24fps": sum(f >= SUSTAINED_FPS for f in fps_all),
                "server_cpu_cores": round((c1 - c0) / (t1 - t0), 3),
                "load_average": load_average(),
                "health": {"sessions": health.get("sessions"), "active_sessions": health.get("active_sessions"),
                           "capacity": health.get("capacity")},
            })
        finally:
            for s in sessions:
                if s.speaker is not None:
                    s.speaker.cancel()
                    await asyncio.gather(s.speaker, return_exceptions=True)
                if s.viewer is not None:
                    with contextlib.suppress(Exception):
                        await s.viewer.close()
                with contextlib.suppress(Exception):
                    await s.client.close()
            server.stop()
    print(f"[capacity] admission {'on' if admission else 'off'}: {plan.asked} asked, {out['created']} created, "
          f"{out['viewers_admitted']} watched, {out['viewers_refused']} viewer(s) refused; fps min "
          f"{out['fps_min']}, {out['sessions_at_24fps']} session(s) >= 24 fps", flush=True)
    return out


def admission_mix(quick: bool, seconds: float, speech: list[np.ndarray]) -> dict:
    """Admission on, then off, on the same sequence (``quick``: on only, a smoke run)."""
    plan = mix_plan(quick, seconds)
    settings = (("admission", True),) if quick else (("admission", True), ("no admission", False))
    return {"plan": plan.__dict__,
            "settings": {name: asyncio.run(_run_setting(admission, plan, speech)) for name, admission in settings}}


def summary(mix: dict) -> dict:
    """Per setting: asked / created / watched / refused, the lowest fps, sessions >= 24 fps."""
    return {name: {k: r[k] for k in ("asked", "created", "viewers_admitted", "viewers_refused",
                                     "fps_min", "sessions_at_24fps", "server_cpu_cores")}
            for name, r in mix["settings"].items()}


def plot_mix(out_dir: Path, mix: dict) -> Path:
    """Each session's delivered fps (0: not watched, refused), per setting, the 24 fps line."""
    plt = pyplot()
    settings = mix["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), sharey=True)
    for ax, (name, r) in zip(np.atleast_1d(axes), settings.items()):
        rows = r["sessions"]
        xs = np.arange(len(rows))
        colours = ["tab:blue" if p["watched"] == "at once" else "tab:green" for p in rows]
        ax.bar(xs, [p["fps"] or 0 for p in rows], color=colours)
        ax.plot(xs, [p["received_fps"] if p["received_fps"] is not None else np.nan for p in rows], "k.",
                label="frames received by the bench's viewer (repeats included)")
        for x, p in zip(xs, rows):
            if not p["admitted"]:
                ax.annotate("refused\n(503)", (x, 1), ha="center", fontsize=7, color="tab:red")
        ax.axhline(SUSTAINED_FPS, color="grey", ls=":", lw=1)
        ax.set_xticks(xs, [f"{p['session']}\n{p['watched']}" for p in rows], fontsize=7)
        ax.legend(fontsize=7, loc="center right", framealpha=0.9)
        ax.set(ylabel="delivered fps (newly rendered frames sent)", title=f"{name}: {r['asked']} asked, {r['viewers_admitted']} watched, "
                                             f"{r['viewers_refused']} refused")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("avatar bench --suite capacity: watched (blue: at once, green: late) and refused sessions")
    return save_figure(fig, out_dir / "capacity_admission.png")

"""Soak benchmark (``avatar bench --soak SECONDS``): a real ``avatar serve`` (lite engine) in a
subprocess, ``sessions`` sessions each watched by an aiortc viewer and fed speech by an agent, plus
churn throughout: viewers that join and leave, viewers killed without hanging up, and whole
sessions created and deleted.

Every ``SAMPLE_S`` seconds it records, for the server process: RSS, open file descriptors and
threads (psutil); per session: video frames received per second by its long-lived viewer, and the
sender clock of its video and audio tracks from ``/stats`` every second (the RTP timestamp and send
time of each sender's last packet). A track's clock offset is ``send time - rtp / rate``; its change
over the run (median of the last fifth of the samples minus median of the first fifth) is that
track's drift against the wall clock, and the same for the difference of the two tracks is the A/V
drift (the session sends audio and video of one content frame at one clock tick, so any drift would
be a pacing bug); a single late packet shows as A/V jitter, reported apart. Errors (HTTP failures, lost sessions, viewers that stop receiving) are
counted, never hidden. Writes ``soak.json`` data into the report (with the time series of every
sample, so figures can be re-derived) and ``soak.png``.

Warm-up: growth is reported from the end of the warm-up, which is not a picked number but the
first sample at which every churn action kind has completed ``WARM_UP_EACH`` times (each kind has
then created and torn down its threads, codec contexts and peer connections several times, so
the allocator's pools have seen the run's peak working set). Growth is also reported from the old
fixed ``WARM_UP_S`` mark, and as a least-squares slope of RSS over the post-warm-up samples
(MB per hour), which single steps up or down do not move much.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.serve_process import free_port, wait_healthy
from avatarstream.bench.speech import espeak_speech, pcm_bytes, require_espeak
from avatarstream.realtime.client import AvatarClient, SessionInfo
from avatarstream.realtime.transports.webrtc.peer import ice_configuration

SAMPLE_S = 5.0  # seconds between samples
CLOCK_SAMPLE_S = 1.0  # seconds between sender-clock samples
WARM_UP_S = 20.0  # the first figures: growth from this mark on (start-up allocations excluded)
WARM_UP_EACH = 5  # warm-up ends once every churn action kind has completed this many times
CHURN_KINDS = ("extra_viewer", "killed_viewer", "session")
SERIES_COLUMNS = ("t", "rss_mb", "fds", "threads", "cpu_s", "sessions", "churn", "fps")
SENTENCES = ["Hello there, how are you today?", "Open wide and say papa, mama, baba.",
             "The quick brown fox jumps over the lazy dog.", "Thank you, goodbye."]
VIDEO_RATE, AUDIO_RATE = 90_000, 48_000


@dataclass
class SoakOptions:
    seconds: float = 3600.0
    sessions: int = 3
    size: int = 256
    churn_every_s: float = 15.0  # one churn action (join/leave/kill a viewer, create/delete a session) this often
    abuse_s: float = 30.0  # an abusive agent floods its own session for this long, a third into the run (0: never)
    out_dir: Path = Path("bench-out")
    plot: bool = True
    server_args: tuple[str, ...] = ()  # more ``avatar serve`` options (e.g. allocator settings to compare)
    # after the churn stops, wait this long (a killed viewer holds its socket until ICE consent
    # expires, ~30 s) and sample fds, threads and RSS once more, with only the long-lived sessions
    settle_s: float = 45.0


class CountingViewer:
    """A WHEP viewer that counts what it receives and keeps nothing else (memory stays flat for hours)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(ice_configuration([]))
        self.video_frames = 0
        self.audio_frames = 0
        self._tasks: list[asyncio.Task] = []

    async def join(self, http: aiohttp.ClientSession, whep_url: str, token: str) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def _on_track(track: Any) -> None:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        async with http.post(whep_url, data=self.pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"WHEP refused: {resp.status} {body[:200]}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def _read(self, track: Any) -> None:
        try:
            while True:
                await track.recv()
                if track.kind == "video":
                    self.video_frames += 1
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            return

    async def close(self) -> None:
        await self.pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class SoakSession:
    client: AvatarClient
    info: SessionInfo
    viewer: CountingViewer
    speaker: asyncio.Task | None = None
    last_frames: int = 0
    fps: list[float] = field(default_factory=list)
    # kind -> [(wall time, send time - rtp / rate, rate)]
    clock: dict[str, list[tuple[float, float, int]]] = field(default_factory=lambda: {"video": [], "audio": []})


async def _speak_forever(client: AvatarClient, speech: list[np.ndarray], errors: list[str]) -> None:
    i = 0
    while True:
        try:
            start = len(client.events)  # this utterance's playback_finished, not an earlier one
            await client.push_audio(pcm_bytes(speech[i % len(speech)]))
            await client.end_utterance()
            await client.wait_for("playback_finished", start=start, timeout=30)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted, the soak goes on
            errors.append(f"agent: {type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(1.0)
        i += 1
        await asyncio.sleep(random.uniform(0.5, 2.0))


FLOOD_GIVE_UP_S = 120.0  # a flood the server has not cut off this long after the abuse window: given up
MIN_HEALTH_PROBES = 10  # the abuse window also lasts until /health has answered this often (or FLOOD_GIVE_UP_S)
FLOOD_REASON = re.compile(r"(\d+) received, (\d+) refused, (\d+) in a row")


async def _abuse(http: aiohttp.ClientSession, url: str, size: int, seconds: float,
                 health_ms: list[float], errors: list[str]) -> dict[str, int | None]:
    """One more session whose agent sends alternating 2-byte audio frames and end_of_utterance as
    fast as it can (the case that once froze the server), while /health is timed every 0.25 s, for
    ``seconds`` and on until the server cuts the flood off (that takes a count of refused messages,
    so its time depends on this machine's speed) and ``MIN_HEALTH_PROBES`` answers came;
    ``FLOOD_GIVE_UP_S`` only ends a server that never does. The server's own counts come back in
    the close frame's reason."""
    client = AvatarClient(url, http=http)
    info = await client.create_session(size=size)
    sent = 0
    close_codes: list[int | None] = []
    reasons: list[str] = []

    async def flood() -> None:
        nonlocal sent
        async with http.ws_connect(info.agent_url + "?sample_rate=16000",
                                   headers={"Authorization": f"Bearer {info.token}"}) as ws:
            reader = asyncio.ensure_future(_drain(ws))
            try:
                while not ws.closed:
                    await ws.send_bytes(b"\x10\x00")
                    sent += 1  # counted once written, so the server cannot have received more
                    await ws.send_str('{"type": "end_of_utterance"}')
                    sent += 1
                    if sent % 200 == 0:
                        await asyncio.sleep(0)  # let the probe run in this (client) process
            except ConnectionResetError:
                pass  # the server closed the flooding socket: the expected outcome
            finally:
                if ws.closed:  # by the server: its close frame's reason is the reader's
                    await asyncio.wait({reader}, timeout=5.0)
                reader.cancel()
            if reader.done() and not reader.cancelled() and reader.exception() is None:
                reasons.append(reader.result())
            close_codes.append(ws.close_code)

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            async with http.get(f"{url}/health") as resp:
                await resp.read()
            health_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.25)

    flooding, probing = asyncio.ensure_future(flood()), asyncio.ensure_future(probe())
    await asyncio.sleep(seconds)
    give_up = time.monotonic() + FLOOD_GIVE_UP_S
    await asyncio.wait({flooding}, timeout=FLOOD_GIVE_UP_S)
    while len(health_ms) < MIN_HEALTH_PROBES and time.monotonic() < give_up and not probing.done():
        await asyncio.sleep(0.25)
    for t in (flooding, probing):
        t.cancel()
    for r in await asyncio.gather(flooding, probing, return_exceptions=True):
        if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError):
            errors.append(f"abuse: {type(r).__name__}: {r}"[:200])
    await client.close()
    counts = FLOOD_REASON.search(reasons[0]) if reasons else None
    received, refused, in_a_row = (int(g) for g in counts.groups()) if counts else (None, None, None)
    return {"messages_sent": sent, "server_closed_flood_with": close_codes[0] if close_codes else -1,
            "server_received": received, "server_refused": refused, "server_refused_in_a_row": in_a_row}


async def _drain(ws: Any) -> str:
    """Read what the server sends until it closes; the close frame's reason."""
    while True:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return str(msg.extra or "")


async def _open_session(http: aiohttp.ClientSession, url: str, size: int) -> SoakSession:
    client = AvatarClient(url, http=http)
    info = await client.create_session(size=size)
    await client.connect(sample_rate=16000)
    viewer = CountingViewer()
    await viewer.join(http, info.whep_url, info.token)
    return SoakSession(client, info, viewer)


async def _sample_clocks(http: aiohttp.ClientSession, url: str, sessions: list[SoakSession], errors: list[str]) -> None:
    """Every CLOCK_SAMPLE_S: each session's sender clocks (many samples: one late packet is jitter, not drift)."""
    while True:
        await asyncio.sleep(CLOCK_SAMPLE_S)
        for s in sessions:
            try:
                await _sample_clock(http, url, s)
            except Exception as exc:
                errors.append(f"stats of {s.info.id}: {type(exc).__name__}: {exc}"[:200])


async def _sample_clock(http: aiohttp.ClientSession, url: str, s: SoakSession) -> None:
    info = s.info
    async with http.get(f"{url}/stats/{info.id}", headers={"Authorization": f"Bearer {info.token}"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/stats {resp.status}")
        stats = await resp.json()
    senders = stats.get("senders", [])
    first = min((x["viewer"] for x in senders), default=None)  # the long-lived viewer joined first
    for sender in senders:
        if sender.get("viewer") != first:
            continue
        rate = VIDEO_RATE if sender["kind"] == "video" else AUDIO_RATE
        s.clock[sender["kind"]].append((time.time(), sender["time"] - sender["rtp_timestamp"] / rate, rate))


async def _churn(http: aiohttp.ClientSession, url: str, sessions: list[SoakSession], size: int,
                 errors: list[str], counts: dict[str, int]) -> None:
    action = random.choice(CHURN_KINDS)
    try:
        if action == "session":  # a whole session created, watched, spoken to, deleted
            s = await _open_session(http, url, size)
            await asyncio.sleep(3.0)
            await s.viewer.close()
            await s.client.close()
        else:
            target = random.choice(sessions)
            v = CountingViewer()
            await v.join(http, target.info.whep_url, target.info.token)
            await asyncio.sleep(3.0)
            if action == "killed_viewer":  # a viewer process killed: no DELETE, no DTLS close, it just vanishes
                child = subprocess.Popen([sys.executable, "-m", "avatarstream.bench.soak", "--viewer",
                                          target.info.whep_url, target.info.token],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(6.0)
                child.kill()
                await asyncio.get_running_loop().run_in_executor(None, child.wait)
            await v.close()
        counts[action] = counts.get(action, 0) + 1
    except Exception as exc:
        errors.append(f"churn {action}: {type(exc).__name__}: {exc}"[:200])


async def run_soak(opts: SoakOptions) -> dict:
    require_espeak("soak")
    speech = [espeak_speech(t) for t in SENTENCES]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(opts.out_dir / "soak-server.log", "w")
    cmd = [sys.executable, "-m", "avatarstream.cli", "serve", "--port", str(port), "--size", str(opts.size),
           "--max-sessions", str(opts.sessions + 2), "--log-level", "warning"]
    if "--no-admission" in subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True).stdout:
        cmd.append("--no-admission")  # the soak measures a fixed load, not the admission policy
    cmd += list(opts.server_args)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = psutil.Process(proc.pid)
    errors: list[str] = []
    abuse_result: dict[str, Any] | None = None
    churn_counts: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    sessions: list[SoakSession] = []
    settled: dict[str, Any] | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await wait_healthy(http, url, proc)
            for _ in range(opts.sessions):
                s = await _open_session(http, url, opts.size)
                s.speaker = asyncio.ensure_future(_speak_forever(s.client, speech, errors))
                sessions.append(s)
            t0 = time.monotonic()
            next_churn = t0 + opts.churn_every_s
            churn: asyncio.Task | None = None
            abuse: asyncio.Task | None = None
            abuse_window = (opts.seconds / 3, opts.seconds / 3 + opts.abuse_s) if opts.abuse_s > 0 else None
            health_ms: list[float] = []
            clocks = asyncio.ensure_future(_sample_clocks(http, url, sessions, errors))
            while (now := time.monotonic()) - t0 < opts.seconds:
                await asyncio.sleep(SAMPLE_S)
                if proc.poll() is not None:
                    errors.append(f"server exited with code {proc.returncode}")
                    break
                row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1),
                                       "rss_mb": round(server.memory_info().rss / 2**20, 1),
                                       "fds": server.num_fds(), "threads": server.num_threads(), "fps": [],
                                       "cpu_s": round(sum(server.cpu_times()[:2]), 2)}
                for s in sessions:
                    frames = s.viewer.video_frames
                    fps = (frames - s.last_frames) / SAMPLE_S
                    s.last_frames = frames
                    row["fps"].append(round(fps, 2))
                    if fps == 0:
                        errors.append(f"t={row['t']}: session {s.info.id} delivered no frames")
                async with http.get(f"{url}/health") as resp:
                    row["sessions"] = (await resp.json()).get("sessions")
                row["churn"] = dict(churn_counts)
                row["abused"] = bool(abuse_window and abuse_window[0] <= row["t"] - SAMPLE_S and row["t"] <= abuse_window[1])
                samples.append(row)
                if abuse_window and abuse is None and row["t"] >= abuse_window[0]:
                    abuse = asyncio.ensure_future(_abuse(http, url, opts.size, opts.abuse_s, health_ms, errors))
                if now >= next_churn and (churn is None or churn.done()):
                    churn = asyncio.ensure_future(_churn(http, url, sessions, opts.size, errors, churn_counts))
                    next_churn = now + opts.churn_every_s
            clocks.cancel()
            await asyncio.gather(clocks, return_exceptions=True)
            if churn is not None:
                await churn
            abuse_result = await abuse if abuse is not None else None
            if opts.settle_s > 0 and proc.poll() is None:  # churn over: what is left once it has all ended
                await asyncio.sleep(opts.settle_s)
                settled = {"t": round(time.monotonic() - t0, 1), "rss_mb": round(server.memory_info().rss / 2**20, 1),
                           "fds": server.num_fds(), "threads": server.num_threads()}
            for s in sessions:
                if s.speaker is not None:
                    s.speaker.cancel()
                    await asyncio.gather(s.speaker, return_exceptions=True)
                errors += [f"agent of {s.info.id}: server error {ev.get('code')}: {ev.get('message')}"[:200]
                           for ev in s.client.events if ev.get("type") == "error"]  # e.g. buffer_full
                await s.viewer.close()
                await s.client.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    result = summarise(samples, sessions, errors, churn_counts, opts)
    if settled is not None and samples:
        first = samples[0]
        result["settled"] = {**settled, "after_s": opts.settle_s,
                             "growth_from_first": {k: round(settled[k] - first[k], 1) for k in ("rss_mb", "fds", "threads")}}
    if abuse_result is not None:
        abused_fps = [f for r in samples if r.get("abused") for f in r["fps"]]
        ms = np.array(health_ms) if health_ms else np.zeros(1)
        result["abuse"] = {**abuse_result, "seconds": opts.abuse_s,
                           "health_ms": {"n": len(health_ms), "p50": round(float(np.percentile(ms, 50)), 1),
                                         "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(ms.max()), 1)},
                           "other_sessions_fps_min": min(abused_fps) if abused_fps else None}
    if opts.plot and samples:
        plot(samples, sessions, opts.out_dir / "soak.png")
        result["plot"] = str(opts.out_dir / "soak.png")
    return result


def _growth(values: list[float]) -> dict[str, float]:
    return {"first": values[0], "last": values[-1], "max": max(values), "growth": round(values[-1] - values[0], 2)}


def warm_up_end(samples: list[dict[str, Any]], each: int = WARM_UP_EACH) -> float | None:
    """Time of the first sample by which every churn kind has completed ``each`` times (None: never)."""
    for r in samples:
        done = r.get("churn", {})
        if all(done.get(kind, 0) >= each for kind in CHURN_KINDS):
            return r["t"]
    return None


def rss_growth(samples: list[dict[str, Any]]) -> dict[str, float]:
    """RSS growth over ``samples``: first to last, and the least-squares slope (MB and % per hour)."""
    t = np.array([r["t"] for r in samples], dtype=float)
    rss = np.array([r["rss_mb"] for r in samples], dtype=float)
    out = {"from_t": float(t[0]), "first": float(rss[0]), "last": float(rss[-1]), "max": float(rss.max()),
           "growth": round(float(rss[-1] - rss[0]), 2), "growth_pct": round(float(100 * (rss[-1] - rss[0]) / rss[0]), 2)}
    if t.size >= 3 and t[-1] > t[0]:
        slope = float(np.polyfit(t / 3600, rss, 1)[0])
        out["slope_mb_per_h"] = round(slope, 2)
        out["slope_pct_per_h"] = round(100 * slope / float(rss[0]), 2)
    return out


def summarise(samples: list[dict[str, Any]], sessions: list[SoakSession], errors: list[str],
              churn_counts: dict[str, int], opts: SoakOptions) -> dict:
    warm = [r for r in samples if r["t"] >= WARM_UP_S] or samples
    out: dict[str, Any] = {"seconds": opts.seconds, "sessions": opts.sessions, "size": opts.size,
                           "samples": len(samples), "errors": errors[:100], "error_count": len(errors),
                           "churn": churn_counts}
    if warm:
        rss = [r["rss_mb"] for r in warm]
        out["rss_mb"] = {**_growth(rss), "growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2)}
        out["fds"] = _growth([r["fds"] for r in warm])
        out["threads"] = _growth([r["threads"] for r in warm])
        fps = np.array([r["fps"] for r in warm], dtype=float)
        out["fps"] = {"mean": round(float(fps.mean()), 2), "min": round(float(fps.min()), 2),
                      "p5": round(float(np.percentile(fps, 5)), 2)}
        out["rss_after_20s"] = rss_growth(warm)
        if len(warm) >= 2 and warm[-1]["t"] > warm[0]["t"]:  # server CPU (user + system), in cores
            out["server_cpu_cores"] = round((warm[-1]["cpu_s"] - warm[0]["cpu_s"]) / (warm[-1]["t"] - warm[0]["t"]), 3)
    end = warm_up_end(samples)
    out["warm_up"] = {"rule": f"every churn kind ({', '.join(CHURN_KINDS)}) completed {WARM_UP_EACH} times",
                      "ends_s": end}
    after = [r for r in samples if end is not None and r["t"] >= end]
    if len(after) >= 2:
        out["rss_after_warm_up"] = rss_growth(after)
        out["fds_after_warm_up"] = _growth([r["fds"] for r in after])
        out["threads_after_warm_up"] = _growth([r["threads"] for r in after])
    out["series"] = {"columns": list(SERIES_COLUMNS),
                     "rows": [[sum(r.get("churn", {}).values()) if c == "churn" else r.get(c) for c in SERIES_COLUMNS]
                              for r in samples]}
    drifts = []
    for s in sessions:
        series = av_series(s)
        if series is not None:
            n = series[0].size
            av, video = series[1], series[2]
            k = max(1, n // 5)  # drift: the first fifth's median against the last fifth's (late packets are jitter)
            drifts.append({"samples": n,
                           "av_drift_ms": round(float(np.median(av[-k:]) - np.median(av[:k])), 2),
                           "av_jitter_ms_p99": round(float(np.percentile(np.abs(av - np.median(av)), 99)), 2),
                           "av_ms_max_abs": round(float(np.abs(av).max()), 2),
                           "video_clock_drift_ms": round(float(np.median(video[-k:]) - np.median(video[:k])), 2)})
    out["clock"] = drifts
    return out


def unwrapped_offsets(track: list[tuple[float, float, int]]) -> np.ndarray:
    """A track's clock offsets (s) relative to its first, across RTP's 32-bit timestamp wrap."""
    offsets = np.array([o for _, o, _ in track])
    period = 2**32 / track[0][2]  # one wrap of the RTP timestamp, in seconds
    steps = np.diff(offsets)
    steps -= period * np.round(steps / period)
    return np.concatenate([[0.0], np.cumsum(steps)])


def av_series(s: SoakSession) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(seconds since the first sample, A/V offset change ms, video clock change ms) of a session."""
    v, a = s.clock["video"], s.clock["audio"]
    n = min(len(v), len(a))
    if n < 2:
        return None
    video, audio = unwrapped_offsets(v[:n]) * 1000, unwrapped_offsets(a[:n]) * 1000
    t = np.array([w for w, _, _ in v[:n]]) - v[0][0]
    return t, video - audio, video


def plot(samples: list[dict[str, Any]], sessions: list[SoakSession], path: Path) -> None:
    plt = pyplot()

    t = [r["t"] / 60 for r in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    axes[0].plot(t, [r["rss_mb"] for r in samples])
    axes[0].set_ylabel("server RSS (MB)")
    end = warm_up_end(samples)
    if end is not None:
        axes[0].axvline(end / 60, color="grey", ls=":", label="warm-up ends")
        axes[0].legend()
    axes[1].plot(t, [r["fds"] for r in samples], label="open fds")
    axes[1].plot(t, [r["threads"] for r in samples], label="threads")
    axes[1].legend()
    fps = np.array([r["fps"] for r in samples], dtype=float)
    for i in range(fps.shape[1]):
        axes[2].plot(t, fps[:, i], label=f"session {i}")
    axes[2].axhline(24, color="grey", ls=":")
    axes[2].set_ylabel("video fps received")
    axes[2].legend()
    for i, s in enumerate(sessions):
        series = av_series(s)
        if series is not None:
            axes[3].plot(series[0] / 60, series[1], label=f"session {i}")
    axes[3].set_ylabel("A/V drift (ms)")
    axes[3].set_xlabel("minutes")
    axes[3].legend()
    fig.suptitle("avatar bench --soak: lite engine, churn throughout")
    save_figure(fig, path, dpi=100)


async def _viewer_main(whep_url: str, token: str) -> None:
    """A viewer in its own process, for the soak to kill (``python -m ... --viewer URL TOKEN``)."""
    async with aiohttp.ClientSession() as http:
        viewer = CountingViewer()
        await viewer.join(http, whep_url, token)
        await asyncio.sleep(3600)


def run_bench(opts: Any) -> dict:
    """Entry point for ``avatar bench --soak SECONDS`` (``opts``: ``avatarstream.cli.bench.BenchOptions``)."""
    soak = SoakOptions(seconds=opts.seconds, out_dir=opts.out_dir, sessions=getattr(opts, "sessions", 3))
    return asyncio.run(run_soak(soak))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--viewer":
    asyncio.run(_viewer_main(sys.argv[2], sys.argv[3]))

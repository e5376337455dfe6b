"""What a viewer received, accounted on the session clock's ticks instead of its arrival times.

A session's video leaves at one frame per 40 ms clock tick, stamped ``pts = tick * 3600`` (90 kHz,
``realtime/clock.py``). A sender that falls behind the clock skips ticks, and a viewer of a shared
encoder holds frames back until a keyframe; the server counts both per session
(``avatar_session_video_frames_skipped_total`` and ``avatar_session_video_keyframe_waits_total`` in
its ``/metrics``). So every tick between two received frames was either received or counted by the
server as not sent: ``received >= ticks spanned - unsent``, however slowly this machine runs. A
frame lost on the way (a dead relay, a cut link) breaks it; a loaded machine does not.

Arrival times say how fast frames came (``fps`` in the reports), which depends on the machine's
speed: nothing here asserts on them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from avatarstream.bench.viewer_recorder import RecordingViewer

VIDEO_TICK_PTS = 3600  # 40 ms at 90 kHz
UNSENT_METRICS = ("avatar_session_video_frames_skipped_total", "avatar_session_video_keyframe_waits_total")


@dataclass(frozen=True)
class TickAccount:
    """A viewer's received video frames against the ticks they span and the ticks the server did not send."""

    received: int  # frames received (before the server's counts were read)
    spanned: int  # clock ticks from the first of them to the last, both included
    unsent: int  # ticks the server counted as not sent to the session's viewers (skipped, keyframe waits)
    on_ticks: bool  # every pts a whole tick after the one before

    @property
    def lost(self) -> int:
        """Ticks missing from what was received that the server did not count (> 0: frames lost on the way)."""
        return self.spanned - self.received - self.unsent


def account(pts: list[int], unsent: int) -> TickAccount:
    steps = [b - a for a, b in zip(pts, pts[1:])]
    on_ticks = all(s > 0 and s % VIDEO_TICK_PTS == 0 for s in steps)
    spanned = (pts[-1] - pts[0]) // VIDEO_TICK_PTS + 1 if pts else 0
    return TickAccount(len(pts), spanned, unsent, on_ticks)


def server_base(whep_url: str) -> str:
    """The server a session's media comes from (its WHEP URL's origin: a worker, never a front)."""
    return str(URL(whep_url).origin())


async def server_unsent(http: aiohttp.ClientSession, base_url: str, session_id: str, api_key: str) -> int:
    """Video ticks the server at ``base_url`` counted as not sent to ``session_id``'s viewers (its ``/metrics``)."""
    async with http.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {api_key}"},
                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise AssertionError(f"{base_url}/metrics: {resp.status} {text[:200]}")
    found = {name: 0.0 for name in UNSENT_METRICS}
    seen = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("session") == session_id:
                found[sample.name] += sample.value
                seen.add(sample.name)
    if seen != set(UNSENT_METRICS):
        raise AssertionError(f"{base_url}/metrics has no {sorted(set(UNSENT_METRICS) - seen)} for session {session_id}")
    return int(sum(found.values()))


async def account_viewer(viewer: RecordingViewer, http: aiohttp.ClientSession, base_url: str, session_id: str,
                         api_key: str) -> TickAccount:
    """The viewer's frames received so far against the server's counts, read after them: each tick a
    received frame follows was sent or counted unsent before that frame left, hence before the read."""
    video = viewer.recording.video
    n = len(video)
    if n >= viewer.max_video_frames:
        raise AssertionError(f"the viewer kept only its first {n} frames: raise max_video_frames")
    unsent = await server_unsent(http, base_url, session_id, api_key)
    return account([v.pts for v in video[:n]], unsent)


async def advanced_past(viewer: RecordingViewer, pts: int, timeout: float = 60.0) -> None:
    """Wait until the viewer has received a frame stamped ``pts`` or later (``timeout`` only ends a hang)."""
    async def reached() -> None:
        while not viewer.recording.video or viewer.recording.video[-1].pts < pts:
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(reached(), timeout)
    except asyncio.TimeoutError:
        last = viewer.recording.video[-1].pts if viewer.recording.video else None
        raise AssertionError(f"no frame stamped {pts} or later within {timeout:.0f} s (last {last})") from None


def ticks_in(seconds: float) -> int:
    """Whole clock ticks in ``seconds`` (the session clock runs in real time), as pts."""
    return int(seconds * 25) * VIDEO_TICK_PTS

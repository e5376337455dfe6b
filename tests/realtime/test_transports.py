"""The transport seam: a transport written here, in the test, with no change to the session,
receives frames and events; viewers of any transport count for the idle reaper; a WebRTC viewer
that never connects (a ghost) is dropped at its deadline and frees its session slot."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest
from aiohttp import ClientSession, web
from aiortc import RTCConfiguration, RTCPeerConnection

from avatarstream.bench.private_network import NOWHERE_ADDRESS
from avatarstream.engines.base import Portrait
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.session.session import AvatarSession, SessionOptions
from avatarstream.realtime.transports.base import SessionOutput, Viewer, ViewerState, ViewerStats

pytestmark = pytest.mark.timeout(60)


class MemorySink:
    """A minimal transport: pulls the session's output on its clock into lists."""

    transport = "memory"

    def __init__(self, session: SessionOutput) -> None:
        self.id = "sink"
        self.session = session
        self.frames: list[tuple[int, int]] = []  # (content index, mouth_open x 1000)
        self.audio_rms: list[float] = []
        self.events: list[str] = []
        self._since = time.monotonic()
        self._state = ViewerState.CONNECTING
        self._task: asyncio.Task | None = None

    @property
    def state(self) -> ViewerState:
        return self._state

    @property
    def state_since(self) -> float:
        return self._since

    def stats(self) -> ViewerStats:
        return ViewerStats(video_frames_sent=len(self.frames), details={"frames": len(self.frames)})

    def start(self) -> None:
        self.session.attach_viewer(self)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        s = self.session
        await s.started.wait()
        self._state, self._since = ViewerState.CONNECTED, time.monotonic()
        events = s.subscribe_events()
        tick = s.clock.current_frame()
        try:
            while True:
                tick += 1
                await s.clock.sleep_until(s.clock.frame_time(tick))
                c = tick - s.delay_frames
                frame, audio = s.video_for(c), s.audio_for(c)
                if frame is not None and audio is not None:
                    self.frames.append((c, int(frame.mouth_open * 1000)))
                    self.audio_rms.append(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))
                while not events.empty():
                    ev = events.get_nowait()
                    if ev is None:
                        return
                    self.events.append(ev.type)
        finally:
            s.unsubscribe_events(events)

    async def close(self) -> None:
        self._state = ViewerState.CLOSED
        self.session.detach_viewer(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def test_a_new_transport_needs_no_session_change(bar_engine):
    session = AvatarSession(bar_engine, Portrait(np.full((128, 128, 3), 128, np.uint8)), options=SessionOptions(size=64))
    await session.start()
    sink = MemorySink(session)
    assert isinstance(sink, Viewer)
    sink.start()
    try:
        await asyncio.sleep(0.2)
        session.push_audio(tone(0.6))
        session.end_utterance()
        for _ in range(600):  # the bound only ends a hang: playback ends on the session clock (0.6 s + the delay)
            await asyncio.sleep(0.05)
            if "playback_finished" in sink.events:
                break
        assert sink.events.index("playback_started") < sink.events.index("playback_finished")
        indices = [c for c, _ in sink.frames]
        assert indices == sorted(indices) and len(indices) >= 15
        # the bar engine's mouth follows the audio of the same content frame: loud frames, open mouth
        loud = [m for (c, m), rms in zip(sink.frames, sink.audio_rms) if rms > 0.2]
        quiet = [m for (c, m), rms in zip(sink.frames, sink.audio_rms) if rms < 0.01]
        assert loud and quiet and min(loud) > max(quiet)
        assert session.connected_viewer_count == 1
        assert session.viewer_stats() == [{"id": "sink", "transport": "memory", "state": "connected",
                                           "frames": len(sink.frames)}]
    finally:
        await session.close()
    assert sink.state == ViewerState.CLOSED and session.viewer_count == 0


async def test_reaper_keeps_connected_viewers_of_any_transport_and_drops_late_ones(bar_engine):
    config = ServerConfig(idle_timeout=0.3, viewer_connect_timeout=0.3)
    registry = SessionRegistry(config, Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine)
    watched = await registry.create(size=64)
    sink = MemorySink(watched)
    sink.start()
    lonely = await registry.create(size=64)
    ghost = MemorySink(lonely)
    lonely.attach_viewer(ghost)  # attached but never connects
    await asyncio.sleep(0.5)
    await registry.reap()
    assert ghost.state == ViewerState.CLOSED and lonely.viewer_count == 0  # past its connect deadline
    assert registry.get(lonely.id) is None  # no connected viewer, idle: reaped
    assert registry.get(watched.id) is watched  # a connected viewer (any transport) keeps it
    await registry.stop()
    assert sink.state == ViewerState.CLOSED


class GhostViewer:
    """A viewer that never connects, attached at ``since`` on the registry's clock."""

    transport = "ghost"

    def __init__(self, session: AvatarSession, since: float) -> None:
        self.id = "ghost"
        self.session = session
        self.state_since = since
        self.state = ViewerState.CONNECTING

    def stats(self) -> ViewerStats:
        return ViewerStats()

    async def close(self) -> None:
        self.state = ViewerState.CLOSED
        self.session.detach_viewer(self)


async def test_the_reaper_drops_a_connecting_viewer_just_past_its_deadline(bar_engine):
    """On an injected clock: a viewer still connecting at ``viewer_connect_timeout`` is kept, one a
    moment later is closed, and the reaper passes every half deadline, so a ghost goes at most 1.5 x
    the deadline after it attached."""
    now = [1000.0]
    config = ServerConfig(idle_timeout=60, viewer_connect_timeout=1.0)
    registry = SessionRegistry(config, Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine, clock=lambda: now[0])
    try:
        assert registry.reap_interval == 0.5
        session = await registry.create(size=64)
        ghost = GhostViewer(session, since=now[0])
        session.attach_viewer(ghost)
        now[0] += 1.0  # exactly at the deadline: kept
        await registry.reap()
        assert ghost.state == ViewerState.CONNECTING and session.viewer_count == 1
        now[0] += 0.001  # past it: closed, and its slot in the session freed
        await registry.reap()
        assert ghost.state == ViewerState.CLOSED and session.viewer_count == 0
        assert registry.get(session.id) is session  # the session itself is not idle yet (60 s)
    finally:
        await registry.stop()


async def test_the_reaper_closes_a_session_idle_past_its_timeout_and_keeps_a_touched_one(bar_engine):
    """On an injected clock: unwatched sessions go exactly when ``idle_timeout`` has passed since their last
    activity; a keepalive (``touch``) moves that, so a session touched more often than the timeout stays."""
    now = [1000.0]
    config = ServerConfig(idle_timeout=1.0, viewer_connect_timeout=60)
    registry = SessionRegistry(config, Portrait(np.full((128, 128, 3), 128, np.uint8)),
                               engine_loader=lambda name, **_: bar_engine, clock=lambda: now[0])
    try:
        kept, idle = await registry.create(size=64), await registry.create(size=64)
        for _ in range(6):  # 2.4 s: well past the timeout for the one nobody touches
            now[0] += 0.4
            kept.touch()
            await registry.reap()
            assert registry.get(kept.id) is kept
        assert registry.get(idle.id) is None and idle.closed
        now[0] += 1.0  # exactly the timeout since the last touch: kept
        await registry.reap()
        assert registry.get(kept.id) is kept
        now[0] += 0.001  # past it: closed
        await registry.reap()
        assert registry.get(kept.id) is None and kept.closed
    finally:
        await registry.stop()


async def test_ghost_webrtc_viewer_frees_its_slot(engine_loader):
    """An /offer whose ICE candidates lead nowhere never connects; it used to hold the session
    (and a --max-sessions slot) forever. It is dropped at the connect deadline."""
    config = ServerConfig(max_sessions=1, viewer_connect_timeout=1.0, size=256, engine_loader=engine_loader)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    registry = runner.app[REGISTRY]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        # every candidate points at an address on the tests' private link that nothing holds: ICE can never
        # complete (TEST-NET-1, used before, is this machine's own outside subnet)
        sdp = re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ )\S+ \d+", rf"\g<1>{NOWHERE_ADDRESS} 9", pc.localDescription.sdp)
        assert NOWHERE_ADDRESS in sdp
        async with ClientSession(f"http://127.0.0.1:{port}") as http:
            resp = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
            assert resp.status == 200, await resp.text()
            assert len(registry) == 1
            resp = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
            assert resp.status == 503  # the ghost holds the only slot ...
            for _ in range(300):  # the bound only ends a hang: when it goes is exact in the test below
                if not len(registry):
                    break
                await asyncio.sleep(0.1)
            assert len(registry) == 0  # ... until its deadline (1 s + at most one reaper interval)
            resp = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
            assert resp.status == 200, await resp.text()  # the freed slot takes the next one
    finally:
        await pc.close()
        await runner.cleanup()


async def rendered_at_least(session: AvatarSession, frames: int, hang_s: float = 30.0) -> bool:
    """Whether the session's engine has rendered ``frames`` frames in all before ``hang_s`` (a bound that only ends
    a hang)."""
    for _ in range(int(hang_s / 0.02)):
        if session.pipeline_stats()["frames_rendered"] >= frames:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_no_engine_work_while_nobody_watches_or_speaks(bar_engine):
    session = AvatarSession(bar_engine, Portrait(np.full((128, 128, 3), 128, np.uint8)), options=SessionOptions(size=64))
    await session.start()
    try:
        await asyncio.sleep(0.5)
        assert session.pipeline_stats()["frames_rendered"] == 0  # idle and unwatched: the engine rests
        session.push_audio(tone(0.4))
        session.end_utterance()
        # speech is rendered even unwatched (its events come from the frames): its 10 frames but the one the engine
        # holds back as lookahead, however long this machine takes for them (the waits below only end a hang)
        assert await rendered_at_least(session, 10 - bar_engine.lookahead_frames)
        spoken = session.pipeline_stats()["frames_rendered"]
        sink = MemorySink(session)
        sink.start()
        assert await rendered_at_least(session, spoken + 8)  # a viewer: idle motion again
        await sink.close()
    finally:
        await session.close()

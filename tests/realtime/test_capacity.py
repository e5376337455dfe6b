"""Capacity: shared per-session encoding, encoder settings, admission by measured load, the bench."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from avatarstream.realtime.bench.viewer_recorder import RecordingViewer
from avatarstream.realtime.client import AvatarClient, ClientError
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.transports.webrtc.shared_video import SESSION_ENCODERS
from avatarstream.realtime.transports.webrtc.video_encoder import FrameEncoder
from avatarstream.realtime.transports.webrtc.video_settings import VideoEncoding

SIZE = 128


async def _serve(**config):
    app = create_app(ServerConfig(engine="lite", size=SIZE, port=0, **config))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", app[REGISTRY], runner


async def _join(http, client) -> RecordingViewer:
    viewer = RecordingViewer(keep_images=True)
    await viewer.join(http, client.session.whep_url, client.session.token)
    await asyncio.wait_for(viewer.first_video.wait(), 20)
    return viewer


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_frame_encoder_roundtrip_and_keyframes(codec):
    """Every encode returns that frame's packet (no lag); a forced keyframe is one; it decodes close."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    enc = FrameEncoder(codec, SIZE, VideoEncoding(codec=codec, keyframe_interval_s=60))
    dec = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    keys = []
    for i in range(10):
        image = np.roll(base, i, axis=1)
        packet, key = enc.encode(image, i * 3600, keyframe=(i == 6))
        assert packet.pts == i * 3600 and packet.size > 0
        keys.append(key)
        decoded = dec.decode(av.Packet(bytes(packet)))
        assert len(decoded) == 1
    assert keys[0] and keys[6] and not any(keys[1:6])


def test_shared_encoder_serves_two_viewers_with_one_encode():
    """Two WHEP viewers of one session: both decode the stream; one encoder, one encode per tick;
    the second viewer joins late and starts at a keyframe."""

    async def main():
        url, registry, runner = await _serve()
        http = aiohttp.ClientSession()
        try:
            client = AvatarClient(url, http=http)
            await client.create_session(size=SIZE)
            session = registry.get(client.session.id)
            first = await _join(http, client)
            await asyncio.sleep(1.0)
            second = await _join(http, client)
            await asyncio.sleep(1.5)
            encoders = SESSION_ENCODERS.encoders_of(session)
            assert len(encoders) == 1 and encoders[0].users == 2
            encoded = encoders[0].stats()["frames"]
            sent = [v.video.frames_sent for v in session.viewers]
            assert len(sent) == 2 and all(n > 10 for n in sent)
            assert encoded <= max(sent) + 8  # once per tick, not once per viewer
            for viewer in (first, second):
                images = [v.image for v in viewer.recording.video[-5:]]
                assert all(im.shape == (SIZE, SIZE, 3) and im.std() > 5 for im in images)  # a picture, not grey
            assert len(first.recording.video) > len(second.recording.video)
            await first.close()
            await second.close()
            await asyncio.sleep(0.3)
            assert SESSION_ENCODERS.encoders_of(session) == []  # released with its last viewer
            await client.close()
        finally:
            await http.close()
            await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["per-viewer", "aiortc"])
def test_other_encoder_modes_stream(mode):
    async def main():
        url, registry, runner = await _serve(video_encoder=mode)
        http = aiohttp.ClientSession()
        try:
            client = AvatarClient(url, http=http)
            await client.create_session(size=SIZE)
            session = registry.get(client.session.id)
            viewer = await _join(http, client)
            await asyncio.sleep(0.5)
            assert viewer.recording.video[-1].image.std() > 5
            assert SESSION_ENCODERS.encoders_of(session) == []  # nothing shared in these modes
            await viewer.close()
            await client.close()
        finally:
            await http.close()
            await runner.cleanup()

    asyncio.run(main())


def test_admission_refuses_beyond_measured_capacity():
    """A CPU budget of 0.3 cores: sessions are admitted until their measured cost fills it, then
    POST /v1/sessions gets 503 + Retry-After; the admitted sessions keep >= 24 fps; /health shows it."""

    async def main():
        url, registry, runner = await _serve(admission_cpu_cores=0.3, admission_window=1.5, admission_retry_after=3)
        http = aiohttp.ClientSession()
        clients, viewers = [], []
        try:
            refused = None
            for _ in range(6):
                client = AvatarClient(url, http=http)
                try:
                    await client.create_session(size=SIZE)
                except ClientError as exc:
                    refused = exc
                    break
                clients.append(client)
                viewers.append(await _join(http, client))
                await asyncio.sleep(3.5)  # let the monitor measure the new load
            assert refused is not None and refused.status == 503, "no session was refused"
            async with http.post(f"{url}/v1/sessions", json={"size": SIZE}) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "3"
                assert (await resp.json())["error"] == "session_limit"
            async with http.get(f"{url}/health") as resp:
                health = await resp.json()
            cap = health["capacity"]
            assert cap["capacity_sessions"] == len(clients) and cap["available_sessions"] == 0
            assert cap["cpu_per_session_cores"] > 0 and cap["cpu_budget_cores"] == 0.3
            await asyncio.sleep(2.0)
            assert registry.load.min_session_fps >= 24.0
            for viewer in viewers:
                await viewer.close()
            for client in clients:
                await client.close()
        finally:
            await http.close()
            await runner.cleanup()

    asyncio.run(main())


def test_health_reports_capacity_and_admission_can_be_off():
    async def main():
        url, registry, runner = await _serve(admission=False)
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
                cap = (await resp.json())["capacity"]
            assert cap["admission"] is False and cap["target_fps"] == 24.0
            assert registry.load.admits(100)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="admission headroom"):
        ServerConfig(admission_headroom=1.5)
    with pytest.raises(ValueError, match="mode|EncoderMode|valid"):
        ServerConfig(video_encoder="gpu")
    with pytest.raises(ValueError, match="VP8 speed"):
        ServerConfig(vp8_speed=17)


def test_capacity_bench_quick(tmp_path):
    """The tiny capacity bench: 1..2 sessions per mode, both encoder modes, JSON fields and a plot."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("psutil")
    from avatarstream.cli.bench import BenchOptions
    from avatarstream.realtime.bench import capacity

    result = capacity.run_bench(BenchOptions(out_dir=tmp_path, quick=True))
    json.dumps(result)
    assert set(result["servers"]) == {"aiortc", "shared"}
    for server in result["servers"].values():
        assert [p["sessions"] for p in server["by_sessions"]] == [1, 2]
        assert all(p["fps_mean"] > 0 and p["server_cpu_cores"] > 0 for p in server["by_sessions"])
        assert [p["viewers"] for p in server["by_viewers"]] == [1, 2]
    enc = result["encoders"]
    assert "aiortc vp8 (old)" in enc and all(e["frames_decoded"] > 0 and e["psnr_db"] > 25 for e in enc.values())
    assert Path(result["plot"]).exists()

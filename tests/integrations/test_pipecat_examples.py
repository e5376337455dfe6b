"""The two Pipecat examples run: the MP4 one writes a playable file with the avatar and its voice;
the WebRTC one answers an offer and a WebRTC client (aiortc, as a browser would) receives the
avatar's video and voice through Pipecat's SmallWebRTCTransport."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

pytest.importorskip("pipecat", reason="pipecat-ai is not installed: pip install 'avatarstream[pipecat]'")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

from aiohttp import web  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from avatarstream.realtime.transports.webrtc.peer import ice_configuration  # noqa: E402

pytestmark = pytest.mark.timeout(180)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_mp4_example_writes_the_avatar_and_its_voice(tmp_path):
    example = load_example("pipecat_espeak_to_mp4")
    out = tmp_path / "avatar.mp4"
    assert await example.main(["--size", "256", "--out", str(out), "Hello from the example."]) == 0
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 256, 256)
        assert audio.codec_context.name == "aac" and audio.sample_rate == 24000
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert frames > 25  # more than a second of avatar
    assert np.abs(samples).max() > 0.1  # and its voice (AAC decodes to float)


async def test_webrtc_example_streams_the_avatar_to_a_webrtc_client():
    example = load_example("pipecat_webrtc_browser")
    app = example.create_app(size=256, sentences=["Hello over Pipecat's WebRTC transport."])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pc = RTCPeerConnection(ice_configuration([]))
    video_frames, audio_peak = [], [0.0]

    async def read(track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    video_frames.append((frame.width, frame.height))
                else:
                    audio_peak[0] = max(audio_peak[0], float(np.abs(frame.to_ndarray()).max()))
        except MediaStreamError:
            pass

    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(read(track))))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200 and "/api/offer" in await resp.text()
            async with http.post(f"http://127.0.0.1:{port}/api/offer", json={"sdp": "x", "type": "answer"}) as resp:
                assert resp.status == 400
            pc.addTransceiver("audio", direction="sendrecv")
            pc.addTransceiver("video", direction="sendrecv")
            pc.createDataChannel("chat")
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(f"http://127.0.0.1:{port}/api/offer", json=offer) as resp:
                assert resp.status == 200
                answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        for _ in range(600):
            if len(video_frames) > 50 and audio_peak[0] > 3000:
                break
            await asyncio.sleep(0.05)
        print(f"\nWebRTC client received {len(video_frames)} video frames, audio peak {audio_peak[0]:.0f}")
        assert len(video_frames) > 50 and video_frames[-1] == (256, 256)
        assert audio_peak[0] > 3000  # the avatar's voice (int16 peak) reached the client
    finally:
        await pc.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()

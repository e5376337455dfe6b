"""Bad input gets a clear HTTP error, and the server keeps serving: each case is followed by a
successful request. Real server (aiohttp + aiortc) with the real lite engine."""

from __future__ import annotations

import asyncio
import base64

import cv2
import numpy as np
import pytest
from aiohttp import ClientSession, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from avatarstream.engines.base import EngineError
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY as REGISTRY_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def server(engine_loader):
    runner = web.AppRunner(create_app(ServerConfig(max_sessions=1, engine_loader=engine_loader)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with ClientSession(f"http://127.0.0.1:{port}") as http:
        yield http, runner.app[REGISTRY_KEY]
    await runner.cleanup()


async def make_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def good_offer(http, **extra) -> RTCPeerConnection:
    """A valid /offer round trip; returns the client's connected peer connection."""
    pc, sdp = await make_offer()
    resp = await http.post("/offer", json={"sdp": sdp, "type": "offer", **extra})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["type"] == "answer" and "m=video" in answer["sdp"] and answer["session_id"]
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    assert await wait_for(lambda: pc.connectionState == "connected"), pc.connectionState
    return pc


async def wait_for(predicate, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def end_call(pc: RTCPeerConnection, registry) -> None:
    await pc.close()
    assert await wait_for(lambda: len(registry) == 0), "session not freed after the client hung up"


def png_b64(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return base64.b64encode(data.tobytes()).decode()


async def test_malformed_sdp_is_400_then_serves(server):
    http, registry = server
    for body in ({"sdp": "this is not SDP", "type": "offer"},
                 {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"},
                 {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"},
                 {"sdp": "v=0", "type": "answer"}):
        resp = await http.post("/offer", json=body)
        assert resp.status == 400
        assert "SDP" in (await resp.json())["message"]
    resp = await http.post("/offer", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "JSON" in (await resp.json())["message"]
    resp = await http.post("/whep", data="hello", headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    assert len(registry) == 0, "a failed offer left a session behind"
    await end_call(await good_offer(http), registry)


async def test_whep_create_and_delete(server):
    http, registry = server
    pc, sdp = await make_offer()
    resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp"})
    assert resp.status == 201
    assert resp.headers["Content-Type"].startswith("application/sdp")
    location = resp.headers["Location"]
    answer = await resp.text()
    assert answer.startswith("v=0") and "m=video" in answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    assert len(registry) == 1
    assert (await http.delete(location)).status == 200
    assert len(registry) == 0
    assert (await http.delete(location)).status == 404
    await pc.close()
    await end_call(await good_offer(http), registry)


async def test_image_without_face_is_422_then_serves(server):
    http, registry = server
    h, w = 320, 320
    sky = np.zeros((h, w, 3), np.uint8)
    sky[..., 0] = np.linspace(250, 150, h)[:, None]
    sky[..., 1] = np.linspace(200, 120, h)[:, None]
    sky[..., 2] = 90
    pc, sdp = await make_offer()
    resp = await http.post("/offer", json={"sdp": sdp, "type": "offer", "image": png_b64(sky)})
    await pc.close()
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "no_face" and "face" in body["message"].lower()
    assert len(registry) == 0
    await end_call(await good_offer(http), registry)


async def test_unreadable_image_is_400_then_serves(server):
    http, registry = server
    for image in (base64.b64encode(b"this is not really an image").decode(), "%%% not base64 %%%"):
        pc, sdp = await make_offer()
        resp = await http.post("/offer", json={"sdp": sdp, "type": "offer", "image": image})
        await pc.close()
        assert resp.status == 400
        body = await resp.json()
        assert body["error"] == "unreadable_image" and "image" in body["message"]
    assert len(registry) == 0
    await end_call(await good_offer(http), registry)


async def test_session_limit_is_503_with_retry_after_then_serves(server):
    http, registry = server
    first = await good_offer(http)
    pc, sdp = await make_offer()
    resp = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert "limit" in (await resp.json())["message"]
    resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp"})
    assert resp.status == 503 and "Retry-After" in resp.headers
    await pc.close()
    await end_call(first, registry)  # hanging up frees the slot ...
    await end_call(await good_offer(http), registry)  # ... for the next caller


def test_serve_rejects_bad_portraits_at_startup(tmp_path):
    from avatarstream.cli.serve import check_portrait

    with pytest.raises(EngineError, match="not found"):
        check_portrait(ServerConfig(image=str(tmp_path / "missing.jpg")))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(EngineError, match="decode"):
        check_portrait(ServerConfig(image=str(junk)))
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(EngineError, match="(?i)face"):
        check_portrait(ServerConfig(image=str(flat)))
    cat = ServerConfig(image="cat")
    check_portrait(cat)
    assert cat.portrait is not None and cat.portrait.kind == "animal"

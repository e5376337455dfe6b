"""Sessions API over real HTTP: create, auth (401/403), WHEP, controls, keep-alive, idle timeout."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from avatarstream.realtime.transports.webrtc.peer import ice_configuration

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_create_returns_urls_and_token(server, cat_portrait):
    info = await server.create(image="astronaut", controls={"head_motion_scale": 0.5})
    assert set(info) >= {"id", "token", "whep_url", "offer_url", "agent_url"}
    assert info["whep_url"].endswith(f"/v1/sessions/{info['id']}/whep")
    assert info["agent_url"].startswith("ws://") and info["agent_url"].endswith("/agent")
    assert info["size"] == 256 and info["fps"] == 25
    assert info["watch_url"].endswith(f"/watch?session={info['id']}&token={info['token']}")
    assert isinstance(info["unsupported_controls"], dict)
    # multipart upload of a portrait file (the cat) works too
    form = aiohttp.FormData()
    form.add_field("image", cat_portrait.read_bytes(), filename="cat.jpg", content_type="image/jpeg")
    form.add_field("size", "256")
    async with server.http.post(f"{server.url}/v1/sessions", data=form) as resp:
        assert resp.status == 201, await resp.text()
        cat = await resp.json()
    for s in (info, cat):
        async with server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"])) as resp:
            assert resp.status == 204
    assert server.registry.get(info["id"]) is None and server.registry.get(cat["id"]) is None


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"image": "dragon"}, "unknown image id"),
        ({"size": 4000}, "the lite engine renders"),
        ({"engine": "loopy"}, "renders files only"),
        ({"engine": ["lite"]}, "unknown engine"),
        ({"fps": 60}, "25 fps"),
        ({"controls": [1]}, "'controls' must be a JSON object"),
    ],
)
async def test_bad_create_requests_are_400(server, body, needle):
    async with server.http.post(f"{server.url}/v1/sessions", json=body) as resp:
        assert resp.status == 400
        assert needle in (await resp.json())["message"]


async def test_unreadable_upload_is_400(server):
    form = aiohttp.FormData()
    form.add_field("image", b"definitely not a picture", filename="x.jpg", content_type="image/jpeg")
    async with server.http.post(f"{server.url}/v1/sessions", data=form) as resp:
        assert resp.status == 400
        assert "could not decode image" in (await resp.json())["message"]


async def test_portrait_without_face_is_422(server):
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((256, 256, 3), 128, np.uint8))
    form = aiohttp.FormData()
    form.add_field("image", png.tobytes(), filename="wall.png", content_type="image/png")
    async with server.http.post(f"{server.url}/v1/sessions", data=form) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body["error"] == "no_face" and "face" in body["message"]


async def test_session_limit_is_503_with_retry_after(make_server):
    srv, stop = await make_server(max_sessions=1)
    try:
        first = await srv.create()
        async with srv.http.post(f"{srv.url}/v1/sessions", json={"size": 256}) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) > 0
            assert "limit" in (await resp.json())["message"]
        async with srv.http.delete(f"{srv.url}/v1/sessions/{first['id']}", headers=srv.auth(first["token"])) as resp:
            assert resp.status == 204
        await srv.create()  # the slot is free again
    finally:
        await stop()


async def test_auth_on_every_session_route(server):
    a = await server.create()
    b = await server.create()
    routes = [
        ("GET", f"/v1/sessions/{a['id']}"),
        ("POST", f"/v1/sessions/{a['id']}/keepalive"),
        ("POST", f"/v1/sessions/{a['id']}/controls"),
        ("POST", f"/v1/sessions/{a['id']}/whep"),
        ("POST", f"/v1/sessions/{a['id']}/offer"),
        ("GET", f"/v1/sessions/{a['id']}/agent"),
        ("DELETE", f"/v1/sessions/{a['id']}"),
    ]
    for method, path in routes:
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Bearer not-the-token"}, 401),
            ({"Authorization": "Basic abc"}, 401),
            (server.auth(b["token"]), 403),  # a valid token, but of another session
        ]:
            async with server.http.request(method, server.url + path, headers=headers) as resp:
                assert resp.status == status, (method, path, headers, await resp.text())
                assert "error" in await resp.json()
                if status == 401:
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # the agent socket refuses a wrong token at the handshake; ?token= works for browsers
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.http.ws_connect(a["agent_url"] + f"?token={b['token']}")
    assert info.value.status == 403
    ws = await server.http.ws_connect(a["agent_url"] + f"?token={a['token']}&sample_rate=16000")
    assert (await ws.receive_json())["type"] == "ready"
    await ws.close()
    # the right token works; after DELETE the session is gone
    async with server.http.get(f"{server.url}/v1/sessions/{a['id']}", headers=server.auth(a["token"])) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == a["id"]
    for s in (a, b):
        async with server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"])) as resp:
            assert resp.status == 204
    async with server.http.get(f"{server.url}/v1/sessions/{a['id']}", headers=server.auth(a["token"])) as resp:
        assert resp.status == 404


async def test_whep_viewer_joins_and_leaves(server, tasks_of):
    s = await server.create()
    pc = RTCPeerConnection(ice_configuration([]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {**server.auth(s["token"]), "Content-Type": "application/sdp"}
    async with server.http.post(s["whep_url"], data=pc.localDescription.sdp, headers=headers) as resp:
        assert resp.status == 201
        assert resp.content_type == "application/sdp"
        location = resp.headers["Location"]
        answer = await resp.text()
    assert location.startswith(f"/v1/sessions/{s['id']}/whep/")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    session = server.registry.get(s["id"])
    assert session.viewer_count == 1
    # wrong content type and malformed SDP are refused clearly
    async with server.http.post(s["whep_url"], data="v=0", headers=server.auth(s["token"])) as resp:
        assert resp.status == 415
    async with server.http.post(s["whep_url"], data="hello", headers=headers) as resp:
        assert resp.status == 400 and "SDP" in (await resp.json())["message"]
    async with server.http.delete(server.url + location, headers=server.auth(s["token"])) as resp:
        assert resp.status == 204
    assert session.viewer_count == 0
    await pc.close()
    async with server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"])) as resp:
        assert resp.status == 204
    for _ in range(600):  # the session's tasks end (the bound only ends a hang)
        if not tasks_of(s["id"]):
            break
        await asyncio.sleep(0.05)
    assert tasks_of(s["id"]) == []


async def test_controls_report_unsupported(server):
    s = await server.create()
    url = f"{server.url}/v1/sessions/{s['id']}/controls"
    async with server.http.post(url, json={"head_motion_scale": 0.5, "warp_drive": 9}, headers=server.auth(s["token"])) as resp:
        assert resp.status == 200
        reply = await resp.json()
    assert "warp_drive" in reply["unsupported"] and reply["unsupported"]["warp_drive"]  # with a reason
    assert set(reply["applied"]) | set(reply["unsupported"]) == {"head_motion_scale", "warp_drive"}
    async with server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"])) as resp:
        assert resp.status == 204


async def test_idle_timeout_and_keepalive(make_server):
    """Over HTTP: a keepalive counts as the session's activity and an untouched session is closed once idle (when
    exactly, and that one touched in time stays, is proven on an injected clock in tests/realtime/test_transports)."""
    srv, stop = await make_server(idle_timeout=1.0)
    try:
        kept = await srv.create()
        idle = await srv.create()
        session = srv.registry.get(kept["id"])
        before = session.last_activity
        await asyncio.sleep(0.05)  # a moment on the session clock, so the keepalive's mark is a later one
        async with srv.http.post(f"{srv.url}/v1/sessions/{kept['id']}/keepalive", headers=srv.auth(kept["token"])) as resp:
            assert resp.status == 200 and (await resp.json())["idle_timeout_s"] == 1.0
        assert session.last_activity > before  # the keepalive is activity
        for _ in range(600):  # the idle one goes after 1 s + at most a reaper interval (the bound only ends a hang)
            if srv.registry.get(idle["id"]) is None:
                break
            await asyncio.sleep(0.05)
        assert srv.registry.get(idle["id"]) is None
        async with srv.http.post(f"{srv.url}/v1/sessions/{idle['id']}/keepalive", headers=srv.auth(idle["token"])) as resp:
            assert resp.status == 404
    finally:
        await stop()


async def test_api_key_protects_session_creation(make_server, monkeypatch):
    monkeypatch.setenv("AVATARSTREAM_API_KEY", "s3cret")
    srv, stop = await make_server()
    try:
        async with srv.http.post(f"{srv.url}/v1/sessions", json={"size": 256}) as resp:
            assert resp.status == 401
        async with srv.http.post(f"{srv.url}/v1/sessions", json={"size": 256}, headers=srv.auth("nope")) as resp:
            assert resp.status == 401
        async with srv.http.post(f"{srv.url}/v1/sessions", json={"size": 256}, headers=srv.auth("s3cret")) as resp:
            assert resp.status == 201
            info = await resp.json()
        # the session is then reached with its own token, or the API key (its creator's), nothing else
        for token, status in ((info["token"], 200), ("s3cret", 200), ("nope", 401)):
            async with srv.http.get(f"{srv.url}/v1/sessions/{info['id']}", headers=srv.auth(token)) as resp:
                assert resp.status == status, token
    finally:
        await stop()

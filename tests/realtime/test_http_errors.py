"""Bad input gets a clear HTTP error, and the server keeps serving: each case is followed by a
successful request. Real server (aiohttp + aiortc) with the real lite engine."""

from __future__ import annotations

import asyncio
import base64

import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from app_server import serving
from avatarstream.engines.base import EngineError
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY as REGISTRY_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def server(engine_loader):
    app = create_app(ServerConfig(max_sessions=1, engine_loader=engine_loader))
    async with serving(app) as http:
        yield http, app[REGISTRY_KEY]


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
    assert (await http.delete(location)).status == 200, "a second DELETE of an ended resource is not idempotent"
    assert (await http.delete("/whep/0123456789abcdef")).status == 404, "an id that never existed"
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


# ---- browsers on another origin: CORS on errors, WHEP's trickle, ICE servers, idempotent DELETE ----------------------
PLAYER = "http://player.example:8000"
CROSS = {"Origin": PLAYER}


@pytest.fixture
async def whep_server(engine_loader):
    """A server for a player on another origin: one session at most, an ICE server (a local STUN responder)."""
    from stun_responder import start_stun

    stun = await start_stun("127.0.0.1")
    config = ServerConfig(max_sessions=1, admission=False, size=256, cors_origins=[PLAYER],
                          ice_servers=[f"stun:127.0.0.1:{stun.port}"], engine_loader=engine_loader)
    app = create_app(config)
    async with serving(app) as http:
        yield http, app[REGISTRY_KEY], config
    assert stun.transport is not None
    stun.transport.close()


def exposed(resp) -> set[str]:
    return {h.strip().lower() for h in resp.headers.get("Access-Control-Expose-Headers", "").split(",")}


async def create_session(http) -> dict:
    resp = await http.post("/v1/sessions", json={"size": 256})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def whep_viewer(http, session: dict) -> tuple[RTCPeerConnection, object]:
    """A viewer that negotiates but never connects (no media leaves this test): the client pc and the 201.
    Its offer has no candidates and no end-of-candidates, as a browser's sent before gathering: they trickle."""
    pc, sdp = await make_offer()
    sdp = "".join(ln for ln in sdp.splitlines(keepends=True) if not ln.startswith(("a=candidate:", "a=end-of-cand")))
    resp = await http.post(f"/v1/sessions/{session['id']}/whep", data=sdp, headers={
        "Content-Type": "application/sdp", "Authorization": f"Bearer {session['token']}", **CROSS})
    assert resp.status == 201, await resp.text()
    return pc, resp


async def test_errors_to_an_allowed_origin_are_readable(whep_server):
    http, registry, _ = whep_server
    session = await create_session(http)
    wrong = await http.post(f"/v1/sessions/{session['id']}/whep", data="v=0",
                            headers={"Content-Type": "application/sdp", "Authorization": "Bearer nope", **CROSS})
    missing = await http.delete(f"/v1/sessions/{session['id']}/whep/000000000000", headers={
        "Authorization": f"Bearer {session['token']}", **CROSS})
    full = await http.post("/v1/sessions", json={}, headers=CROSS)
    legacy_full = await http.post("/whep", data="v=0", headers={"Content-Type": "application/sdp", **CROSS})
    bad_method = await http.put("/v1/sessions", headers=CROSS)
    for resp, status, code in ((wrong, 401, "unauthorized"), (missing, 404, "not_found"), (full, 503, "session_limit"),
                               (legacy_full, 503, "session_limit"), (bad_method, 405, "method_not_allowed")):
        assert resp.status == status and (await resp.json())["error"] == code
        assert resp.headers.get("Access-Control-Allow-Origin") == PLAYER, (status, dict(resp.headers))
        assert {"location", "link", "retry-after", "etag"} <= exposed(resp)
        assert "Origin" in resp.headers.get("Vary", "")
    assert int(full.headers["Retry-After"]) > 0 and int(legacy_full.headers["Retry-After"]) > 0
    # another origin reads nothing, and may change nothing
    foreign = await http.delete(f"/v1/sessions/{session['id']}", headers={
        "Authorization": f"Bearer {session['token']}", "Origin": "https://evil.example"})
    assert foreign.status == 403 and "Access-Control-Allow-Origin" not in foreign.headers
    # same origin and no origin: no CORS headers
    plain = await http.get("/v1/sessions/nope", headers={"Authorization": "Bearer x"})
    assert plain.status == 404 and "Access-Control-Allow-Origin" not in plain.headers
    assert len(registry) == 1


async def test_preflight_allows_what_each_resource_accepts(whep_server):
    http, _, config = whep_server

    async def preflight(path: str, method: str):
        resp = await http.options(path, headers={**CROSS, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": "authorization, content-type"})
        methods = {m.strip() for m in resp.headers.get("Access-Control-Allow-Methods", "").split(",") if m.strip()}
        return resp, methods

    resp, methods = await preflight("/whep/0123456789abcdef", "PATCH")
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == PLAYER
    assert {"PATCH", "DELETE", "OPTIONS"} <= methods and "POST" not in methods
    allowed_headers = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed_headers and "authorization" in allowed_headers and "if-match" in allowed_headers
    _, methods = await preflight("/v1/sessions/abc/whep/def", "PATCH")
    assert {"PATCH", "DELETE"} <= methods
    _, methods = await preflight("/v1/sessions", "POST")
    assert "POST" in methods and "PATCH" not in methods and "DELETE" not in methods
    # the WHEP endpoints answer OPTIONS themselves: the preflight carries the ICE servers too
    link = f'<{config.ice_servers[0]}>; rel="ice-server"'
    for endpoint in ("/whep", "/v1/sessions/abc/whep"):
        resp, methods = await preflight(endpoint, "POST")
        assert resp.status == 204 and "POST" in methods and resp.headers.getall("Link") == [link]
        plain = await http.options(endpoint)  # a player asking before its offer
        assert plain.status == 204 and plain.headers.getall("Link") == [link]
        assert plain.headers["Accept-Post"] == "application/sdp"
    unknown = await http.options("/v2/nothing", headers={**CROSS, "Access-Control-Request-Method": "GET"})
    assert unknown.status == 404 and unknown.headers["Access-Control-Allow-Origin"] == PLAYER


def server_remote_candidates(registry, session_id: str) -> list:
    viewer = registry.get(session_id).viewers[0]
    ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
    return ice.getRemoteCandidates()


def sdpfrag(ufrag: str, pwd: str, mid: str, candidates: list[str], end: bool = False) -> str:
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "m=video 9 UDP/TLS/RTP/SAVPF 0", f"a=mid:{mid}"]
    lines += [f"a=candidate:{c}" for c in candidates] + (["a=end-of-candidates"] if end else [])
    return "\r\n".join(lines) + "\r\n"


async def test_whep_201_links_ice_servers_and_patch_trickles_candidates(whep_server):
    http, registry, config = whep_server
    session = await create_session(http)
    pc, resp = await whep_viewer(http, session)
    assert resp.headers.getall("Link") == [f'<{config.ice_servers[0]}>; rel="ice-server"']
    assert resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
    resource, etag = resp.headers["Location"], resp.headers["ETag"]
    assert resp.headers["Access-Control-Allow-Origin"] == PLAYER
    offer = pc.localDescription.sdp
    ufrag = next(ln.split(":", 1)[1] for ln in offer.splitlines() if ln.startswith("a=ice-ufrag:"))
    pwd = next(ln.split(":", 1)[1] for ln in offer.splitlines() if ln.startswith("a=ice-pwd:"))
    mid = pc.getTransceivers()[0].mid
    auth = {"Authorization": f"Bearer {session['token']}", **CROSS}
    frag_type = {"Content-Type": "application/trickle-ice-sdpfrag"}
    assert server_remote_candidates(registry, session["id"]) == []
    own = [ln.split(":", 1)[1] for ln in offer.splitlines() if ln.startswith("a=candidate:")]
    ok = await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, own), headers={**auth, **frag_type, "If-Match": etag})
    assert ok.status == 204, await ok.text()
    assert ok.headers["Access-Control-Allow-Origin"] == PLAYER
    applied = server_remote_candidates(registry, session["id"])
    assert own and {(c.ip, c.port) for c in applied} == {(c.split()[4], int(c.split()[5])) for c in own}
    trickled = "1 1 udp 2122260223 10.231.9.9 40000 typ host generation 0"
    refusals = [
        (await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, [trickled]), headers={**auth, **frag_type,
                                                                                       "If-Match": '"stale"'}),
         412, "precondition_failed"),
        (await http.patch(resource, data=sdpfrag("newufrag", "newpassword0123456789ab", mid, [trickled]),
                          headers={**auth, **frag_type, "If-Match": "*"}), 501, "not_implemented"),
        (await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, [trickled]), headers={**auth}), 415,
         "unsupported_media_type"),
        (await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, ["1 1 udp"]), headers={**auth, **frag_type}), 400,
         "bad_request"),
        (await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, [trickled]),
                          headers={**frag_type, "Authorization": "Bearer nope", **CROSS}), 401, "unauthorized"),
        (await http.patch(resource.rsplit("/", 1)[0] + "/nope", data=sdpfrag(ufrag, pwd, mid, [trickled]),
                          headers={**auth, **frag_type}), 404, "not_found"),
    ]
    for got, status, code in refusals:
        assert got.status == status and (await got.json())["error"] == code, (status, await got.text())
        assert got.headers["Access-Control-Allow-Origin"] == PLAYER
    end = await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, [trickled], end=True),
                           headers={**auth, **frag_type})
    assert end.status == 204
    late = await http.patch(resource, data=sdpfrag(ufrag, pwd, mid, ["2 1 udp 2122260223 10.231.9.8 40001 typ host"]),
                            headers={**auth, **frag_type})
    assert late.status == 204  # after end-of-candidates: accepted and ignored (RFC 8838)
    assert len(server_remote_candidates(registry, session["id"])) == len(own) + 1
    await pc.close()


async def test_delete_of_an_ended_viewer_is_idempotent(whep_server):
    http, registry, _ = whep_server
    session = await create_session(http)
    auth = {"Authorization": f"Bearer {session['token']}", **CROSS}
    pc, resp = await whep_viewer(http, session)
    resource = resp.headers["Location"]
    await registry.get(session["id"]).viewers[0].close()  # its connection closed before the player's DELETE
    first = await http.delete(resource, headers=auth)
    assert first.status == 204 and first.headers["Access-Control-Allow-Origin"] == PLAYER
    assert (await http.delete(resource, headers=auth)).status == 204
    assert (await http.delete(resource, headers=CROSS)).status == 401  # a token is still needed
    assert (await http.delete(resource.rsplit("/", 1)[0] + "/000000000000", headers=auth)).status == 404
    await pc.close()
    # the session ends with a viewer on it: that viewer's DELETE still ends cleanly
    pc, resp = await whep_viewer(http, session)
    assert (await http.delete(f"/v1/sessions/{session['id']}", headers=auth)).status == 204
    gone = await http.delete(resp.headers["Location"], headers=auth)
    assert gone.status == 204 and gone.headers["Access-Control-Allow-Origin"] == PLAYER
    assert (await http.delete(resp.headers["Location"], headers={**CROSS, "Authorization": "Bearer nope"})).status == 401
    await pc.close()
    # POST /whep: the session ends with its connection; the DELETE that follows is a 200
    pc, sdp = await make_offer()
    resp = await http.post("/whep", data=sdp, headers={"Content-Type": "application/sdp", **CROSS})
    assert resp.status == 201 and resp.headers["ETag"] and resp.headers.getall("Link")
    location = resp.headers["Location"]
    await registry.get(location.rsplit("/", 1)[1]).viewers[0].close()
    assert await wait_for(lambda: len(registry) == 0)
    assert (await http.delete(location, headers=CROSS)).status == 200
    assert (await http.delete("/whep/0123456789abcdef", headers=CROSS)).status == 404
    await pc.close()


def test_issued_resources_window_and_bound():
    from avatarstream.realtime.http.ended import IssuedResources

    now = [0.0]
    issued = IssuedResources(window_s=60, capacity=3, clock=lambda: now[0])
    issued.issue("/whep/a", "t", legacy=True)
    now[0] = 1000.0  # live: kept however long it lives
    assert issued.get("/whep/a").ended_at is None
    issued.end("/whep/a")
    issued.end("/whep/never-issued")  # ignored
    now[0] = 1059.0
    assert issued.get("/whep/a").ended_at == 1000.0 and issued.get("/whep/a").legacy
    now[0] = 1060.5
    assert issued.get("/whep/a") is None and len(issued) == 0
    for name in "bcde":
        issued.issue(f"/whep/{name}", "t")
        issued.end(f"/whep/{name}")
    assert len(issued) == 3 and issued.get("/whep/b") is None and issued.get("/whep/e").token == "t"
    assert issued.get("/whep/never-issued") is None


def test_sdpfrag_parsing():
    from avatarstream.realtime.errors import BadRequest
    from avatarstream.realtime.http.sdpfrag import parse_sdpfrag

    frag = parse_sdpfrag("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
                         "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
                         "m=video 9 RTP/AVP 0\r\na=mid:1\r\n"
                         "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host\r\n"
                         "a=end-of-candidates\r\n")
    assert frag.ufrag == "EsAw" and frag.end_of_candidates
    assert [(c.mid, c.mline_index) for c in frag.candidates] == [("0", 0), ("1", 1)]
    for bad in ("", "hello", "a=candidate:1 1 udp 1 192.0.2.1 port typ host\r\n", "a=candidate:1 1 udp\r\n"):
        with pytest.raises(BadRequest):
            parse_sdpfrag(bad)

"""Hostile-but-fair input, replayed against a real server (aiohttp + aiortc + the lite engine).

Every bad request gets a 4xx JSON error naming the problem (never a 500), every bad agent message
gets an ``error`` message (the socket stays open) or a documented close code, and afterwards a
normal session still streams. A second pass of the whole suite must not grow the server's open
files, threads or memory (nothing leaks per bad request).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY
from avatarstream.realtime.transports.agent.socket import (
    ERROR_REPEAT_SECONDS,
    FLOOD_CLOSE_MESSAGES,
    MESSAGE_BURST,
    SOCKET_MAX_MSG_BYTES,
    connected_agent,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


# ---- inputs ----------------------------------------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A small, valid 1-bit greyscale PNG of the given size (all zero rows compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(min(height, 2000))) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def flat_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((256, 256, 3), 120, np.uint8))[1].tobytes()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def multipart(parts: list[tuple[str, bytes, str | None, str]], boundary: str = "xyzzy") -> bytes:
    """(name, payload, filename, content type) -> a multipart/form-data body."""
    out = b""
    for name, payload, filename, ctype in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n").encode() + payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MP = "multipart/form-data; boundary=xyzzy"


@dataclass
class Case:
    name: str
    method: str
    path: str  # may contain {id}, {token}, {other_id}
    status: int
    code: str | None = None  # the JSON "error" field, where it is fixed
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None  # "own" | "other" | a literal token


def json_case(name: str, path: str, body: Any, status: int = 400, code: str | None = "bad_request", **kw: Any) -> Case:
    text = body if isinstance(body, str) else json.dumps(body)
    return Case(name, "POST", path, status, code, text, {"Content-Type": "application/json"}, **kw)


CREATE = "/v1/sessions"

# An offer aiortc would accept (ICE credentials, rtcp-mux, a VP8 payload type): where the case is about another
# field (the image), the SDP must not be what is refused.
USABLE_OFFER = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                "c=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
                "a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n")

SID = "/v1/sessions/{id}"
HTTP_CASES: list[Case] = [
    # creating a session: fields
    json_case("size 1e999", CREATE, '{"size": 1e999}'),
    json_case("fps 1e999", CREATE, '{"fps": 1e999}'),
    json_case("size -1e999", CREATE, '{"size": -1e999}'),
    json_case("size NaN", CREATE, '{"size": NaN}'),
    json_case("size text", CREATE, {"size": "large"}),
    json_case("size negative", CREATE, {"size": -5}),
    json_case("size huge", CREATE, {"size": 10**12}),
    json_case("fps 60", CREATE, {"fps": 60}),
    json_case("engine unknown", CREATE, {"engine": "nope"}),
    json_case("engine list", CREATE, {"engine": ["lite"]}),
    json_case("engine offline only", CREATE, {"engine": "loopy"}),
    json_case("kind robot", CREATE, {"kind": "robot"}),
    json_case("image unknown", CREATE, {"image": "dragon"}),
    json_case("image number", CREATE, {"image": 123}),
    json_case("image 10 MB string", CREATE, {"image": "x" * 900_000}),
    json_case("controls list", CREATE, {"controls": [1]}),
    json_case("controls string", CREATE, {"controls": "loud"}),
    json_case("body array", CREATE, [1, 2]),
    json_case("body not json", CREATE, "not json at all"),
    json_case("body deep nesting", CREATE, nested(100_000)),
    json_case("controls deep nesting", CREATE, '{"controls": {"a": ' + nested(40) + "}}"),
    json_case("body over 1 MiB", CREATE, json.dumps({"pad": "x" * (2 * 2**20)}), status=413, code="too_large"),
    Case("charset bogus", "POST", CREATE, 400, "bad_request", b"{}", {"Content-Type": "application/json; charset=bogus"}),
    Case("invalid utf-8", "POST", CREATE, 400, "bad_request", b'{"a": "\xff\xfe"}', {"Content-Type": "application/json"}),
    Case("json as text/plain", "POST", CREATE, 415, "unsupported_media_type", b"{}", {"Content-Type": "text/plain"}),
    Case("json as form", "POST", CREATE, 415, "unsupported_media_type", b"a=b",
         {"Content-Type": "application/x-www-form-urlencoded"}),
    # creating a session: multipart
    Case("multipart no boundary", "POST", CREATE, 400, "bad_request", b"--x\r\n\r\n", {"Content-Type": "multipart/form-data"}),
    Case("multipart garbage", "POST", CREATE, 400, "bad_request", os.urandom(2000), {"Content-Type": MP}),
    Case("multipart unterminated", "POST", CREATE, 400, "bad_request",
         b'--xyzzy\r\nContent-Disposition: form-data; name="size"\r\n\r\n256', {"Content-Type": MP}),
    Case("multipart controls not json", "POST", CREATE, 400, "bad_request",
         multipart([("controls", b"{oops", None, "text/plain")]), {"Content-Type": MP}),
    Case("multipart controls deep", "POST", CREATE, 400, "bad_request",
         multipart([("controls", ('{"a": ' + nested(60) + "}").encode(), None, "text/plain")]), {"Content-Type": MP}),
    Case("multipart field over 64 KiB", "POST", CREATE, 413, "too_large",
         multipart([("kind", b"a" * 70_000, None, "text/plain")]), {"Content-Type": MP}),
    Case("multipart field bad charset", "POST", CREATE, 400, "bad_request",
         multipart([("kind", b"human", None, "text/plain; charset=bogus")]), {"Content-Type": MP}),
    Case("upload 21 MiB", "POST", CREATE, 413, "too_large",
         multipart([("image", b"\xff" * (21 * 2**20), "big.jpg", "image/jpeg")]), {"Content-Type": MP}),
    Case("upload not an image", "POST", CREATE, 400, "unreadable_image",
         multipart([("image", b"hello, not an image", "a.jpg", "image/jpeg")]), {"Content-Type": MP}),
    Case("upload without a face", "POST", CREATE, 422, "no_face",
         multipart([("image", flat_jpeg(), "wall.jpg", "image/jpeg")]), {"Content-Type": MP}),
    Case("upload 20000x20000 png", "POST", CREATE, 413, "too_large",
         multipart([("image", png_claiming(20000, 20000), "bomb.png", "image/png")]), {"Content-Type": MP}),
    Case("upload 40000x40000 png", "POST", CREATE, 413, "too_large",
         multipart([("image", png_claiming(40000, 40000), "bomb.png", "image/png")]), {"Content-Type": MP}),
    # authorisation
    Case("token non-ascii (query)", "GET", SID + "?token=t%C3%B8ken%E2%9C%93", 401, "unauthorized"),
    Case("token non-ascii (header)", "GET", SID, 401, "unauthorized", auth="tøken"),
    Case("token 6 kB", "GET", SID, 401, "unauthorized", auth="a" * 6_000),  # aiohttp's header limit is 8 KiB
    Case("token wrong", "GET", SID, 401, "unauthorized", auth="wrong"),
    Case("token missing", "GET", SID, 401, "unauthorized"),
    Case("token of another session", "GET", SID, 403, "forbidden", auth="other"),
    Case("session unknown", "GET", "/v1/sessions/0123456789abcdef", 404, "not_found", auth="nobody"),
    Case("stats of a /v1 session without token", "GET", "/stats/{id}", 401, "unauthorized"),
    Case("whep delete of a /v1 session", "DELETE", "/whep/{id}", 404, "not_found"),
    Case("whep delete unknown", "DELETE", "/whep/nope", 404, "not_found"),
    # session routes
    Case("controls not json", "POST", SID + "/controls", 400, "bad_request", b"{", {"Content-Type": "application/json"},
         auth="own"),
    Case("controls empty", "POST", SID + "/controls", 400, "bad_request", b"{}", {"Content-Type": "application/json"},
         auth="own"),
    Case("controls as text/plain", "POST", SID + "/controls", 415, "unsupported_media_type", b'{"a": 1}',
         {"Content-Type": "text/plain"}, auth="own"),
    Case("controls deep", "POST", SID + "/controls", 400, "bad_request", ('{"a": ' + nested(50) + "}").encode(),
         {"Content-Type": "application/json"}, auth="own"),
    Case("v1 whep wrong type", "POST", SID + "/whep", 415, "unsupported_media_type", b"v=0", {"Content-Type": "text/plain"},
         auth="own"),
    Case("v1 whep garbage sdp", "POST", SID + "/whep", 400, "bad_sdp", b"hello", {"Content-Type": "application/sdp"},
         auth="own"),
    Case("v1 offer bad sdp", "POST", SID + "/offer", 400, "bad_sdp", b'{"sdp": "v=0\\r\\n", "type": "offer"}',
         {"Content-Type": "application/json"}, auth="own"),
    Case("v1 offer type answer", "POST", SID + "/offer", 400, "bad_sdp", b'{"sdp": "v=0", "type": "answer"}',
         {"Content-Type": "application/json"}, auth="own"),
    Case("v1 end unknown viewer", "DELETE", SID + "/whep/nope", 404, "not_found", auth="own"),
    Case("agent sample_rate text", "GET", SID + "/agent?sample_rate=abc", 400, "bad_request", auth="own"),
    Case("agent sample_rate arabic digits", "GET", SID + "/agent?sample_rate=%D9%A1%D9%A6%D9%A0%D9%A0%D9%A0", 400,
         "bad_request", auth="own"),
    # legacy signalling
    json_case("offer not json", "/offer", "{", code="bad_request"),
    Case("offer as text/plain", "POST", "/offer", 415, "unsupported_media_type", b'{"sdp": "v=0"}',
         {"Content-Type": "text/plain"}),
    json_case("offer without sdp", "/offer", {"type": "offer"}, code="bad_sdp"),
    json_case("offer sdp garbage", "/offer", {"sdp": "hello", "type": "offer"}, code="bad_sdp"),
    json_case("offer sdp 100 kB", "/offer", {"sdp": "v=0\r\n" + "a=x\r\n" * 20_000, "type": "offer"}, code="bad_sdp"),
    json_case("offer type answer", "/offer", {"sdp": "v=0", "type": "answer"}, code="bad_sdp"),
    json_case("offer image non-ascii", "/offer", {"sdp": USABLE_OFFER, "image": "ïmage"}, code="unreadable_image"),
    json_case("offer image bad base64", "/offer", {"sdp": USABLE_OFFER, "image": "%%% not base64 %%%"},
              code="unreadable_image"),
    Case("offer body over 32 MiB", "POST", "/offer", 413, "too_large", b"{" + b" " * (33 * 2**20) + b"}",
         {"Content-Type": "application/json"}),
    Case("whep wrong type", "POST", "/whep", 415, "unsupported_media_type", b"v=0", {"Content-Type": "application/json"}),
    Case("whep empty", "POST", "/whep", 400, "bad_sdp", b"", {"Content-Type": "application/sdp"}),
    Case("whep garbage", "POST", "/whep", 400, "bad_sdp", os.urandom(500).hex().encode(), {"Content-Type": "application/sdp"}),
    # routing and the cross-origin policy
    Case("unknown route", "GET", "/v2/everything", 404, "not_found"),
    Case("wrong method", "PUT", CREATE, 405, "method_not_allowed"),
    Case("foreign origin create", "POST", CREATE, 403, "forbidden", b"{}",
         {"Content-Type": "application/json", "Origin": "https://evil.example"}),
    Case("foreign origin preflight", "OPTIONS", CREATE, 403, "forbidden", None,
         {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}),
    Case("foreign origin websocket", "GET", SID + "/agent", 403, "forbidden", None,
         {"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
          "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()},
         auth="own"),
    Case("foreign origin delete", "DELETE", SID, 403, "forbidden", None, {"Origin": "https://evil.example"}, auth="own"),
]


# ---- the server --------------------------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    app: web.Application
    http: aiohttp.ClientSession
    victim: dict
    other: dict


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(engine_loader):
    # admission by measured load is off: this suite is about input handling, on a machine of any load
    config = ServerConfig(size=256, max_sessions=4, admission=False, engine_loader=engine_loader)
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        sessions = []
        for _ in range(2):
            async with http.post(f"{url}/v1/sessions", json={"size": 256}) as resp:
                assert resp.status == 201, await resp.text()
                sessions.append(await resp.json())
        yield Server(url, app, http, *sessions)
    await runner.cleanup()


async def send(srv: Server, case: Case) -> tuple[int, dict | None]:
    path = case.path.format(id=srv.victim["id"])
    headers = dict(case.headers)
    token = {"own": srv.victim["token"], "other": srv.other["token"]}.get(case.auth or "", case.auth)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = case.body.encode() if isinstance(case.body, str) else case.body
    async with srv.http.request(case.method, srv.url + path, data=data, headers=headers,
                                skip_auto_headers=["Content-Type"]) as resp:
        try:
            body = json.loads(await resp.read())
        except ValueError:
            body = None
        return resp.status, body


async def run_http_cases(srv: Server) -> list[str]:
    failures = []
    for case in HTTP_CASES:
        status, body = await send(srv, case)
        if status != case.status or not isinstance(body, dict) or (case.code and body.get("error") != case.code) \
                or not body.get("message") or len(json.dumps(body)) > 2000:
            failures.append(f"{case.name}: got {status} {str(body)[:200]}, expected {case.status} {case.code}")
    return failures


# ---- the agent socket ----------------------------------------------------------------------------------------------
def pcm(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


AGENT_CASES: list[tuple[str, Any, str]] = [  # (name, message: bytes | str, expected error code)
    ("audio before start", pcm(0.02), "no_sample_rate"),
    ("start without rate", '{"type": "start"}', "bad_sample_rate"),
    ("start 44100", '{"type": "start", "sample_rate": 44100}', "bad_sample_rate"),
    ("start arabic digits", '{"type": "start", "sample_rate": "١٦٠٠٠"}', "bad_sample_rate"),
    ("start rate as float", '{"type": "start", "sample_rate": 16000.5}', "bad_sample_rate"),
    ("text not json", "hello", "bad_json"),
    ("text deep nesting", nested(30_000), "bad_json"),
    ("text json array", "[1, 2]", "bad_message"),
    ("type missing", '{"sample_rate": 16000}', "bad_message"),
    ("type number", '{"type": 5}', "bad_message"),
    ("type unknown", '{"type": "' + "x" * 5000 + '"}', "unknown_type"),
    ("set_controls without controls", '{"type": "set_controls"}', "bad_controls"),
    ("set_controls list", '{"type": "set_controls", "controls": [1]}', "bad_controls"),
    ("text over 64 KiB in bytes", '{"type": "keepalive", "pad": "' + "€" * 30_000 + '"}', "text_too_large"),
]
AGENT_CASES_AFTER_START: list[tuple[str, Any, str]] = [
    ("odd byte count", b"\x00\x01\x02", "odd_length"),
    ("frame over 1 s", pcm(1.5), "frame_too_large"),
]


FLOOD_CHUNK = 200  # agent messages sent before waiting for the server to read them


def interleaved_by_code(cases: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """``cases`` reordered round-robin over their error codes, so that cases expecting the same code
    are as far apart as possible (each waits out the code's repeat limit only when it must)."""
    by_code: dict[str, list[tuple[str, Any, str]]] = {}
    for case in cases:
        by_code.setdefault(case[2], []).append(case)
    rounds = max(len(group) for group in by_code.values())
    return [group[i] for i in range(rounds) for group in by_code.values() if i < len(group)]


async def run_agent_cases(srv: Server) -> list[str]:
    failures = []
    ws = await srv.http.ws_connect(srv.victim["agent_url"], headers={"Authorization": f"Bearer {srv.victim['token']}"})
    loop = asyncio.get_running_loop()
    last_reply: dict[str, float] = {}  # error code -> when its last error reply arrived here

    async def expect_error(name: str, message: Any, code: str) -> None:
        # one error per code and ERROR_REPEAT_SECONDS reaches the agent (no amplification): a case
        # whose code was answered less than that ago waits until a reply is due again (the server
        # stamped the earlier reply before it arrived here, so this wait is never too short)
        await asyncio.sleep(max(0.0, last_reply.get(code, -1e9) + ERROR_REPEAT_SECONDS + 0.05 - loop.time()))
        if isinstance(message, bytes):
            await ws.send_bytes(message)
        else:
            await ws.send_str(message)
        try:
            while True:
                reply = await asyncio.wait_for(ws.receive_json(), 5)
                if reply["type"] == "error":
                    break
        except (asyncio.TimeoutError, TypeError, ValueError) as exc:
            failures.append(f"agent {name}: no error reply ({exc!r}); socket closed={ws.closed}")
            return
        last_reply[str(reply.get("code"))] = loop.time()
        if reply.get("code") != code or len(json.dumps(reply)) > 2000:
            failures.append(f"agent {name}: got {str(reply)[:200]}, expected {code}")

    for name, message, code in interleaved_by_code(AGENT_CASES):
        await expect_error(name, message, code)
    await ws.send_json({"type": "start", "sample_rate": 16000})
    for name, message, code in AGENT_CASES_AFTER_START:
        await expect_error(name, message, code)
    # a flood of tiny frames: over the rate limit, dropped with one throttled error; the socket lives. Sent in
    # chunks, each read by the server before the next, until the server's count shows a refusal: it comes once
    # the burst is spent, however fast this machine is, and never near the close cap (tests/agent/test_flood_guard
    # has the exact verdicts); the chunk bound only ends a server that never refuses
    agent = connected_agent(srv.app[REGISTRY].get(srv.victim["id"]))
    read, dropped = agent.messages, agent.dropped_messages
    for _ in range(10 * MESSAGE_BURST // FLOOD_CHUNK):
        for _ in range(FLOOD_CHUNK):
            await ws.send_bytes(b"\x00\x00")
        read += FLOOD_CHUNK
        while agent.messages < read and not ws.closed:
            await asyncio.sleep(0.001)
        if agent.dropped_messages > dropped:
            break
    if not 0 < agent.dropped_messages - dropped <= FLOOD_CHUNK < FLOOD_CLOSE_MESSAGES:
        failures.append(f"agent flood: {agent.dropped_messages - dropped} messages refused of {read}")
    await expect_error("flood", b"\x00\x00", "rate_limited")
    await ws.send_json({"type": "interrupt"})
    await asyncio.sleep(1.0)
    # many short utterances: bounded by the playback buffer's utterance cap
    for _ in range(300):  # 300 utterances of 0.1 s: 30 s queued, under the 120 s limit, over 256 utterances
        await ws.send_bytes(pcm(0.1))
        await ws.send_json({"type": "end_of_utterance"})
        await asyncio.sleep(0.004)  # under the message rate limit
    await expect_error("utterance flood", pcm(0.1), "buffer_full")
    await ws.send_json({"type": "interrupt"})
    await ws.send_json({"type": "keepalive"})
    reply = await asyncio.wait_for(_next_type(ws, "keepalive"), 5)
    if reply is None:
        failures.append("agent socket unusable after the abuse")
    # a frame over the socket limit closes it with 1009 (documented)
    await ws.send_bytes(bytes(SOCKET_MAX_MSG_BYTES + 2))
    msg = await asyncio.wait_for(ws.receive(), 5)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await asyncio.wait_for(ws.receive(), 5)
    if not (msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009):
        failures.append(f"agent oversized frame: {msg.type} {msg.data}, expected close 1009")
    await ws.close()
    return failures


async def _next_type(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict | None:
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        data = json.loads(msg.data)
        if data["type"] == kind:
            return data


# ---- a normal session afterwards --------------------------------------------------------------------------------------
@dataclass
class Streamed:
    pts: list[int]  # 90 kHz timestamps of the frames received, in order
    unsent: int  # ticks the server's sender for this viewer skipped (it fell behind the clock)

    @property
    def ticks(self) -> int:
        """Clock ticks (40 ms) from the first frame received to the last."""
        return (self.pts[-1] - self.pts[0]) // 3600 + 1


async def stream_frames(srv: Server, frames: int = 25) -> Streamed:
    """Join the victim session as a WebRTC viewer and receive ``frames`` video frames (a count, not a
    duration: how long they take depends on this machine); with the server's count of unsent ticks."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    got = asyncio.get_running_loop().create_future()
    pts: list[int] = []

    @pc.on("track")
    def on_track(track) -> None:
        if not got.done():
            got.set_result(track)

    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {srv.victim['token']}", "Content-Type": "application/sdp"}
    async with srv.http.post(f"{srv.url}/v1/sessions/{srv.victim['id']}/whep", data=pc.localDescription.sdp,
                             headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        await pc.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
    try:
        track = await asyncio.wait_for(got, 10)
        while len(pts) < frames:  # the timeouts only end a hang
            pts.append((await asyncio.wait_for(track.recv(), 15 if not pts else 5)).pts)
        viewers = [v.stats() for v in srv.app[REGISTRY].get(srv.victim["id"]).viewers if v.transport == "webrtc"]
        unsent = sum(v.video_frames_skipped + v.details["video"].get("keyframe_waits", 0) for v in viewers)
    finally:
        await pc.close()
    return Streamed(pts, unsent)


def process_counts() -> tuple[int, int, int]:
    """(open file descriptors, threads, RSS bytes) of this process (the server runs in it)."""
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return fds, threading.active_count(), rss


async def test_every_bad_input_gets_a_clear_4xx_and_the_server_keeps_streaming(server):
    assert len(HTTP_CASES) + len(AGENT_CASES) + len(AGENT_CASES_AFTER_START) + 4 >= 60
    failures = await run_http_cases(server) + await run_agent_cases(server)
    assert not failures, "\n".join(failures)
    assert len(server.app[REGISTRY]) == 2  # no bad request created (or left) a session
    # it still streams: frames on consecutive 40 ms ticks of the session clock, each tick received or
    # counted by the server as skipped by a sender that fell behind (a loaded machine skips, never stops)
    streamed = await stream_frames(server)
    steps = np.diff(streamed.pts)
    assert len(streamed.pts) == 25 and np.all(steps > 0) and np.all(steps % 3600 == 0), streamed
    assert len(streamed.pts) >= streamed.ticks - streamed.unsent, streamed


async def test_repeating_the_abuse_leaks_nothing(server):
    await run_http_cases(server)
    await asyncio.sleep(0.5)
    before = process_counts()
    for _ in range(2):
        failures = await run_http_cases(server) + await run_agent_cases(server)
        assert not failures, "\n".join(failures)
    await asyncio.sleep(1.0)
    after = process_counts()
    assert after[0] <= before[0] + 8, (before, after)  # fds
    assert after[1] <= before[1] + 4, (before, after)  # threads
    assert after[2] <= before[2] + 200 * 2**20, (before, after)  # RSS (the 21-33 MiB bodies pass through)

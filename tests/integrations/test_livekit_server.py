"""Server mode of the LiveKit plugin, the pieces that need no LiveKit server (docs/agent.md has the manual check
against ``livekit-server --dev``): the avatar's token, ``POST /v1/sessions/{id}/livekit`` at the edge, the real
``rtc.Room`` failing against a closed loopback port (502, nothing left attached), and the session's LiveKit
viewer with LiveKit's own ``DataStreamAudioReceiver`` + ``AvatarRunner`` over a stand-in for the room's
network calls: it counts as a viewer (admission, ``/metrics``), publishes frames, answers ``lk.clear_buffer``
from the agent only, and leaves when the agent leaves or the session ends.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed: pip install 'avatarstream[livekit]'")

from livekit import api, rtc  # noqa: E402
from livekit.agents import AgentSession  # noqa: E402
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF  # noqa: E402
from livekit_room import StandInRoom  # noqa: E402

from avatarstream.integrations.livekit import AvatarSession, InProcessMedia, ServerMedia, avatar_token  # noqa: E402
from avatarstream.integrations.local_server import LocalAvatarServer  # noqa: E402
from avatarstream.realtime.client import AvatarClient, ClientError  # noqa: E402
from avatarstream.realtime.errors import NotSupported  # noqa: E402
from avatarstream.realtime.transports.livekit import join  # noqa: E402
from avatarstream.realtime.transports.livekit import viewer as livekit_viewer  # noqa: E402
from avatarstream.realtime.transports.livekit.join import JoinRequest  # noqa: E402

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]
SIZE = 256
KEY, SECRET = "devkey", "a-secret-of-at-least-thirty-two-bytes"
AGENT = "agent-7"
CLOSED_PORT = "ws://127.0.0.1:9"  # nothing listens: rtc.Room.connect is refused at once


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with LocalAvatarServer(size=SIZE) as srv:
        yield srv


async def new_session(server: LocalAvatarServer) -> AvatarClient:
    client = AvatarClient(server.url)
    await client.create_session(size=SIZE)
    return client


def join_body(**over: Any) -> dict[str, Any]:
    token = avatar_token(api_key=KEY, api_secret=SECRET, room="room-1", identity="avatarstream-avatar",
                         agent_identity=AGENT)
    return {"url": CLOSED_PORT, "token": token, "agent_identity": AGENT, "sample_rate": 24000, **over}


async def metric(server: LocalAvatarServer, name: str, label: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_avatar_token_publishes_on_behalf_of_the_agent():
    token = join_body()["token"]
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "avatarstream-avatar" and claims.kind == "agent"
    assert claims.attributes == {ATTRIBUTE_PUBLISH_ON_BEHALF: AGENT}
    assert claims.video is not None and claims.video.room == "room-1" and claims.video.room_join
    with pytest.raises(ValueError, match="API key and secret"):
        avatar_token(api_key="", api_secret="", room="r", identity="a", agent_identity="b")


async def test_the_join_route_checks_its_input_and_reports_an_unreachable_livekit(server):
    client = await new_session(server)
    assert client.session is not None
    url = f"{server.url}/v1/sessions/{client.session.id}/livekit"
    auth = {"Authorization": f"Bearer {client.session.token}"}
    try:
        async with aiohttp.ClientSession() as http:
            for body, field in [({**join_body(), "url": "ftp://x"}, "'url'"), ({**join_body(), "token": "x"}, "'token'"),
                                ({**join_body(), "agent_identity": ""}, "'agent_identity'"),
                                ({**join_body(), "sample_rate": 22050}, "'sample_rate'"),
                                ({**join_body(), "extra": 1}, "unknown field")]:
                async with http.post(url, json=body, headers=auth) as resp:
                    assert resp.status == 400 and field in (await resp.json())["message"], (body, await resp.text())
            async with http.post(url, json=join_body()) as resp:
                assert resp.status == 401
            t0 = time.monotonic()
            async with http.post(url, json=join_body(), headers=auth) as resp:
                reply = await resp.json()
            assert resp.status == 502 and reply["error"] == "livekit_unreachable", reply
            assert time.monotonic() - t0 < 20
        session = server.session(client.session.id)
        assert session is not None and session.viewer_count == 0  # the refused join left nothing attached
    finally:
        await client.close()


async def test_agent_side_server_mode_ends_its_session_when_the_avatar_cannot_join(server):
    room = StandInRoom("avatarstream-avatar", agent=AGENT)
    room.local_participant.identity = AGENT
    avatar = AvatarSession(url=server.url, livekit_url=CLOSED_PORT, livekit_api_key=KEY,
                           livekit_api_secret=SECRET, size=SIZE)
    before = len(server.registry)
    with pytest.raises(ClientError) as err:
        await avatar.start(AgentSession(), room)
    assert err.value.status == 502
    join = avatar.media.join
    assert join is not None and join.agent_identity == AGENT and join.url == CLOSED_PORT
    assert api.TokenVerifier(KEY, SECRET).verify(join.token).attributes == {ATTRIBUTE_PUBLISH_ON_BEHALF: AGENT}
    assert len(server.registry) == before  # the session it created was deleted


async def test_the_livekit_viewer_counts_publishes_answers_clear_buffer_and_leaves(server):
    client = await new_session(server)
    assert client.session is not None
    session = server.session(client.session.id)
    assert session is not None
    room = StandInRoom("avatarstream-avatar", agent=AGENT)
    request = JoinRequest(CLOSED_PORT, join_body()["token"], AGENT, 24000)
    try:
        viewer = await livekit_viewer.join(session, request, timeout_s=10, room_factory=lambda: room)
        assert [v.transport for v in session.viewers] == ["livekit"] and session.active
        assert await metric(server, "avatar_viewers", 'transport="livekit"') == 1
        while "avatar_video" not in room.local_participant.tracks:
            await asyncio.sleep(0.01)
        frames: list[np.ndarray] = []

        stream = rtc.VideoStream(room.local_participant.tracks["avatar_video"], format=rtc.VideoBufferType.RGB24)

        async def read() -> None:
            async for ev in stream:
                frames.append(np.frombuffer(ev.frame.data, np.uint8))

        reading = asyncio.create_task(read())
        while len(frames) < 10:
            await asyncio.sleep(0.02)
        reading.cancel()
        await stream.aclose()
        assert frames[0].size == SIZE * SIZE * 3
        assert "lk.audio_stream" in room.byte_stream_handlers

        clear = room.local_participant._rpc_handlers["lk.clear_buffer"]
        assert clear(rtc.RpcInvocationData("1", "stranger", "", 5.0)) == "reject"
        assert clear(rtc.RpcInvocationData("2", AGENT, "", 5.0)) == "ok"
        while viewer.generator.interruptions == 0:
            await asyncio.sleep(0.01)

        room.emit("participant_disconnected", room.agent)  # the agent leaves: so does the avatar
        while session.viewer_count:
            await asyncio.sleep(0.01)
        assert viewer.left_because == "agent_left" and not room.isconnected()
        assert await metric(server, "avatar_viewers", 'transport="livekit"') == 0

        room2 = StandInRoom("avatarstream-avatar", agent=AGENT)
        viewer2 = await livekit_viewer.join(session, request, timeout_s=10, room_factory=lambda: room2)
        await client.delete_session()  # the session ends: the avatar leaves the room
        assert viewer2.left_because == "session_ended" and not room2.isconnected()
    finally:
        await client.close(delete_session=False)


async def test_a_server_without_the_extra_answers_501_naming_it(monkeypatch):
    monkeypatch.setattr(join, "VIEWER_MODULE", "livekit_not_installed_here.viewer")
    with pytest.raises(NotSupported, match=r"avatarstream\[livekit\]") as err:
        join.viewer_module()
    assert err.value.status == 501


async def test_the_example_agent_builds_either_mode(monkeypatch):
    path = Path(__file__).resolve().parents[2] / "examples" / "livekit_agent.py"
    spec = importlib.util.spec_from_file_location("example_livekit_agent", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.delenv("AVATARSTREAM_URL", raising=False)
    assert isinstance(example.make_avatar().media, InProcessMedia)
    monkeypatch.setenv("AVATARSTREAM_URL", "http://avatars.example")
    assert isinstance(example.make_avatar().media, ServerMedia)

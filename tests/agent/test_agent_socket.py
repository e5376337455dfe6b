"""Agent WebSocket over a real server: clear errors for bad input, and nothing left behind."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from avatarstream.realtime.client import AvatarClient, ClientError
from avatarstream.realtime.transports.agent.socket import connected_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")


def tone(seconds: float, rate: int, hz: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict:
    async def find():
        while True:
            msg = await ws.receive_json()
            if msg["type"] == kind:
                return msg
    return await asyncio.wait_for(find(), timeout)


async def test_malformed_frames_get_clear_errors_and_socket_stays_usable(server):
    s = await server.create()
    session = server.registry.get(s["id"])
    ws = await server.http.ws_connect(s["agent_url"], headers=server.auth(s["token"]))
    await ws.send_bytes(tone(0.1, 16000))  # audio before the rate is declared
    err = await next_event(ws, "error")
    assert err["code"] == "no_sample_rate" and "start" in err["message"]

    await ws.send_json({"type": "start", "sample_rate": 44100})  # wrong rate
    err = await next_event(ws, "error")
    assert err["code"] == "bad_sample_rate" and "16000, 24000, 48000" in err["message"]

    await ws.send_json({"type": "start", "sample_rate": 48000})
    ready = await next_event(ws, "ready")
    assert ready["sample_rate"] == 48000 and ready["max_frame_bytes"] == 96000

    await ws.send_bytes(b"\x01\x02\x03")  # odd byte count
    err = await next_event(ws, "error")
    assert err["code"] == "odd_length" and "2 bytes per sample" in err["message"]

    await ws.send_bytes(tone(1.5, 48000))  # over 1 s in one frame
    err = await next_event(ws, "error")
    assert err["code"] == "frame_too_large" and "split" in err["message"]

    for text, code in [("{", "bad_json"), ('{"type": "sing"}', "unknown_type"), ('{"type": "set_controls"}', "bad_controls")]:
        await ws.send_str(text)
        assert (await next_event(ws, "error"))["code"] == code
    assert session.queued_seconds == 0  # none of the refused audio was queued

    # the socket still works: a proper utterance plays and finishes
    await ws.send_bytes(tone(0.3, 48000))
    await ws.send_json({"type": "end_of_utterance"})
    started = await next_event(ws, "playback_started")
    finished = await next_event(ws, "playback_finished")
    assert finished["utterance"] == started["utterance"] and finished["interrupted"] is False
    assert finished["playback_position"] == pytest.approx(0.3, abs=0.01)
    await ws.close()
    await server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"]))


async def test_bad_rate_on_url_and_second_agent(server):
    s = await server.create()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.http.ws_connect(s["agent_url"] + "?sample_rate=8000", headers=server.auth(s["token"]))
    assert info.value.status == 400
    first = await server.http.ws_connect(s["agent_url"] + "?sample_rate=16000", headers=server.auth(s["token"]))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.http.ws_connect(s["agent_url"], headers=server.auth(s["token"]))
    assert info.value.status == 409
    await first.close()
    await server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"]))


async def test_abrupt_disconnect_frees_everything(server, tasks_of):
    s = await server.create()
    session = server.registry.get(s["id"])
    baseline_subscribers = session.events.subscriber_count
    ws = await server.http.ws_connect(s["agent_url"] + "?sample_rate=24000", headers=server.auth(s["token"]))
    await next_event(ws, "ready")
    for _ in range(20):
        await ws.send_bytes(tone(0.5, 24000))  # an utterance left open (no end marker): 10 s of speech
    for _ in range(600):  # until the server has read them all (the bound only ends a hang)
        if connected_agent(session).messages >= 20:
            break
        await asyncio.sleep(0.05)
    assert session.queued_seconds > 1.0  # most of it still queued (it plays at real time) when the agent vanishes
    assert any("agent-events" in t.get_name() for t in tasks_of(s["id"]))
    ws._response.connection.transport.abort()  # no close frame: the peer just vanishes
    for _ in range(50):
        await asyncio.sleep(0.05)
        if connected_agent(session) is None:
            break
    assert connected_agent(session) is None
    assert not any("agent-events" in t.get_name() for t in tasks_of(s["id"]))
    assert session.events.subscriber_count == baseline_subscribers
    assert session.queued_seconds == 0  # the open utterance was dropped
    # a new agent can connect right away
    ws2 = await server.http.ws_connect(s["agent_url"] + "?sample_rate=16000", headers=server.auth(s["token"]))
    assert (await ws2.receive_json())["type"] == "ready"
    # deleting the session closes the agent socket with a reason and ends every session task
    async with server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"])) as resp:
        assert resp.status == 204
    msg = await asyncio.wait_for(ws2.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000 and msg.extra == "session ended"
    for _ in range(600):  # the session's tasks end (the bound only ends a hang)
        if not tasks_of(s["id"]):
            break
        await asyncio.sleep(0.05)
    assert tasks_of(s["id"]) == []


async def test_client_controls_and_interrupt_when_idle(server, cat_portrait):
    async with AvatarClient(server.url) as client:
        # multipart upload through the client, with creation-time controls
        info = await client.create_session(image=cat_portrait, size=256, controls={"head_motion_scale": 0.5, "cfg_scale": 3})
        assert "cfg_scale" in info.extra["unsupported_controls"]
        assert "head_motion_scale" not in info.extra["unsupported_controls"]
        await client.connect(sample_rate=16000)
        reply = await client.set_controls({"head_motion_scale": 0.7, "laser_eyes": True})
        assert "laser_eyes" in reply["unsupported"]
        assert set(reply["applied"]) | set(reply["unsupported"]) == {"head_motion_scale", "laser_eyes"}
        # interrupt with nothing playing is still acknowledged
        mark = client.mark()
        await client.interrupt()
        ack = await client.wait_for("playback_finished", start=mark, timeout=10.0)  # sent at once: 10 s ends a hang
        assert ack["interrupted"] is True
        with pytest.raises(ClientError):
            await client.wait_for("error", start=client.mark(), timeout=0.2)
    assert server.registry.get(info.id) is None  # the client deleted its session on exit


async def test_live_controls_change_the_running_stream(server):
    """expression_intensity 0 set mid-session keeps the mouth still while speech plays: every slot of the
    utterance is sent once (the session's sent log), and each one sent with its own frame carries the control,
    however many frames a loaded engine missed."""
    async with AvatarClient(server.url, http=server.http) as client:
        info = await client.create_session(size=256)
        session = server.registry.get(info.id)
        await client.connect(sample_rate=16000)
        t = np.arange(16000) / 16000
        speech_like = (0.5 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)

        async def mouth_during_utterance() -> list[float]:
            """The mouth opening of every slot of the utterance sent with its own frame (the session's sent log)."""
            mark = client.mark()
            await client.push_audio(speech_like)
            await client.end_utterance()
            # 30 s only ends a hang: 1 s of speech plays at real time
            started = await client.wait_for("playback_started", start=mark, timeout=30)
            finished = await client.wait_for("playback_finished", start=mark, timeout=30)
            span = range(started["frame"], finished["frame"])
            sent = [(c, m, ok) for (c, _, _, m, ok) in session.stats.sent_log if c in span]
            assert [c for c, _, _ in sent] == list(span), "a slot of the utterance was not sent exactly once"
            # a slot the engine missed repeats the frame before it (no mouth of its own): not counted
            opens = [m for _, m, ok in sent if ok and m is not None]
            assert opens, f"none of the {len(span)} slots was sent with its own frame"
            return opens

        natural = float(np.mean(await mouth_during_utterance()))
        reply = await client.set_controls({"expression_intensity": 0.0, "blink_rate": 99, "gaze": [0.2, 0.0]})
        assert reply["applied"] == {"expression_intensity": 0.0}
        assert "blink_rate" in reply["unsupported"] and "gaze" in reply["unsupported"]
        muted = await mouth_during_utterance()
        print(f"mouth opening: natural mean {natural:.3f}, with expression_intensity 0 max {max(muted):.3f} "
              f"({len(muted)} frames)")
        assert natural > 0.05, natural  # the speech opens the mouth without the control
        assert max(muted) < 0.3 * natural, (natural, muted)  # every frame sent after the control carries it


async def test_huge_frame_closes_with_1009_and_frees_the_connection(server, tasks_of):
    from avatarstream.realtime.transports.agent.socket import SOCKET_MAX_MSG_BYTES

    s = await server.create()
    ws = await server.http.ws_connect(s["agent_url"] + "?sample_rate=16000", headers=server.auth(s["token"]))
    assert (await ws.receive_json())["type"] == "ready"
    await ws.send_bytes(bytes(SOCKET_MAX_MSG_BYTES + 2))
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009  # "message too big"
    session = server.registry.get(s["id"])
    for _ in range(40):
        if connected_agent(session) is None:
            break
        await asyncio.sleep(0.05)
    assert connected_agent(session) is None and session.queued_seconds == 0
    assert not any("agent-events" in t.get_name() for t in tasks_of(s["id"]))
    await server.http.delete(f"{server.url}/v1/sessions/{s['id']}", headers=server.auth(s["token"]))

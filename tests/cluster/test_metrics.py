"""``/metrics`` on the single server: Prometheus text that the official parser reads, counters that
move as sessions come and go, error responses counted by code, the API key enforced. Real server,
real lite engine, a real aiortc viewer (frames delivered per session)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiohttp import ClientSession

from app_server import serving
from avatarstream.bench.viewer_recorder import RecordingViewer
from avatarstream.realtime.client import AvatarClient, SessionInfo
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import create_app
from avatarstream.realtime.http.keys import REGISTRY

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is not installed")

pytestmark = pytest.mark.timeout(180)
KEY = "metrics-test-key"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def server(engine_loader):
    config = ServerConfig(max_sessions=1, size=256, api_key=KEY, admission=False, engine_loader=engine_loader)
    app = create_app(config)
    async with serving(app) as http:
        yield http, app[REGISTRY]


async def scrape(http: ClientSession) -> dict:
    resp = await http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return samples(await resp.text())


async def test_metrics_parse_and_move(server):
    http, _ = server
    resp = await http.get("/metrics")
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"

    before = await scrape(http)
    assert value(before, "avatar_sessions_active") == 0
    assert value(before, "avatar_sessions_max") == 1
    assert value(before, "avatar_draining") == 0
    assert value(before, "avatar_http_responses_total", route="/metrics", method="GET", status="401",
                 code="unauthorized") == 1

    auth = {"Authorization": f"Bearer {KEY}"}
    resp = await http.post("/v1/sessions", json={"size": 256}, headers=auth)
    assert resp.status == 201, await resp.text()
    info = await resp.json()
    full = await http.post("/v1/sessions", json={"size": 256}, headers=auth)
    assert full.status == 503 and (await full.json())["error"] == "session_limit"

    viewer = RecordingViewer(keep_images=False)
    try:
        await viewer.join(http, info["whep_url"], info["token"])
        await asyncio.wait_for(viewer.first_video.wait(), 30)
        client = AvatarClient(info["whep_url"].split("/v1/")[0], http=http)
        client.attach(SessionInfo.from_json(info))
        await client.connect(sample_rate=16000)
        t = np.arange(8000) / 16000
        for _ in range(2):  # two utterances: two push-to-playback observations
            mark = client.mark()
            await client.push_audio((0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
            await client.end_utterance()
            await client.wait_for("playback_finished", start=mark, timeout=10)
        await client.disconnect()
        await asyncio.sleep(1.0)
        during = await scrape(http)
    finally:
        await viewer.close()
    sid = info["id"]
    assert value(during, "avatar_sessions_active") == 1
    assert value(during, "avatar_sessions_started_total") == value(before, "avatar_sessions_started_total") + 1
    assert value(during, "avatar_session_ticks_total", session=sid) > 25
    assert value(during, "avatar_session_fps", session=sid) > 0
    assert value(during, "avatar_session_viewers", session=sid) == 1
    assert value(during, "avatar_viewers", transport="webrtc") == 1
    assert value(during, "avatar_http_responses_total", route="/v1/sessions", method="POST", status="503",
                 code="session_limit") == 1
    assert value(during, "avatar_http_responses_total", route="/v1/sessions", method="POST", status="201",
                 code="") == 1
    assert value(during, "avatar_http_request_seconds_count", route="/v1/sessions", method="POST") == 2
    # push-to-playback: at least the lip-sync delay (D = lookahead + 2 frames, 80 ms or more), well under 2 s
    count = value(during, "avatar_push_to_playback_seconds_count")
    mean = value(during, "avatar_push_to_playback_seconds_sum") / max(count, 1)
    assert count == 2 and 0.08 <= mean < 2.0, (count, mean)

    resp = await http.delete(f"/v1/sessions/{sid}", headers=auth)
    assert resp.status == 204
    after = await scrape(http)
    assert value(after, "avatar_sessions_active") == 0
    assert value(after, "avatar_sessions_ended_total") == value(before, "avatar_sessions_ended_total") + 1
    assert not any(name.startswith("avatar_session_") and dict(labels).get("session") == sid
                   for name, labels in after)
    # unknown routes are counted under one label, never by path
    await http.get("/no/such/path/123")
    assert value(await scrape(http), "avatar_http_responses_total", route="unmatched", method="GET",
                 status="404", code="not_found") == 1


async def test_draining_server_refuses_new_sessions(server):
    http, registry = server
    auth = {"Authorization": f"Bearer {KEY}"}
    registry.draining = True  # what a cluster worker told to drain sets
    resp = await http.post("/v1/sessions", json={"size": 256}, headers=auth)
    assert resp.status == 503 and resp.headers["Retry-After"]
    body = await resp.json()
    assert body["error"] == "session_limit" and "draining" in body["message"]
    health = await (await http.get("/health")).json()
    assert health["draining"] is True
    assert value(await scrape(http), "avatar_draining") == 1
    registry.draining = False
    resp = await http.post("/v1/sessions", json={"size": 256}, headers=auth)
    assert resp.status == 201

"""Sessions across workers on a real local Ray cluster: two worker actors of two slots each (the
real server with the lite engine at 256 px, in-process in each actor) behind one front, real
aiortc WHEP viewers connected straight to the workers.

One cluster for the module (Ray and the workers take a while to start on 2 cores); each test
ends its sessions. The tests run in order: spread and refusal, a worker killed (SIGKILL to its
process: Ray restarts it), drain.

A session "streams on" when its viewer's media timestamps advance by the seconds watched and every 40 ms
tick missing from what the viewer received is one its worker counted as not sent (``bench/media_ticks.py``):
its fps depends on the machine's speed and is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'avatarstream[cluster]')")
parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is not installed")

from avatarstream.bench.media_ticks import (TickAccount, account_viewer, advanced_past, server_base,  # noqa: E402
                                            ticks_in)
from avatarstream.bench.viewer_recorder import RecordingViewer  # noqa: E402
from avatarstream.realtime.cluster.front import FRONT, Front, FrontConfig, create_front_app  # noqa: E402
from avatarstream.realtime.cluster.worker import NAMESPACE, WorkerSpec, start_worker  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.asyncio(loop_scope="module")]

KEY = "cluster-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORKERS = ("a", "b")


@dataclass
class Cluster:
    http: ClientSession  # base URL: the front
    front: Front
    handles: dict


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, configure_logging=False,
             log_to_driver=False)
    handles = {}
    runner = None
    try:
        for wid in WORKERS:
            spec = WorkerSpec(wid, slots=2, server={"size": 256, "api_key": KEY, "admission": False,
                                                    "idle_timeout": 120.0})
            handles[wid] = start_worker(spec)
        app = create_front_app(FrontConfig(api_key=KEY, poll_interval=0.5))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with ClientSession(f"http://127.0.0.1:{port}") as http:
            c = Cluster(http, app[FRONT], handles)
            await wait_until(lambda: sum(w.placeable for w in c.front.table.workers.values()) == 2, 180,
                             "both workers up")
            yield c
    finally:
        if runner is not None:
            await runner.cleanup()
        for h in handles.values():
            ray.kill(h, no_restart=True)
        ray.shutdown()


async def wait_until(predicate, timeout: float, what: str) -> float:
    """Seconds it took ``predicate`` to hold (AssertionError naming ``what`` after ``timeout``)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def create(c: Cluster, expect: int = 201) -> dict:
    resp = await c.http.post("/v1/sessions", json={"size": 256}, headers=AUTH)
    body = await resp.json()
    assert resp.status == expect, body
    if expect == 503:
        assert body["error"] == "session_limit" and int(resp.headers["Retry-After"]) >= 1
    return body


async def watch(c: Cluster, info: dict) -> RecordingViewer:
    """A real aiortc WHEP viewer of the session, connected to its worker; waits for the first frame."""
    assert not info["whep_url"].startswith(str(c.http._base_url))  # media goes to the worker, not the front
    viewer = RecordingViewer(keep_images=False, max_video_frames=25 * 600)
    await viewer.join(c.http, info["whep_url"], info["token"])
    await asyncio.wait_for(viewer.first_video.wait(), 60)
    return viewer


def fps(viewer: RecordingViewer, t0: float, t1: float) -> float:
    """Video frames received per second between monotonic times t0 and t1 (on this machine's speed: printed)."""
    return sum(t0 <= v.t < t1 for v in viewer.recording.video) / (t1 - t0)


async def streams_on(c: Cluster, viewer: RecordingViewer, info: dict, since_pts: int, seconds: float) -> TickAccount:
    """The session's media timestamps advance ``seconds`` past ``since_pts`` (waited for: the bound only ends a
    hang), and each tick missing from what its viewer received was counted by its worker as not sent."""
    await advanced_past(viewer, since_pts + ticks_in(seconds))
    acc = await account_viewer(viewer, c.http, server_base(info["whep_url"]), info["id"], KEY)
    assert acc.on_ticks, f"frames of {info['id']} off the session clock's 40 ms ticks"
    assert acc.lost <= 0, f"frames of {info['id']} lost on the way, uncounted by its worker: {acc}"
    return acc


def last_pts(viewer: RecordingViewer) -> int:
    return viewer.recording.video[-1].pts


async def end_all(c: Cluster, sessions: list[dict], viewers: list[RecordingViewer]) -> None:
    for v in viewers:
        await v.close()
    for s in sessions:
        resp = await c.http.delete(f"/v1/sessions/{s['id']}", headers=AUTH)
        assert resp.status in (204, 410), await resp.text()
    await wait_until(lambda: not c.front.table.routes and all(
        not w.status.sessions for w in c.front.table.workers.values() if w.alive), 30, "sessions ended")


async def scrape_of_every_worker(c: Cluster) -> dict:
    """The front's /metrics from a scrape every worker answered in time: a worker slower than the front's scrape
    timeout (a loaded machine) is left out of that one scrape, shown as avatar_front_worker_scraped 0, so ask
    again (30 s only ends a hang)."""
    deadline = time.monotonic() + 30
    while True:
        samples = metric_samples(await (await c.http.get("/metrics", headers=AUTH)).text())
        if all(samples.get(("avatar_front_worker_scraped", (("worker", wid),))) == 1 for wid in WORKERS):
            return samples
        assert time.monotonic() < deadline, "no scrape of the front's /metrics reached every worker in 30 s"
        await asyncio.sleep(0.5)


def metric_samples(text: str) -> dict:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_sessions_spread_over_workers_and_the_fifth_is_refused(cluster):
    c = cluster
    before = metric_samples(await (await c.http.get("/metrics", headers=AUTH)).text())
    sessions = [await create(c) for _ in range(4)]
    assert sorted(s["worker"] for s in sessions) == ["a", "a", "b", "b"]
    assert len({s["id"] for s in sessions}) == 4
    await create(c, expect=503)  # 2 workers x 2 slots
    viewers = [await watch(c, s) for s in sessions]
    try:
        t0, since = time.monotonic(), [last_pts(v) for v in viewers]
        accounts = [await streams_on(c, v, s, p, 4.0) for v, s, p in zip(viewers, sessions, since)]
        rates = [fps(v, t0, time.monotonic()) for v in viewers]
        print("fps of the four sessions:", [round(r, 1) for r in rates], accounts)

        # small requests are proxied; the agent socket is redirected to the worker
        resp = await c.http.get(f"/v1/sessions/{sessions[0]['id']}",
                                headers={"Authorization": f"Bearer {sessions[0]['token']}"})
        assert resp.status == 200 and (await resp.json())["viewers"] == 1
        resp = await c.http.get(f"/v1/sessions/{sessions[0]['id']}", headers={"Authorization": "Bearer nope"})
        assert resp.status == 401
        resp = await c.http.get(f"/v1/sessions/{sessions[0]['id']}",
                                headers={"Authorization": f"Bearer {sessions[1]['token']}"})
        assert resp.status == 403
        resp = await c.http.get(f"/v1/sessions/{sessions[0]['id']}/agent", headers=AUTH, allow_redirects=False)
        assert resp.status == 307 and resp.headers["Location"].startswith(sessions[0]["agent_url"].replace("ws", "http", 1))
        resp = await c.http.post("/v1/sessions", json={"size": 256})
        assert resp.status == 401

        # the front's /metrics: its own and every worker's, labelled by worker
        during = await scrape_of_every_worker(c)
        for wid in WORKERS:
            assert during[("avatar_sessions_active", (("worker", wid),))] == 2
            assert during[("avatar_front_worker_up", (("worker", wid),))] == 1
            assert during[("avatar_front_placements_total", (("worker", wid),))] == \
                before.get(("avatar_front_placements_total", (("worker", wid),)), 0) + 2
        fps_samples = [v for (name, _), v in during.items() if name == "avatar_session_fps"]
        assert len(fps_samples) == 4 and min(fps_samples) > 0
        assert during[("avatar_http_responses_total", (("code", "session_limit"), ("method", "POST"),
                                                       ("route", "/v1/sessions"), ("status", "503")))] >= 1
    finally:
        await end_all(c, sessions, viewers)
    after = await scrape_of_every_worker(c)
    for wid in WORKERS:
        assert after[("avatar_sessions_active", (("worker", wid),))] == 0
        assert after[("avatar_sessions_ended_total", (("worker", wid),))] >= 2


async def test_killed_worker_sessions_are_lost_and_it_rejoins(cluster):
    c = cluster
    first = [await create(c), await create(c)]
    by_worker = {s["worker"]: s for s in first}
    assert set(by_worker) == {"a", "b"}
    viewers = {wid: await watch(c, s) for wid, s in by_worker.items()}
    lost = by_worker["a"]
    status = await c.handles["a"].status.remote()
    events = await c.http.get(f"/v1/sessions/{lost['id']}/events",
                              headers={"Authorization": f"Bearer {lost['token']}"})
    assert events.status == 200 and events.headers["Content-Type"].startswith("text/event-stream")
    sessions = list(first)
    try:
        since = last_pts(viewers["b"])
        os.kill(status.pid, signal.SIGKILL)
        t_kill = time.monotonic()

        async def lost_seen() -> float:
            while True:
                resp = await c.http.get(f"/v1/sessions/{lost['id']}",
                                        headers={"Authorization": f"Bearer {lost['token']}"})
                if resp.status == 410:
                    assert (await resp.json())["error"] == "session_lost"
                    return time.monotonic() - t_kill
                assert resp.status in (200, 503), await resp.text()
                await asyncio.sleep(0.2)

        told_after = await asyncio.wait_for(lost_seen(), 10)
        # the front stopped placing there: new sessions go to the survivor while the worker restarts
        assert not c.front.table.workers["a"].placeable
        placed = await create(c)
        sessions.append(placed)
        assert placed["worker"] == "b"
        text = (await asyncio.wait_for(events.content.read(), 10)).decode()
        assert "event: session_lost" in text, text
        print(f"session_lost after {told_after:.2f} s")
        # the survivor streams on: through the kill and its detection, and 4 s more
        acc = await streams_on(c, viewers["b"], by_worker["b"], since, time.monotonic() - t_kill + 4.0)
        t_end = time.monotonic()
        survivor_fps = fps(viewers["b"], t_kill, t_end)
        starts = [t_kill + i * 0.5 for i in range(int((t_end - t_kill - 1) * 2))]
        worst_second = min(fps(viewers["b"], t, t + 1.0) for t in starts)
        print(f"survivor fps after the kill: {survivor_fps:.1f} (worst 1 s window {worst_second:.1f}), {acc}")
        # Ray restarts the actor; it rejoins as a new incarnation and takes sessions again
        await wait_until(lambda: c.front.table.workers["a"].placeable
                         and c.front.table.workers["a"].status.incarnation != status.incarnation,
                         120, "worker a restarted")
        print(f"worker a rejoined {time.monotonic() - t_kill:.1f} s after the kill")
        again = await create(c)
        sessions.append(again)
        assert again["worker"] == "a"
        viewer = await watch(c, again)
        viewers["a2"] = viewer
    finally:
        events.close()
        await end_all(c, [s for s in sessions if s is not lost], list(viewers.values()))


async def test_draining_worker_takes_no_new_sessions_and_its_sessions_go_on(cluster):
    c = cluster
    first = [await create(c), await create(c)]
    by_worker = {s["worker"]: s for s in first}
    assert set(by_worker) == {"a", "b"}
    viewer = await watch(c, by_worker["b"])
    sessions = list(first)
    try:
        resp = await c.http.post("/v1/cluster/workers/b/drain", json={"draining": True}, headers=AUTH)
        assert resp.status == 200 and (await resp.json())["draining"] is True
        t0, since = time.monotonic(), last_pts(viewer)
        placed = await create(c)
        sessions.append(placed)
        assert placed["worker"] == "a"
        await create(c, expect=503)  # a is full, b has a free slot but drains
        # the draining worker's session goes on
        acc = await streams_on(c, viewer, by_worker["b"], since, time.monotonic() - t0 + 3.0)
        print(f"the draining worker's session: {fps(viewer, t0, time.monotonic()):.1f} fps, {acc}")
        resp = await c.http.get(f"/v1/sessions/{by_worker['b']['id']}", headers=AUTH)
        assert resp.status == 200
        resp = await c.http.post("/v1/cluster/workers/b/drain", json={"draining": False}, headers=AUTH)
        assert resp.status == 200 and (await resp.json())["draining"] is False
        placed = await create(c)
        sessions.append(placed)
        assert placed["worker"] == "b"
        resp = await c.http.post("/v1/cluster/workers/nope/drain", headers=AUTH)
        assert resp.status == 404
    finally:
        await end_all(c, sessions, [viewer])

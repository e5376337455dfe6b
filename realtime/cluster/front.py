"""The cluster front: the server's HTTP API in front of many workers, placing each new session
on a worker with free slots and carrying nothing heavy.

    POST   /v1/sessions                 placed: forwarded to the chosen worker, its reply returned
                                        (whep_url, agent_url, offer_url, watch_url point at the worker)
                                        plus "worker"; 503 session_limit + Retry-After when no worker
                                        has a free slot (all full, draining or down)
    POST   /whep, POST /offer           the single-connection sessions, placed the same way (WHEP's
                                        Location is the worker's absolute URL)
    GET|DELETE /v1/sessions/{id}, POST .../keepalive, .../controls, .../whep, .../offer,
    DELETE .../whep/{viewer}            small requests proxied to the session's worker (SDP, JSON)
    GET    /v1/sessions/{id}/agent      307 to the worker (the agent socket carries audio: never proxied)
    GET    /v1/sessions/{id}/events     text/event-stream: one ``session_lost`` (or ``session_ended``)
                                        event when the session goes
    GET    /health                      the workers, their slots and the sessions routed
    GET    /metrics                     the front's metrics and every worker's, labelled by worker
    GET    /v1/cluster/workers          the workers (API key)
    POST   /v1/cluster/workers/{id}/drain   {"draining": true|false} (API key)

A session of a worker that died or restarted answers 410 ``session_lost``. Authorisation is
enforced here and again on the worker: the API key to create (the workers have the same key),
the session's token (its digest kept from the worker's reply, or from the worker's report after
the front restarted) or the API key on a session's routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from avatarstream.realtime.cluster import front_metrics
from avatarstream.realtime.cluster.membership import WorkerWatcher
from avatarstream.realtime.cluster.placement import LOST, PlacementTable, WorkerState, token_digest
from avatarstream.realtime.config import API_KEY_ENV, ServerConfig
from avatarstream.realtime.errors import (BadRequest, Forbidden, NotFound, SessionLimitError, SessionLost,
                                         Unauthorized, WorkerUnavailable)
from avatarstream.realtime.http.auth import request_token, require_api_key
from avatarstream.realtime.http.bodies import read_json_object
from avatarstream.realtime.http.errors import error_middleware
from avatarstream.realtime.http.metrics import METRICS, HttpMetrics, metrics_middleware

log = logging.getLogger(__name__)

MAX_CREATE_BYTES = 32 * 2**20  # as the server: a portrait upload
MAX_PROXY_BYTES = 256 * 2**10  # session routes carry SDP or small JSON
PASSED_HEADERS = ("Content-Type", "Location", "Retry-After", "WWW-Authenticate", "ETag")
EVENT_KEEPALIVE_S = 15.0
WORKER_KEEPALIVE_S = 1.0  # below any worker's header_timeout


@dataclass
class FrontConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # None: from $AVATARSTREAM_API_KEY; "" or unset there: no key
    insecure: bool = False  # allow a non-loopback host without an API key
    retry_after: int = 5  # Retry-After (s) of a 503 when the cluster is full
    create_timeout: float = 60.0  # s a worker may take to create a session (portrait analysis)
    proxy_timeout: float = 15.0  # s for a proxied session request (WHEP answers wait for ICE gathering)
    connect_timeout: float = 3.0  # s to connect to a worker: one cut off the network is passed over, not waited on
    poll_interval: float = 1.0  # s between worker status polls
    call_timeout: float = 3.0  # s a status call may take before the worker counts as unresponsive
    header_timeout: float = ServerConfig.header_timeout  # s without a request's headers: the connection closes

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None


class Front:
    """The front's state: the placement table, the worker watcher and an HTTP client to the workers."""

    def __init__(self, config: FrontConfig, watcher: WorkerWatcher | None = None) -> None:
        self.config = config
        self.table = PlacementTable()
        self.watcher = watcher or WorkerWatcher(self.table, interval=config.poll_interval,
                                                call_timeout=config.call_timeout)
        self.watcher.table = self.table
        self.metrics = HttpMetrics()
        self.metrics.prometheus.register(front_metrics.FrontCollector(self.table))
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the front is not started")
        return self._http

    async def start(self) -> None:
        # idle connections to the workers are let go before the workers' own header timeout closes them
        # (a request on a connection the worker is closing would fail)
        connector = aiohttp.TCPConnector(keepalive_timeout=WORKER_KEEPALIVE_S)
        self._http = aiohttp.ClientSession(connector=connector)
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def worker_headers(self, request: web.Request) -> dict[str, str]:
        """Headers a forwarded request carries: its content type, and the API key (or the caller's token)."""
        headers = {}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        if self.config.api_key and request.path in ("/v1/sessions", "/whep", "/offer"):
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        elif "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        return headers


FRONT = web.AppKey("front", Front)


# ---- placing new sessions --------------------------------------------------------------------------
async def _place(request: web.Request, path: str) -> tuple[WorkerState, aiohttp.ClientResponse, bytes]:
    """Forward a creation to a worker with a free slot; a worker's 503 (its own admission) or a
    failed connection moves on to the next. Raises SessionLimitError when none takes it."""
    front = request.app[FRONT]
    require_api_key(request, front.config.api_key)
    if front.table.choose() is None:  # before reading the body
        raise _cluster_full(front)
    body = await request.content.read(MAX_CREATE_BYTES + 1)
    if len(body) > MAX_CREATE_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_CREATE_BYTES, actual_size=len(body))
    headers = front.worker_headers(request)
    tried: set[str] = set()
    while (worker := front.table.choose(tried)) is not None:
        tried.add(worker.worker_id)
        worker.pending += 1
        try:
            resp = await front.http.post(worker.status.url + path, data=body, headers=headers,
                                         params=request.query, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=front.config.create_timeout,
                                                                       sock_connect=front.config.connect_timeout))
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("worker %s did not take a session (%s); trying another", worker.worker_id, exc)
            front.table.mark_unresponsive(worker.worker_id)
            continue
        finally:
            worker.pending -= 1
        if resp.status == 503:
            continue  # full by its own measure (admission) or just started draining
        return worker, resp, data
    raise _cluster_full(front)


def _cluster_full(front: Front) -> SessionLimitError:
    return SessionLimitError("the cluster has no free session slot (workers full, draining or down); retry later",
                             retry_after=front.config.retry_after)


def _passed_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: resp.headers[k] for k in PASSED_HEADERS if k in resp.headers}


async def create(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    worker, resp, data = await _place(request, "/v1/sessions")
    if resp.status != 201:  # the worker refused the body (400, 413, 422 ...): its answer as is
        return web.Response(status=resp.status, body=data, headers=_passed_headers(resp))
    body = json.loads(data)
    front.table.record(body["id"], worker, body["token"])
    body["worker"] = worker.worker_id
    return web.json_response(body, status=201, headers={"Location": f"/v1/sessions/{body['id']}"})


async def create_legacy(request: web.Request) -> web.Response:
    """``POST /whep`` and ``POST /offer``: the session belongs to its one connection, on the worker."""
    worker, resp, data = await _place(request, request.path)
    headers = _passed_headers(resp)
    if "Location" in headers:  # DELETE /whep/{id} goes to the worker
        headers["Location"] = worker.status.url + headers["Location"]
    return web.Response(status=resp.status, body=data, headers=headers)


# ---- a session's routes -----------------------------------------------------------------------------
def _authorize(request: web.Request, session_id: str) -> str:
    """The worker URL of an authorised request for ``session_id``; 401/403/404/410 otherwise."""
    front = request.app[FRONT]
    table, api_key = front.table, front.config.api_key
    token = request_token(request)
    if token is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <session token>'")
    digest = token_digest(token)
    route, lost = table.routes.get(session_id), table.lost.get(session_id)
    own = route.token if route is not None else lost.token if lost is not None else None
    if own is not None and (_same(digest, own) or (api_key and _same(token, api_key))):
        if lost is not None:
            raise SessionLost(f"the session's worker is gone: {lost.reason}; create a new session")
        assert route is not None
        return route.url
    if any(_same(digest, r.token) for sid, r in table.routes.items() if sid != session_id):
        raise Forbidden("this token belongs to another session")
    if own is None:
        raise NotFound("no such session (ended or timed out)")
    raise Unauthorized("wrong bearer token for this session")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def proxy(request: web.Request) -> web.Response:
    """Forward a small session request to the session's worker and return its answer."""
    front = request.app[FRONT]
    session_id = request.match_info["id"]
    url = _authorize(request, session_id)
    body = await request.content.read(MAX_PROXY_BYTES + 1)
    if len(body) > MAX_PROXY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_PROXY_BYTES, actual_size=len(body))
    try:
        resp = await front.http.request(request.method, url + request.path, data=body or None,
                                        headers=front.worker_headers(request), params=request.query,
                                        allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=front.config.proxy_timeout,
                                                                      sock_connect=front.config.connect_timeout))
        data = await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        if session_id in front.table.lost:
            raise SessionLost(f"the session's worker is gone: {front.table.lost[session_id].reason}") from None
        raise WorkerUnavailable("the session's worker did not answer; retry in a second") from None
    if request.method == "DELETE" and resp.status == 204 and request.path == f"/v1/sessions/{session_id}":
        front.table.forget(session_id)
    elif resp.status == 404 and request.path == f"/v1/sessions/{session_id}":
        front.table.forget(session_id)  # ended on the worker before its next report
    return web.Response(status=resp.status, body=data, headers=_passed_headers(resp))


async def agent(request: web.Request) -> web.Response:
    """The agent socket carries audio: the client goes to the worker (307, query kept)."""
    url = _authorize(request, request.match_info["id"])
    location = url + request.path + (f"?{request.query_string}" if request.query_string else "")
    raise web.HTTPTemporaryRedirect(location)


async def events(request: web.Request) -> web.StreamResponse:
    """``text/event-stream``: one event when the session goes, ``session_lost`` (its worker died)
    or ``session_ended``; comments keep the connection alive meanwhile."""
    front = request.app[FRONT]
    session_id = request.match_info["id"]
    with contextlib.suppress(SessionLost):
        _authorize(request, session_id)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    future = front.table.watch(session_id)
    try:
        while not future.done():
            await asyncio.wait({future}, timeout=EVENT_KEEPALIVE_S)
            if not future.done():
                await response.write(b": keepalive\n\n")
        kind = future.result()
        data: dict = {"type": kind, "session": session_id}
        lost = front.table.lost.get(session_id)
        if kind == LOST and lost is not None:
            data["reason"] = lost.reason
        await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
    finally:
        front.table.unwatch(session_id, future)
    await response.write_eof()
    return response


# ---- the cluster ------------------------------------------------------------------------------------
def _worker_json(w: WorkerState) -> dict:
    s = w.status
    return {"id": s.worker_id, "url": s.url, "slots": s.slots, "sessions": len(s.sessions), "free": w.free,
            "alive": w.alive, "responsive": w.responsive, "draining": s.draining, "placeable": w.placeable,
            "incarnation": s.incarnation, "node_ip": s.node_ip, "capacity": s.capacity}


async def health(request: web.Request) -> web.Response:
    table = request.app[FRONT].table
    return web.json_response({"status": "ok", "role": "front", "sessions": len(table.routes),
                              "free_slots": table.free_slots,
                              "workers": [_worker_json(w) for _, w in sorted(table.workers.items())]})


async def workers(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    require_api_key(request, front.config.api_key)
    return web.json_response({"workers": [_worker_json(w) for _, w in sorted(front.table.workers.items())]})


async def drain(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    require_api_key(request, front.config.api_key)
    draining = True
    if request.can_read_body:
        body = await read_json_object(request, '{"draining": true}')
        draining = body.get("draining", True)
        if not isinstance(draining, bool):
            raise BadRequest("'draining' must be true or false")
    worker_id = request.match_info["worker"]
    status = await front.watcher.drain(worker_id, draining)
    if status is None:
        raise NotFound(f"no worker {worker_id!r} in the cluster")
    return web.json_response(_worker_json(front.table.workers[worker_id]))


async def metrics(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    require_api_key(request, front.config.api_key)
    workers_text = await front_metrics.worker_metrics(front.http, front.table, front.config.api_key)
    return web.Response(body=front.metrics.exposition() + workers_text, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_front_app(config: FrontConfig, watcher: WorkerWatcher | None = None) -> web.Application:
    """The front's application; Ray must be initialised (``ray.init``) in this process."""
    front = Front(config, watcher)
    app = web.Application(client_max_size=MAX_CREATE_BYTES, middlewares=[metrics_middleware, error_middleware],
                          handler_args={"keepalive_timeout": config.header_timeout})
    app[FRONT] = front
    app[METRICS] = front.metrics
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/sessions", create)
    app.router.add_post("/whep", create_legacy)
    app.router.add_post("/offer", create_legacy)
    app.router.add_get("/v1/sessions/{id}/agent", agent)
    app.router.add_get("/v1/sessions/{id}/events", events)
    app.router.add_get("/v1/sessions/{id}", proxy)
    app.router.add_delete("/v1/sessions/{id}", proxy)
    for tail in ("keepalive", "controls", "whep", "offer"):
        app.router.add_post(f"/v1/sessions/{{id}}/{tail}", proxy)
    app.router.add_delete("/v1/sessions/{id}/whep/{viewer}", proxy)
    app.router.add_get("/v1/cluster/workers", workers)
    app.router.add_post("/v1/cluster/workers/{worker}/drain", drain)

    async def _startup(app: web.Application) -> None:
        await front.start()

    async def _cleanup(app: web.Application) -> None:
        await front.stop()

    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    return app

"""Direct WebRTC signalling, one connection = one session: ``POST /offer`` (the browser page) and
WHEP ``POST /whep`` + ``PATCH``/``DELETE /whep/{id}`` (trickle ICE, ICE servers and ending:
``realtime/http/whep.py``), and ``GET /stats/{id}``.

The session belongs to its connection: it ends when the connection fails or closes, or when its
viewer does not connect within the connect deadline. Creating needs the API key when one is set
(``realtime/http/auth.py``); ``DELETE /whep/{id}`` and ``/stats/{id}`` need the session's token or
the API key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from aiohttp import web
from aiortc import RTCSessionDescription

from avatarstream.engines.base import Portrait
from avatarstream.engines.portraits import MAX_IMAGE_BYTES, UnreadableImageError, portrait_from_bytes
from avatarstream.realtime.errors import BadRequest, Conflict, NotFound, UnsupportedMediaType
from avatarstream.realtime.http import whep
from avatarstream.realtime.http.auth import authorize_ended, authorize_session, require_api_key
from avatarstream.realtime.http.bodies import MAX_JSON_BYTES, parse_json, read_text
from avatarstream.realtime.http.keys import CONFIG, REGISTRY, RESOURCES
from avatarstream.realtime.session.session import AvatarSession, ViewerLimitError
from avatarstream.realtime.transports.webrtc.peer import MAX_SDP_BYTES, check_offer, connect_viewer

LEGACY_ORIGINS = ("offer", "whep")
MAX_OFFER_BODY_BYTES = MAX_JSON_BYTES + MAX_IMAGE_BYTES * 4 // 3 + 1024  # SDP + a base64 portrait


async def connect_owned_session(app: web.Application, session: AvatarSession,
                                offer: RTCSessionDescription) -> RTCSessionDescription:
    """Connect the viewer that owns ``session``: the session ends when the connection does."""
    registry, cfg = app[REGISTRY], app[CONFIG]
    try:
        _viewer, answer = await connect_viewer(session, offer, ice_servers=cfg.ice_servers,
                                               encoding=cfg.video_encoding(), on_gone=lambda v: registry.close(session))
    except ViewerLimitError as exc:
        await registry.close(session)
        raise Conflict(str(exc)) from None
    except BaseException:
        await registry.close(session)
        raise
    return answer


async def offer(request: web.Request) -> web.Response:
    """POST /offer  {sdp, type:"offer", image?: base64} -> {sdp, type:"answer", session_id}."""
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    require_api_key(request, cfg.api_key)
    registry.check_capacity()  # before reading or decoding anything
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send JSON with 'Content-Type: application/json'")
    body = parse_json(await read_text(request, MAX_OFFER_BODY_BYTES))
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp = check_offer(body.get("sdp"), body.get("type", "offer"))
    portrait: Portrait | None = None
    image = body.get("image")
    if image:
        if not isinstance(image, str) or not image.isascii():
            raise UnreadableImageError("'image' must be base64 encoded image bytes")
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise UnreadableImageError("'image' must be base64 encoded image bytes") from None
        loop = asyncio.get_running_loop()
        portrait = await loop.run_in_executor(None, portrait_from_bytes, data, "upload")
    session = await registry.create(portrait, origin="offer")
    answer = await connect_owned_session(request.app, session, sdp)
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id})


async def whep_post(request: web.Request) -> web.Response:
    """WHEP: POST /whep (application/sdp offer) -> 201, Location, answer SDP."""
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    require_api_key(request, cfg.api_key)
    if request.content_type != "application/sdp":
        raise UnsupportedMediaType("WHEP needs Content-Type: application/sdp")
    registry.check_capacity()
    sdp = check_offer(await read_text(request, MAX_SDP_BYTES))
    session = await registry.create(origin="whep")
    answer = await connect_owned_session(request.app, session, sdp)
    location, resources = f"/whep/{session.id}", request.app[RESOURCES]
    resources.issue(location, session.token, legacy=True)
    session.on_close(lambda s: resources.end(location))
    if session.closed:  # the connection failed already
        resources.end(location)
    return web.Response(status=201, text=answer.sdp, content_type="application/sdp",
                        headers=whep.resource_headers(cfg, location, f'"{session.id}"'))


async def whep_options(request: web.Request) -> web.Response:
    return whep.endpoint_options(request.app[CONFIG])


def _whep_session(request: web.Request) -> AvatarSession:
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    return authorize_session(request, registry, request.match_info["session_id"], cfg.api_key, origins=("whep",))


async def whep_patch(request: web.Request) -> web.Response:
    session = _whep_session(request)
    return await whep.trickle(request, whep.webrtc_viewer(session), f'"{session.id}"')


async def whep_delete(request: web.Request) -> web.Response:
    """200; also for a resource that ended (or is ending) within ``ENDED_WINDOW_S``: its connection closed first."""
    try:
        session = _whep_session(request)
    except NotFound:
        authorize_ended(request, request.app[RESOURCES].get(f"/whep/{request.match_info['session_id']}"),
                        request.app[CONFIG].api_key)
        return web.Response(status=200)
    await request.app[REGISTRY].close(session)
    return web.Response(status=200)


async def session_stats(request: web.Request) -> web.Response:
    """GET /stats/{session_id}: pipeline counters of one session (diagnostics)."""
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    session_id = request.match_info["session_id"]
    session = registry.get(session_id)
    legacy = session is not None and session.origin in LEGACY_ORIGINS
    session = authorize_session(request, registry, session_id, cfg.api_key, origins=LEGACY_ORIGINS if legacy else None)
    viewers = session.viewer_stats()
    return web.json_response({
        "session_id": session.id, "engine": session.engine_name, "size": session.size, "fps": session.fps,
        "lookahead_frames": session.lookahead_frames, "delay_frames": session.delay_frames,
        **session.pipeline_stats(),
        "viewers": viewers,
        # every WebRTC sender's last (RTP timestamp, send time): lip-sync diagnostics on the sender clock
        "senders": [{"viewer": i, **s} for i, v in enumerate(viewers) for s in v.get("senders", [])],
    })


def add_routes(app: web.Application) -> None:
    app.router.add_post("/offer", offer)
    app.router.add_post("/whep", whep_post)
    app.router.add_route("OPTIONS", "/whep", whep_options)
    app.router.add_patch("/whep/{session_id}", whep_patch)
    app.router.add_delete("/whep/{session_id}", whep_delete)
    app.router.add_get("/stats/{session_id}", session_stats)

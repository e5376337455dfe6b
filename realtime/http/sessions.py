"""The sessions API (``/v1/sessions``): create avatar sessions, join them as a viewer, end them.

    POST   /v1/sessions                    JSON or multipart -> 201 {id, token, whep_url, offer_url, agent_url, ...}
    GET    /v1/sessions/{id}               session state
    POST   /v1/sessions/{id}/whep          application/sdp offer -> 201 application/sdp answer + Location, ETag,
                                           Link (ICE servers); OPTIONS: the ICE servers before the offer
    PATCH  /v1/sessions/{id}/whep/{viewer} trickle ICE (application/trickle-ice-sdpfrag) -> 204
    DELETE /v1/sessions/{id}/whep/{viewer} end that viewer (204, also once it ended: ``realtime/http/ended.py``)
    POST   /v1/sessions/{id}/offer         JSON {sdp, type, microphone?} -> JSON answer (as /whep, for the browser page;
                                           microphone: true makes the offer's audio track speech input)
    POST   /v1/sessions/{id}/controls      JSON {name: value} -> {applied, unsupported}
    POST   /v1/sessions/{id}/keepalive     resets the idle timer
    DELETE /v1/sessions/{id}               ends the session
    GET    /v1/sessions/{id}/agent         WebSocket for agent audio + events (``realtime/transports/agent/``)
    POST   /v1/sessions/{id}/livekit       JSON {url, token, agent_identity, sample_rate?} -> 201 {viewer_id}: the
                                           session joins the agent's LiveKit room (``realtime/transports/livekit/``)
    GET    /watch?session=ID&token=TOKEN   browser page that watches a session (``web/watch.html``)

Authorisation: ``realtime/http/auth.py`` (API key to create when one is set; the session's token
or the API key on every ``/v1/sessions/{id}...`` route).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from yarl import URL

from avatarstream.engines.base import FPS, Portrait
from avatarstream.engines.registry import engine_capabilities, engine_names
from avatarstream.engines.portraits import DEMO_PORTRAITS, MAX_IMAGE_BYTES, load_portrait, portrait_from_bytes
from avatarstream.realtime.errors import BadRequest, Conflict, NotFound, TooLarge, UnsupportedMediaType, echo
from avatarstream.realtime.http import whep as whep_protocol
from avatarstream.realtime.http.auth import authorize_ended, authorize_session, require_api_key
from avatarstream.realtime.http.bodies import MAX_JSON_BYTES, parse_json, read_json, read_json_object, read_text
from avatarstream.realtime.http.keys import CONFIG, REGISTRY, RESOURCES
from avatarstream.realtime.session.session import AvatarSession, ViewerLimitError
from avatarstream.realtime.transports.base import ViewerState
from avatarstream.realtime.transports.agent.socket import connected_agent, serve_agent_socket
from avatarstream.realtime.transports.agent.protocol import ProtocolError, check_sample_rate
from avatarstream.realtime.transports.livekit.join import JoinRequest, join_room
from avatarstream.realtime.transports.webrtc.peer import MAX_SDP_BYTES, check_offer, connect_viewer

WATCH_PAGE = Path(str(files("avatarstream.web") / "watch.html"))
MAX_FIELD_CHARS = 64 * 1024  # a multipart text field


@dataclass(frozen=True)
class SessionRequest:
    """A validated ``POST /v1/sessions`` body."""

    portrait: Portrait
    engine: str
    size: int
    fps: int
    controls: dict[str, Any]


def _session(request: web.Request) -> AvatarSession:
    return authorize_session(request, request.app[REGISTRY], request.match_info["id"], request.app[CONFIG].api_key)


# ---- session lifecycle ---------------------------------------------------------------------------
async def create(request: web.Request) -> web.Response:
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    require_api_key(request, cfg.api_key)
    registry.check_capacity()  # before reading or decoding the body
    spec = await parse_session_request(request, default_engine=cfg.engine, default_size=cfg.size)
    session = await registry.create(spec.portrait, engine=spec.engine, size=spec.size)
    # controls go through set_controls (before any speech), so unsupported ones are reported
    # in the reply like live ones instead of failing the creation
    unsupported = await session.set_controls_async(spec.controls) if spec.controls else {}
    base = request.url.origin()
    ws_base = base.with_scheme("wss" if base.scheme == "https" else "ws")
    prefix = f"/v1/sessions/{session.id}"
    body = {
        "id": session.id,
        "token": session.token,
        "whep_url": str(base.join(URL(f"{prefix}/whep"))),
        "offer_url": str(base.join(URL(f"{prefix}/offer"))),
        "agent_url": str(ws_base.join(URL(f"{prefix}/agent"))),
        "watch_url": str(base.join(URL("/watch")).with_query(session=session.id, token=session.token)),
        "engine": spec.engine,
        "size": spec.size,
        "fps": spec.fps,
        "controls": spec.controls,
        "unsupported_controls": unsupported,
        "idle_timeout_s": cfg.idle_timeout,
    }
    return web.json_response(body, status=201, headers={"Location": prefix})


async def describe(request: web.Request) -> web.Response:
    session = _session(request)
    return web.json_response({
        "id": session.id,
        "engine": session.engine_name,
        "size": session.size,
        "fps": session.fps,
        "viewers": session.viewer_count,
        "queued_seconds": round(session.queued_seconds, 3),
        "agent_connected": connected_agent(session) is not None,
        "idle_timeout_s": request.app[CONFIG].idle_timeout,
    })


async def keepalive(request: web.Request) -> web.Response:
    _session(request)
    return web.json_response({"ok": True, "idle_timeout_s": request.app[CONFIG].idle_timeout})


async def delete(request: web.Request) -> web.Response:
    session = _session(request)
    await request.app[REGISTRY].close(session)  # closes every viewer (agent socket: code 4000) and the engine
    return web.Response(status=204)


async def set_controls(request: web.Request) -> web.Response:
    session = _session(request)
    controls = await read_json(request)
    if not isinstance(controls, dict) or not controls:
        raise BadRequest('body must be a non-empty JSON object, e.g. {"head_motion_scale": 0.5}')
    unsupported = await session.set_controls_async(controls)
    applied = {k: v for k, v in controls.items() if k not in unsupported}
    return web.json_response({"applied": applied, "unsupported": unsupported})


# ---- viewers ---------------------------------------------------------------------------------------
async def _answer(request: web.Request, session: AvatarSession, offer_sdp: object,
                  offer_type: object = "offer", microphone: bool = False) -> tuple[str, Any]:
    """Connect one more viewer to ``session``; returns (viewer id, answer description).

    ``microphone``: the viewer's audio track (if its offer sends one) is speech input to the session."""
    offer = check_offer(offer_sdp, offer_type)
    resources = request.app[RESOURCES]
    try:
        viewer, answer = await connect_viewer(
            session, offer, ice_servers=request.app[CONFIG].ice_servers, accept_microphone=microphone,
            encoding=request.app[CONFIG].video_encoding(),
            on_gone=lambda v: resources.end(viewer_location(session.id, v.id)))
    except ViewerLimitError as exc:
        raise Conflict(str(exc)) from None
    resources.issue(viewer_location(session.id, viewer.id), session.token)
    if viewer.state == ViewerState.CLOSED:  # its connection failed already
        resources.end(viewer_location(session.id, viewer.id))
    return viewer.id, answer


def viewer_location(session_id: str, viewer_id: str) -> str:
    return f"/v1/sessions/{session_id}/whep/{viewer_id}"


async def whep(request: web.Request) -> web.Response:
    session = _session(request)
    if request.content_type != "application/sdp":
        raise UnsupportedMediaType("WHEP needs Content-Type application/sdp")
    viewer_id, answer = await _answer(request, session, await read_text(request, MAX_SDP_BYTES))
    headers = whep_protocol.resource_headers(request.app[CONFIG], viewer_location(session.id, viewer_id), f'"{viewer_id}"')
    return web.Response(status=201, text=answer.sdp, content_type="application/sdp", headers=headers)


async def whep_endpoint_options(request: web.Request) -> web.Response:
    return whep_protocol.endpoint_options(request.app[CONFIG])


async def trickle(request: web.Request) -> web.Response:
    session = _session(request)
    viewer = whep_protocol.webrtc_viewer(session, request.match_info["viewer"])
    return await whep_protocol.trickle(request, viewer, f'"{viewer.id}"')


async def offer(request: web.Request) -> web.Response:
    session = _session(request)
    body = await read_json_object(request, '{"sdp": "<offer SDP>", "type": "offer", "microphone": false}')
    microphone = body.get("microphone", False)
    if not isinstance(microphone, bool):
        raise BadRequest(f"'microphone' must be true or false, got {echo(microphone)}")
    viewer_id, answer = await _answer(request, session, body.get("sdp"), body.get("type", "offer"), microphone)
    return web.json_response({
        "sdp": answer.sdp,
        "type": answer.type,
        "viewer_id": viewer_id,
        "location": viewer_location(session.id, viewer_id),
    })


async def end_viewer(request: web.Request) -> web.Response:
    """204; also for a viewer that ended (or is ending) within ``ENDED_WINDOW_S``: its connection or session first."""
    ended = request.app[RESOURCES].get(viewer_location(request.match_info['id'], request.match_info['viewer']))
    try:
        session = _session(request)
    except NotFound:
        authorize_ended(request, ended, request.app[CONFIG].api_key)
        return web.Response(status=204)
    viewer = session.viewer(request.match_info["viewer"])
    if viewer is None or viewer.transport != "webrtc":
        if ended is None:
            raise NotFound("no such viewer in this session")
        return web.Response(status=204)
    await viewer.close()
    return web.Response(status=204)


async def agent(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if connected_agent(session) is not None:
        raise Conflict("an agent is already connected to this session (one at a time)")
    rate = None
    if "sample_rate" in request.query:
        try:
            rate = check_sample_rate(request.query["sample_rate"])
        except ProtocolError as exc:
            raise BadRequest(str(exc)) from None
    try:
        return await serve_agent_socket(request, session, rate)
    except ViewerLimitError as exc:
        raise Conflict(str(exc)) from None


async def livekit(request: web.Request) -> web.Response:
    """Join the agent's LiveKit room as the session's avatar (``realtime/transports/livekit/``); 201 once
    it is in the room and waiting for the agent's audio."""
    session = _session(request)
    body = await read_json_object(request, '{"url": "wss://...", "token": "<JWT>", "agent_identity": "agent-1"}')
    viewer = await join_room(session, JoinRequest.parse(body))
    return web.json_response({"viewer_id": viewer.id, "transport": viewer.transport}, status=201)


async def watch_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WATCH_PAGE)


# ---- the creation body --------------------------------------------------------------------------
async def parse_session_request(request: web.Request, *, default_engine: str, default_size: int) -> SessionRequest:
    """Read a JSON or multipart ``POST /v1/sessions`` body into a validated SessionRequest."""
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    if request.content_type.startswith("multipart/"):
        fields, upload = await _read_multipart(request)
    elif request.can_read_body and (request.content_length or 0) > 0 or request.content_type == "application/json":
        body = await read_json(request, MAX_JSON_BYTES)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        fields = body

    # the cheap checks first: a bad field is refused before any image is decoded
    engine = fields.get("engine", default_engine)
    if not isinstance(engine, str) or engine not in engine_names():
        raise BadRequest(f"unknown engine {echo(engine)}; choose one of: {', '.join(engine_names())}")
    caps = engine_capabilities(engine)
    if not caps.streams:
        raise BadRequest(f"the {engine} engine renders files only; sessions need a streaming engine")
    fallback = default_size if engine == default_engine else caps.default_size
    if fallback is None and not fields.keys() & {"size", "resolution"}:
        raise BadRequest(f"'size' is required: the {engine} engine declares no default size")
    size = _int_field(fields, ("size", "resolution"), fallback or 0)  # 0 unused: the field is there
    caps.check_size(size)  # EngineError naming the sizes it renders -> 400
    fps = _int_field(fields, ("fps",), FPS)
    if fps != FPS:
        raise BadRequest(f"'fps' {fps} is not available: sessions stream at {FPS} fps (the engines' clock)")
    controls = fields.get("controls") or {}
    if not isinstance(controls, dict):
        raise BadRequest("'controls' must be a JSON object")
    kind = fields.get("kind", "auto")
    if kind not in ("auto", "human", "animal"):
        raise BadRequest(f"'kind' must be auto, human or animal, got {echo(kind)}")
    if upload is not None:
        loop = asyncio.get_running_loop()  # decoding and face search stay off the event loop
        portrait = await loop.run_in_executor(None, portrait_from_bytes, upload[1], upload[0], kind)
    else:
        image = fields.get("image", "astronaut")
        if not isinstance(image, str) or image not in DEMO_PORTRAITS:
            raise BadRequest(f"unknown image id {echo(image)}; built-in portraits: {', '.join(DEMO_PORTRAITS)} "
                             "(or upload an image file as multipart field 'image')")
        portrait = load_portrait(image, kind=kind)
    return SessionRequest(portrait=portrait, engine=engine, size=size, fps=fps, controls=controls)


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            is_file = part.filename is not None or (
                part.name == "image" and part.headers.get("Content-Type", "").startswith("image/"))
            data = bytearray()
            limit = MAX_IMAGE_BYTES if is_file else MAX_FIELD_CHARS
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > limit:
                    raise TooLarge(f"image upload exceeds {MAX_IMAGE_BYTES // 2**20} MiB" if is_file
                                   else f"multipart field {echo(part.name)} exceeds {MAX_FIELD_CHARS} bytes")
            if is_file:
                upload = (part.filename or part.name or "upload", bytes(data))
            elif part.name:
                try:
                    fields[part.name] = bytes(data).decode(part.get_charset(default="utf-8"))
                except (LookupError, UnicodeDecodeError):
                    raise BadRequest(f"multipart field {echo(part.name)} is not valid text") from None
    except (ValueError, AssertionError, KeyError) as exc:  # aiohttp's multipart parser on a broken body
        raise BadRequest(f"malformed multipart body ({type(exc).__name__})") from None
    if isinstance(fields.get("controls"), str):
        controls = parse_json(fields["controls"] or "{}", "multipart field 'controls'")
        if not isinstance(controls, dict):
            raise BadRequest("multipart field 'controls' must be a JSON object")
        fields["controls"] = controls
    return fields, upload


def _int_field(fields: dict[str, Any], names: tuple[str, ...], default: int) -> int:
    for name in names:
        if name in fields:
            value = fields[name]
            if isinstance(value, bool):
                break
            try:
                return int(value)
            except (TypeError, ValueError, OverflowError):
                raise BadRequest(f"'{name}' must be an integer, got {echo(value)}") from None
    return default


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/sessions", create)
    app.router.add_get("/v1/sessions/{id}", describe)
    app.router.add_delete("/v1/sessions/{id}", delete)
    app.router.add_post("/v1/sessions/{id}/keepalive", keepalive)
    app.router.add_post("/v1/sessions/{id}/controls", set_controls)
    app.router.add_post("/v1/sessions/{id}/whep", whep)
    app.router.add_route("OPTIONS", "/v1/sessions/{id}/whep", whep_endpoint_options)
    app.router.add_patch("/v1/sessions/{id}/whep/{viewer}", trickle)
    app.router.add_delete("/v1/sessions/{id}/whep/{viewer}", end_viewer)
    app.router.add_post("/v1/sessions/{id}/offer", offer)
    app.router.add_get("/v1/sessions/{id}/agent", agent)
    app.router.add_post("/v1/sessions/{id}/livekit", livekit)
    app.router.add_get("/watch", watch_page)  # browser viewer: /watch?session=ID&token=TOKEN

"""The sessions API (``/v1/sessions``): create avatar sessions, join them as a viewer, end them.

    POST   /v1/sessions                    JSON or multipart -> 201 {id, token, whep_url, offer_url, agent_url, ...}
    GET    /v1/sessions/{id}               session state
    POST   /v1/sessions/{id}/whep          application/sdp offer -> 201 application/sdp answer + Location
    DELETE /v1/sessions/{id}/whep/{viewer} end that viewer
    POST   /v1/sessions/{id}/offer         JSON {sdp, type} -> JSON answer (same as /whep, for the browser page)
    POST   /v1/sessions/{id}/controls      JSON {name: value} -> {applied, unsupported}
    POST   /v1/sessions/{id}/keepalive     resets the idle timer
    DELETE /v1/sessions/{id}               ends the session
    GET    /v1/sessions/{id}/agent         WebSocket for agent audio + events (``realtime/agent_socket.py``)
    GET    /watch?session=ID&token=TOKEN   browser page that watches a session (``web/watch.html``)

Every ``/v1/sessions/{id}...`` route needs ``Authorization: Bearer <token>`` (or ``?token=`` where a
header cannot be set, e.g. a browser WebSocket): no or a wrong token -> 401, the token of another
session -> 403. Creating a session needs the server's API key only if one is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection
from yarl import URL

from avatarstream.engines.base import FPS, EngineError, NoFaceError, Portrait
from avatarstream.engines.portraits import DEMO_PORTRAITS, MAX_IMAGE_BYTES, load_portrait, portrait_from_bytes
from avatarstream.realtime.peer import OfferError, check_offer, connect_viewer
from avatarstream.realtime.session_registry import SessionLimitError

log = logging.getLogger(__name__)

SIZES = (256, 512)
API_KEY_ENV = "AVATARSTREAM_API_KEY"
WATCH_PAGE = Path(str(files("avatarstream.web") / "watch.html"))


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
               413: "too_large", 415: "unsupported_media_type", 422: "no_face", 503: "session_limit"}


def json_error(status: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    """An HTTP error with the server's JSON error body ``{error: code, message}``."""
    body = {"error": ERROR_CODES.get(status.status_code, "error"), "message": message}
    return status(text=json.dumps(body), content_type="application/json", headers=headers or None)


@dataclass
class SessionLinks:
    """Per-session state of this API: viewers joined through it and the agent socket."""

    viewers: dict[str, RTCPeerConnection] = field(default_factory=dict)  # joined through /v1/sessions/{id}/whep|offer
    agent: Any = None  # the open aiohttp WebSocketResponse of the agent, if any


@dataclass(frozen=True)
class SessionRequest:
    """A validated ``POST /v1/sessions`` body."""

    portrait: Portrait
    engine: str
    size: int
    fps: int
    controls: dict[str, Any]


class SessionsApi:
    def __init__(self, registry: Any, api_key: str | None = None) -> None:
        self.registry = registry
        self.api_key = api_key
        self.links: dict[str, SessionLinks] = {}

    # ---- auth ------------------------------------------------------------------------------
    @staticmethod
    def request_token(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer " and header[7:].strip():
            return header[7:].strip()
        return request.query.get("token") or None

    def authorize(self, request: web.Request) -> Any:
        """The session named in the URL, if the request carries its token; else 401/403/404."""
        token = self.request_token(request)
        challenge = {"WWW-Authenticate": 'Bearer realm="avatarstream"'}
        if not token:
            raise json_error(web.HTTPUnauthorized, "missing bearer token: send 'Authorization: Bearer <session token>'", **challenge)
        session = self.registry.get(request.match_info["id"])
        if session is not None and hmac.compare_digest(token, session.token):
            session.last_activity = time.monotonic()
            return session
        if any(hmac.compare_digest(token, s.token) for s in self.registry if s is not session):
            raise json_error(web.HTTPForbidden, "this token belongs to another session")
        if session is None:
            raise json_error(web.HTTPNotFound, f"no session {request.match_info['id']!r} (ended or timed out)")
        raise json_error(web.HTTPUnauthorized, "wrong bearer token for this session", **challenge)

    def links_of(self, session: Any) -> SessionLinks:
        return self.links.setdefault(session.id, SessionLinks())

    # ---- session lifecycle -----------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        if self.api_key:
            token = self.request_token(request)
            if not token or not hmac.compare_digest(token, self.api_key):
                raise json_error(web.HTTPUnauthorized, "creating sessions needs the server API key as bearer token",
                                 **{"WWW-Authenticate": 'Bearer realm="avatarstream"'})
        spec = await parse_session_request(request)
        try:
            session = await self.registry.create(spec.portrait, engine=spec.engine, size=spec.size)
        except SessionLimitError as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc), **{"Retry-After": str(exc.retry_after)}) from None
        except NoFaceError as exc:
            raise json_error(web.HTTPUnprocessableEntity, str(exc)) from None
        except EngineError as exc:  # unknown engine, missing weights ...
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        self.links[session.id] = SessionLinks()
        session.on_close(lambda s: self._forget(s.id))
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
            "idle_timeout_s": self.registry.config.idle_timeout,
        }
        return web.json_response(body, status=201, headers={"Location": prefix})

    async def describe(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        links = self.links_of(session)
        return web.json_response({
            "id": session.id,
            "engine": session.engine_name,
            "size": session.size,
            "fps": session.fps,
            "viewers": session.viewer_count,
            "queued_seconds": round(session.queued_seconds, 3),
            "agent_connected": links.agent is not None,
            "idle_timeout_s": self.registry.config.idle_timeout,
        })

    async def keepalive(self, request: web.Request) -> web.Response:
        self.authorize(request)
        return web.json_response({"ok": True, "idle_timeout_s": self.registry.config.idle_timeout})

    async def delete(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        await self.close_session(session)
        return web.Response(status=204)

    async def close_session(self, session: Any) -> None:
        links = self.links.pop(session.id, None)
        if links is not None and links.agent is not None:
            await links.agent.close(code=4000, message=b"session ended")
        await self.registry.close(session.id)  # closes the viewers' connections and the engine stream

    def _forget(self, session_id: str) -> None:
        """The registry ended a session (idle timeout, server shutdown): drop our links to it."""
        links = self.links.pop(session_id, None)
        if links is not None and links.agent is not None:
            asyncio.ensure_future(links.agent.close(code=4000, message=b"session ended"))

    async def set_controls(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        controls = await _json_body(request)
        if not isinstance(controls, dict) or not controls:
            raise json_error(web.HTTPBadRequest, 'body must be a non-empty JSON object, e.g. {"head_motion_scale": 0.5}')
        unsupported = await session.set_controls_async(controls)
        applied = {k: v for k, v in controls.items() if k not in unsupported}
        return web.json_response({"applied": applied, "unsupported": unsupported})

    # ---- viewers -----------------------------------------------------------------------------
    async def _answer(self, request: web.Request, session: Any, offer_sdp: object, offer_type: object = "offer") -> tuple[str, Any]:
        """Connect one more viewer to ``session``; returns (viewer id, answer description)."""
        from avatarstream.realtime.http_app import CONFIG_KEY

        cfg = request.app.get(CONFIG_KEY)
        links = self.links_of(session)
        viewer_id = secrets.token_hex(6)

        def gone(pc: Any) -> None:
            links.viewers.pop(viewer_id, None)

        try:
            pc, answer = await connect_viewer(session, check_offer(offer_sdp, offer_type),
                                              ice_servers=getattr(cfg, "ice_servers", None),
                                              accept_microphone=False, on_gone=gone)
        except OfferError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        links.viewers[viewer_id] = pc
        return viewer_id, answer

    async def whep(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        if request.content_type != "application/sdp":
            raise json_error(web.HTTPUnsupportedMediaType, f"WHEP needs Content-Type application/sdp, got {request.content_type!r}")
        viewer_id, answer = await self._answer(request, session, await request.text())
        location = f"/v1/sessions/{session.id}/whep/{viewer_id}"
        return web.Response(status=201, text=answer.sdp, content_type="application/sdp", headers={"Location": location})

    async def offer(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise json_error(web.HTTPBadRequest, 'body must be JSON {"sdp": "<offer SDP>", "type": "offer"}')
        viewer_id, answer = await self._answer(request, session, body.get("sdp"), body.get("type", "offer"))
        return web.json_response({
            "sdp": answer.sdp,
            "type": answer.type,
            "viewer_id": viewer_id,
            "location": f"/v1/sessions/{session.id}/whep/{viewer_id}",
        })

    async def end_viewer(self, request: web.Request) -> web.Response:
        session = self.authorize(request)
        pc = self.links_of(session).viewers.pop(request.match_info["viewer"], None)
        if pc is None:
            raise json_error(web.HTTPNotFound, f"no viewer {request.match_info['viewer']!r} in this session")
        session.remove_viewer(pc)
        await pc.close()
        return web.Response(status=204)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "body is not valid JSON") from None


async def parse_session_request(request: web.Request) -> SessionRequest:
    """Read a JSON or multipart ``POST /v1/sessions`` body into a validated SessionRequest."""
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.filename is not None or part.name == "image" and part.headers.get("Content-Type", "").startswith("image/"):
                data = bytearray()
                while chunk := await part.read_chunk():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise json_error(web.HTTPRequestEntityTooLarge, f"image upload exceeds {MAX_IMAGE_BYTES // 2**20} MiB")
                upload = (part.filename or part.name or "upload", bytes(data))
            elif part.name:
                fields[part.name] = await part.text()
        if isinstance(fields.get("controls"), str):
            try:
                fields["controls"] = json.loads(fields["controls"] or "{}")
            except json.JSONDecodeError:
                raise json_error(web.HTTPBadRequest, "multipart field 'controls' must be a JSON object") from None
    elif request.can_read_body:
        fields = await _json_body(request)
        if not isinstance(fields, dict):
            raise json_error(web.HTTPBadRequest, "body must be a JSON object")

    kind = fields.get("kind", "auto")
    try:
        if kind not in ("auto", "human", "animal"):
            raise EngineError(f"'kind' must be auto, human or animal, got {kind!r}")
        if upload is not None:
            portrait = portrait_from_bytes(upload[1], upload[0], kind=kind)
        else:
            image = fields.get("image", "astronaut")
            if not isinstance(image, str) or image not in DEMO_PORTRAITS:
                raise EngineError(f"unknown image id {image!r}; built-in portraits: {', '.join(DEMO_PORTRAITS)} "
                                  "(or upload an image file as multipart field 'image')")
            portrait = load_portrait(image, kind=kind)
    except EngineError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None

    engine = fields.get("engine", "lite")
    size = _int_field(fields, ("size", "resolution"), 512)
    fps = _int_field(fields, ("fps",), 25)
    controls = fields.get("controls") or {}
    if not isinstance(engine, str):
        raise json_error(web.HTTPBadRequest, "'engine' must be a string such as \"lite\"")
    if size not in SIZES:
        raise json_error(web.HTTPBadRequest, f"'size' must be one of {', '.join(map(str, SIZES))}, got {size}")
    if fps != FPS:
        raise json_error(web.HTTPBadRequest, f"'fps' {fps} is not available: sessions stream at {FPS} fps (the engines' clock)")
    if not isinstance(controls, dict):
        raise json_error(web.HTTPBadRequest, "'controls' must be a JSON object")
    return SessionRequest(portrait=portrait, engine=engine, size=size, fps=fps, controls=controls)


def _int_field(fields: dict, names: tuple[str, ...], default: int) -> int:
    for name in names:
        if name in fields:
            value = fields[name]
            if isinstance(value, bool):
                break
            try:
                return int(value)
            except (TypeError, ValueError):
                raise json_error(web.HTTPBadRequest, f"'{name}' must be an integer, got {value!r}") from None
    return default


SESSIONS_API = web.AppKey("sessions_api", SessionsApi)


def register(app: web.Application, registry: Any, *, api_key: str | None = None) -> SessionsApi:
    """Add the ``/v1/sessions`` routes and the agent WebSocket to ``app``.

    ``api_key`` (or the environment variable ``AVATARSTREAM_API_KEY``) protects ``POST /v1/sessions``.
    """
    from avatarstream.realtime import agent_socket

    api = SessionsApi(registry, api_key=api_key or os.environ.get(API_KEY_ENV) or None)
    app[SESSIONS_API] = api
    app.router.add_post("/v1/sessions", api.create)
    app.router.add_get("/v1/sessions/{id}", api.describe)
    app.router.add_delete("/v1/sessions/{id}", api.delete)
    app.router.add_post("/v1/sessions/{id}/keepalive", api.keepalive)
    app.router.add_post("/v1/sessions/{id}/controls", api.set_controls)
    app.router.add_post("/v1/sessions/{id}/whep", api.whep)
    app.router.add_delete("/v1/sessions/{id}/whep/{viewer}", api.end_viewer)
    app.router.add_post("/v1/sessions/{id}/offer", api.offer)

    async def agent(request: web.Request) -> web.StreamResponse:
        return await agent_socket.handle(api, request)

    app.router.add_get("/v1/sessions/{id}/agent", agent)

    async def watch_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WATCH_PAGE)

    app.router.add_get("/watch", watch_page)  # browser viewer: /watch?session=ID&token=TOKEN
    return api

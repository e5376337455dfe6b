"""The aiohttp application: WebRTC signalling (``/offer``, WHEP ``/whep``), the browser page,
health, and the agent sessions API (registered by ``realtime.sessions_api``).

Error mapping (the server keeps serving after each):
  malformed SDP / bad JSON / unreadable image -> 400, image without a face -> 422,
  session limit -> 503 + Retry-After, unknown session -> 404.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable

from aiohttp import web

from avatarstream.engines.base import AvatarEngine, EngineError, NoFaceError, Portrait
from avatarstream.realtime.peer import OfferError, check_offer, connect_viewer
from avatarstream.engines.portraits import UnreadableImageError, load_portrait, portrait_from_bytes
from avatarstream.realtime.session import SessionOptions
from avatarstream.realtime.session_registry import RegistryConfig, SessionLimitError, SessionRegistry

log = logging.getLogger(__name__)

WEB_DIR = Path(str(files("avatarstream.web")))
REGISTRY_KEY = web.AppKey("registry", SessionRegistry)
CONFIG_KEY = web.AppKey("config", object)


@dataclass
class ServerConfig:
    image: str | None = None  # path, or demo name "cat"/"human"; None = demo human portrait
    engine: str = "lite"
    weights: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    size: int = 512
    idle_timeout: float = 300.0
    margin_frames: int = 2
    ice_servers: list[str] = field(default_factory=list)
    portrait: Portrait | None = None  # already-loaded portrait (overrides ``image``)
    engine_loader: Callable[..., AvatarEngine] | None = None  # default: engines.registry.load_engine


def error_response(exc: Exception) -> web.Response:
    """Map a user-facing error to an HTTP status with a JSON body {error, message}."""
    if isinstance(exc, SessionLimitError):
        return web.json_response({"error": "session_limit", "message": str(exc)}, status=503,
                                 headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, NoFaceError):
        return web.json_response({"error": "no_face", "message": str(exc)}, status=422)
    if isinstance(exc, UnreadableImageError):
        return web.json_response({"error": "unreadable_image", "message": str(exc)}, status=400)
    if isinstance(exc, OfferError):
        return web.json_response({"error": "bad_sdp", "message": str(exc)}, status=400)
    if isinstance(exc, EngineError):
        return web.json_response({"error": "bad_request", "message": str(exc)}, status=400)
    raise exc


async def _offer(request: web.Request) -> web.Response:
    """POST /offer  {sdp, type:"offer", image?: base64} -> {sdp, type:"answer", session_id}."""
    registry = request.app[REGISTRY_KEY]
    try:
        body = await request.json()
    except Exception:
        return web.json_response({"error": "bad_request", "message": "body must be JSON {\"sdp\": ..., \"type\": \"offer\"}"},
                                 status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "bad_request", "message": "body must be a JSON object"}, status=400)
    try:
        offer = check_offer(body.get("sdp"), body.get("type", "offer"))
        portrait = None
        if body.get("image"):
            try:
                data = base64.b64decode(body["image"], validate=True)
            except (binascii.Error, TypeError) as exc:
                raise UnreadableImageError(f"'image' must be base64 encoded image bytes ({exc})") from exc
            portrait = portrait_from_bytes(data, name="upload")
        session = await registry.create(portrait)
        _pc, answer = await connect_owned_session(request.app, session, offer)
    except EngineError as exc:
        return error_response(exc)
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id})


async def connect_owned_session(app: web.Application, session, offer):
    """Connect a viewer that owns ``session``: the session ends when the connection does."""
    registry = app[REGISTRY_KEY]
    cfg: ServerConfig = app[CONFIG_KEY]
    try:
        return await connect_viewer(session, offer, ice_servers=cfg.ice_servers,
                                    on_gone=lambda pc: registry.close(session))
    except BaseException:
        await registry.close(session)
        raise


async def _whep_post(request: web.Request) -> web.Response:
    """WHEP: POST /whep (application/sdp offer) -> 201, Location, answer SDP."""
    registry = request.app[REGISTRY_KEY]
    if request.content_type != "application/sdp":
        return web.json_response({"error": "bad_request", "message": "WHEP needs Content-Type: application/sdp"},
                                 status=415)
    try:
        offer = check_offer(await request.text())
        session = await registry.create()
        _pc, answer = await connect_owned_session(request.app, session, offer)
    except EngineError as exc:
        return error_response(exc)
    return web.Response(status=201, text=answer.sdp, content_type="application/sdp",
                        headers={"Location": f"/whep/{session.id}", "ETag": f'"{session.id}"'})


async def _whep_delete(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    session = registry.get(request.match_info["session_id"])
    if session is None:
        return web.json_response({"error": "not_found", "message": "no such WHEP session"}, status=404)
    await registry.close(session)
    return web.Response(status=200)


async def _health(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    cfg: ServerConfig = request.app[CONFIG_KEY]
    return web.json_response({"status": "ok", "engine": cfg.engine, "sessions": len(registry),
                              "max_sessions": cfg.max_sessions})


async def _session_stats(request: web.Request) -> web.Response:
    """GET /stats/{session_id}: pipeline counters of one session (diagnostics)."""
    session = request.app[REGISTRY_KEY].get(request.match_info["session_id"])
    if session is None:
        return web.json_response({"error": "not_found", "message": "no such session"}, status=404)
    st = session.stats
    return web.json_response({
        "session_id": session.id, "engine": session.engine_name, "size": session.size, "fps": session.fps,
        "lookahead_frames": session.lookahead_frames, "delay_frames": session.delay_frames,
        "ticks": st.ticks, "frames_rendered": st.frames_rendered, "frames_missing": st.frames_missing,
        "late_ticks": st.late_ticks, "mic_dropped_samples": st.mic_dropped_samples,
        "engine_dropped_frames": st.engine_dropped_frames,
        "engine_ms_per_tick": st.engine_ms / max(1, st.ticks),
        "viewers": session.viewer_stats(), "senders": session.sender_clock_samples(),
    })


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def create_app(config: ServerConfig) -> web.Application:
    """Build the application; the portrait is loaded (and checked readable) here."""
    portrait = config.portrait or load_portrait(config.image)
    registry = SessionRegistry(
        RegistryConfig(engine=config.engine, weights=config.weights, max_sessions=config.max_sessions,
                       idle_timeout=config.idle_timeout,
                       options=SessionOptions(size=config.size, margin_frames=config.margin_frames)),
        portrait, engine_loader=config.engine_loader)
    app = web.Application(client_max_size=32 * 2**20)
    app[CONFIG_KEY] = config
    app[REGISTRY_KEY] = registry
    app.router.add_post("/offer", _offer)
    app.router.add_post("/whep", _whep_post)
    app.router.add_delete("/whep/{session_id}", _whep_delete)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats/{session_id}", _session_stats)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", WEB_DIR, show_index=False)

    from avatarstream.realtime import sessions_api

    sessions_api.register(app, registry)

    async def _startup(app: web.Application) -> None:
        await registry.warm_up()  # load the engine and prepare the portrait before the first call
        registry.start_reaper()

    async def _shutdown(app: web.Application) -> None:
        await registry.stop()

    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    return app

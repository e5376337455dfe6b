"""The aiohttp application: the browser page, health, the signalling routes and the sessions API.

Every error leaves through one mapping (``realtime/http/errors.py``); the access log shows paths
without query strings, so ``?token=`` never reaches a log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from avatarstream.engines.portraits import load_portrait
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http import metrics, page, sessions, signalling
from avatarstream.realtime.http.cors import cors_middleware
from avatarstream.realtime.http.ended import IssuedResources
from avatarstream.realtime.http.errors import error_middleware
from avatarstream.realtime.http.keys import CONFIG, REGISTRY, RESOURCES
from avatarstream.realtime.session.calibration import CalibrationWork
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.transports.webrtc.media_work import session_media_work

log = logging.getLogger(__name__)

WEB_DIR = Path(str(files("avatarstream.web")))
MAX_BODY_BYTES = 32 * 2**20  # aiohttp refuses larger bodies with 413


class PathOnlyAccessLogger(AbstractAccessLogger):
    """``METHOD /path STATUS bytes time``: the query string (which may carry a token) is left out."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %s %.1f ms", request.method, request.path, response.status,
                         response.body_length, time * 1000)


async def health(request: web.Request) -> web.Response:
    registry, cfg = request.app[REGISTRY], request.app[CONFIG]
    return web.json_response({"status": "ok", "engine": cfg.engine, "sessions": len(registry),
                              "active_sessions": registry.active_count,
                              "max_sessions": cfg.max_sessions or None, "draining": registry.draining,
                              # the figures admission uses (active sessions, their cost, the capacity), in
                              # words ("summary") and numbers, for a user, a front or a cluster placing sessions
                              "capacity": registry.load.snapshot()})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def _media_work(config: ServerConfig) -> Callable[[], CalibrationWork]:
    """What a watched session's media costs per frame beyond its engine, done for real at the server's video
    settings (video encode, Opus encode, RTP + SRTP + send; once per session with shared encoding), for
    admission's start-up calibration."""
    encoding = config.video_encoding()
    return lambda: session_media_work(encoding)


def create_app(config: ServerConfig) -> web.Application:
    """Build the application; the portrait is loaded (and checked readable) here."""
    portrait = config.portrait or load_portrait(config.image)
    registry = SessionRegistry(config, portrait)
    # outermost the metrics' count (every response, with its error code), then CORS (its headers on every
    # response to an allowed origin, errors included), then the one error mapping
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[metrics.metrics_middleware, cors_middleware, error_middleware],
                          handler_args={"keepalive_timeout": config.header_timeout})  # however the app is run
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[RESOURCES] = IssuedResources()  # WHEP resources handed out: their DELETE stays idempotent
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_static("/static/", WEB_DIR, show_index=False)
    signalling.add_routes(app)
    sessions.add_routes(app)
    page.add_routes(app)  # the browser page's discovery, portrait and typed-speech routes
    metrics.add_routes(app)  # GET /metrics (Prometheus)

    async def _startup(app: web.Application) -> None:
        # load the engine and prepare the portrait before the first call; admission's calibration
        # runs each frame's media as a watched session does (the transport's share of a session's cost)
        await registry.warm_up(_media_work(config))
        registry.start_reaper()
        registry.start_load_monitor()

    async def _shutdown(app: web.Application) -> None:
        await registry.stop()

    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    return app

"""Cross-origin policy: browsers on other origins may call the API only if listed.

``ServerConfig.cors_origins`` (``avatar serve --cors-origin URL``, repeatable; ``*`` for any) lists
the origins allowed besides the server's own. A request carrying an ``Origin`` header that is
neither the server's own nor listed is refused with 403 when it could change state (any method
but GET/HEAD, and WebSocket upgrades, which browsers do not guard with CORS); a listed origin gets
``Access-Control-Allow-Origin`` and preflight answers. Clients that send no ``Origin`` (servers,
SDKs, curl) are not affected.
"""

from __future__ import annotations

from aiohttp import web

from avatarstream.realtime.errors import Forbidden
from avatarstream.realtime.http.errors import Handler
from avatarstream.realtime.http.keys import CONFIG

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = 600


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[CONFIG].cors_origins
    return origin == _own_origin(request) or "*" in allowed or origin in allowed


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is None:
        return await handler(request)
    allowed = origin_allowed(request, origin)
    is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method == "OPTIONS":
        if not allowed:
            raise Forbidden("cross-origin requests from this origin are not allowed (see --cors-origin)")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Expose-Headers": "Location", "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S)})
    if not allowed and (request.method not in ("GET", "HEAD") or is_upgrade):
        raise Forbidden("cross-origin requests from this origin are not allowed (see --cors-origin)")
    response = await handler(request)
    if allowed and origin != _own_origin(request) and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Location"
        response.headers["Vary"] = "Origin"
    return response

"""Cross-origin policy: browsers on other origins may call the API only if listed.

``ServerConfig.cors_origins`` (``avatar serve --cors-origin URL``, repeatable; ``*`` for any) lists
the origins allowed besides the server's own. A request carrying an ``Origin`` header that is
neither the server's own nor listed is refused with 403 when it could change state (any method
but GET/HEAD, and WebSocket upgrades, which browsers do not guard with CORS). Clients that send no
``Origin`` (servers, SDKs, curl) are not affected.

A listed origin gets its headers on *every* response, errors included: this middleware sits
outside the error mapping (``errors.py``), so a 401, 404 or 503 reaches the page with its JSON
body and the headers it needs (``EXPOSE_HEADERS``: ``Retry-After``, the WHEP ``Location``,
``ETag`` and ``Link``). A preflight is answered with the methods the requested resource accepts
(the WHEP resource: ``PATCH`` for trickle ICE, ``DELETE``); a resource with its own ``OPTIONS``
handler (the WHEP endpoints: ICE servers as ``Link``) answers it, with the preflight headers added.
"""

from __future__ import annotations

from aiohttp import web

from avatarstream.realtime.errors import Forbidden
from avatarstream.realtime.http.errors import Handler, response_for
from avatarstream.realtime.http.keys import CONFIG

ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
EXPOSE_HEADERS = "Location, Link, ETag, Retry-After, Accept-Patch, Accept-Post, WWW-Authenticate"
PREFLIGHT_MAX_AGE_S = 600
REFUSED = "cross-origin requests from this origin are not allowed (see --cors-origin)"


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[CONFIG].cors_origins
    return origin == _own_origin(request) or "*" in allowed or origin in allowed


def resource_methods(request: web.Request) -> list[str]:
    """The methods the requested path's resource accepts (empty: no such path)."""
    info = request.match_info
    exc = info.http_exception
    if isinstance(exc, web.HTTPMethodNotAllowed):
        methods = set(exc.allowed_methods)
    elif exc is not None or info.route.resource is None:
        return []
    else:
        methods = {route.method for route in info.route.resource}
    return sorted((methods - {"*"}) | {"OPTIONS"})


def _add_cors(target: web.StreamResponse | web.HTTPException, origin: str) -> None:
    target.headers["Access-Control-Allow-Origin"] = origin
    target.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    target.headers.add("Vary", "Origin")


def _refused() -> web.Response:
    response = response_for(Forbidden(REFUSED))
    assert response is not None
    return response


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is None:
        return await handler(request)
    is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if not origin_allowed(request, origin):
        if request.method not in ("GET", "HEAD") or is_upgrade:
            return _refused()
        return await handler(request)
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    methods = resource_methods(request) if preflight else []
    try:
        if preflight and "OPTIONS" not in {r.method for r in _routes(request)}:
            response: web.StreamResponse = (
                web.Response(status=204, headers={"Allow": ", ".join(methods)}) if methods else await handler(request))
        else:
            response = await handler(request)
    except web.HTTPException as exc:  # a redirect (the error mapping turns every 4xx/5xx into a response)
        if origin != _own_origin(request):
            _add_cors(exc, origin)
        raise
    if preflight and response.status < 300:
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
    if origin != _own_origin(request) and not response.prepared:
        _add_cors(response, origin)
    return response


def _routes(request: web.Request) -> list[web.AbstractRoute]:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return []
    return list(info.route.resource)

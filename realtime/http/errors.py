"""One mapping from errors to HTTP responses, for every route.

Handlers raise ``realtime.errors.ServerError`` subclasses (or let an engine's ``EngineError``
through); the middleware answers ``{"error": code, "message": ...}`` with the error's status:

    ServerError subclasses      their own status and code (400 bad_request, 400 bad_sdp, 401, 403, 404,
                                409, 413, 415, 503 session_limit + Retry-After)
    NoFaceError                 422 no_face
    UnreadableImageError        400 unreadable_image (ImageTooLargeError: 413 too_large)
    any other EngineError       400 bad_request
    aiohttp's own 4xx/5xx       their status (404 not_found for an unknown route, 405 with Allow ...)
    anything else               500 internal_error (logged with its traceback)

Every error is a response here, not an exception: the CORS middleware outside it (``cors.py``)
adds its headers to errors too, and the metrics middleware counts them by code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from avatarstream.engines.base import EngineError, NoFaceError
from avatarstream.engines.portraits import ImageTooLargeError, UnreadableImageError
from avatarstream.realtime.errors import ServerError

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500  # an error message never grows with the input
ERROR_CODE = web.ResponseKey("error_code", str)  # the code of an error response (realtime/http/metrics.py counts it)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    response = web.Response(status=status, text=json.dumps({"error": code, "message": message}),
                            content_type="application/json", headers=headers)
    response[ERROR_CODE] = code  # for the metrics middleware (errors by code)
    return response


def response_for(exc: Exception) -> web.Response | None:
    """The JSON error response for a user-facing error, or None if ``exc`` is not one."""
    if isinstance(exc, ServerError):
        return error_response(exc.status, exc.code, str(exc), exc.headers)
    if isinstance(exc, NoFaceError):
        return error_response(422, "no_face", str(exc))
    if isinstance(exc, ImageTooLargeError):
        return error_response(413, "too_large", str(exc))
    if isinstance(exc, UnreadableImageError):
        return error_response(400, "unreadable_image", str(exc))
    if isinstance(exc, EngineError):
        return error_response(400, "bad_request", str(exc))
    return None


_AIOHTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                  415: "unsupported_media_type", 500: "internal_error"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect
        # aiohttp's own errors (unknown route, body too large, bad method) in the same JSON shape
        return error_response(exc.status, _AIOHTTP_CODES.get(exc.status, "error"), exc.reason,
                              {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")})
    except (ServerError, EngineError) as exc:
        resp = response_for(exc)
        assert resp is not None
        return resp
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")

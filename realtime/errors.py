"""The server's error vocabulary: one class per problem, each with its HTTP status and stable code.

Server errors are not engine errors: ``engines.base.EngineError`` (bad image, missing weights, no
face) belongs to the engines; the HTTP layer (``realtime/http/errors.py``) maps both kinds to the
same JSON body ``{"error": code, "message": ...}``, so one problem gets one code on every route.
Messages are short and never echo more than ``MAX_ECHO`` characters of the input.
"""

from __future__ import annotations

MAX_ECHO = 80  # characters of user input an error message may quote


def echo(value: object) -> str:
    """``repr(value)`` cut to ``MAX_ECHO`` characters, for quoting user input in an error message."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


class ServerError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``code`` the machine-readable name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class BadRequest(ServerError):
    """Malformed input (JSON, fields, parameters)."""


class BadOffer(ServerError):
    """The SDP offer is malformed or unusable."""

    code = "bad_sdp"


class Unauthorized(ServerError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="avatarstream"'})


class Forbidden(ServerError):
    status = 403
    code = "forbidden"


class NotFound(ServerError):
    status = 404
    code = "not_found"


class Conflict(ServerError):
    status = 409
    code = "conflict"


class PreconditionFailed(ServerError):
    """An ``If-Match`` that does not name the resource's current ETag (WHEP's ICE session)."""

    status = 412
    code = "precondition_failed"


class NotSupported(ServerError):
    """A known request this server does not implement (WHEP: an ICE restart)."""

    status = 501
    code = "not_implemented"


class TooLarge(ServerError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(ServerError):
    status = 415
    code = "unsupported_media_type"


class SessionLimitError(ServerError):
    """All session slots are taken (or the machine is at capacity); retry later."""

    status = 503
    code = "session_limit"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ProtocolError(ServerError):
    """A message on the agent WebSocket is malformed; ``code`` names the problem (``bad_json`` ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class SessionLost(ServerError):
    """(cluster front) The session's worker died or restarted: the session is gone for good."""

    status = 410
    code = "session_lost"


class WorkerUnavailable(ServerError):
    """(cluster front) The session's worker did not answer; within a second the front knows whether it died."""

    status = 503
    code = "worker_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})

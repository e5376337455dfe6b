"""The front's own refusals, in the server's error vocabulary (``realtime/errors.py``)."""

from __future__ import annotations

from avatarstream.realtime.errors import ServerError


class SessionLost(ServerError):
    """The session's worker died or restarted: the session is gone for good (create a new one)."""

    status = 410
    code = "session_lost"


class WorkerUnavailable(ServerError):
    """The session's worker did not answer; the front will know within a second whether it died."""

    status = 503
    code = "worker_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})

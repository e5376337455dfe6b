"""One authorisation model for every route that creates, reads or ends a session.

* Creating a session (``POST /v1/sessions``, ``POST /offer``, ``POST /whep``) needs the server's
  API key as ``Authorization: Bearer <key>`` when one is configured.
* A session's routes need that session's token (returned at creation) or the API key: no token
  or a wrong one -> 401, the token of another session -> 403, an unknown session -> 404.
* ``?token=`` is accepted where a header cannot be set (a browser WebSocket, the watch page);
  the access log never shows it (``realtime/http/app.py`` logs paths without query strings).

Tokens are compared as bytes in constant time; a token that is not printable ASCII is refused
with 401 before any comparison.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from avatarstream.realtime.errors import Forbidden, NotFound, Unauthorized
from avatarstream.realtime.http.ended import IssuedResource
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.session.session import AvatarSession

MAX_TOKEN_CHARS = 256


def request_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    token = token or request.query.get("token", "")
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise Unauthorized("malformed bearer token")
    return token


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def require_api_key(request: web.Request, api_key: str | None) -> None:
    """Raise 401 unless the request carries the server's API key (no key configured: open)."""
    if not api_key:
        return
    token = request_token(request)
    if token is None or not _same(token, api_key):
        raise Unauthorized("creating sessions needs the server API key as bearer token "
                           "('Authorization: Bearer <key>')")


def authorize_session(request: web.Request, registry: SessionRegistry, session_id: str,
                      api_key: str | None, *, origins: tuple[str, ...] | None = None) -> AvatarSession:
    """The session ``session_id`` if the request carries its token (or the API key); else 401/403/404.

    ``origins`` marks a legacy route (WHEP's DELETE, /stats): it sees only sessions created through
    those routes ("offer", "whep"; any other is reported as not found), and on a server without an
    API key it needs no token, as creating such a session needed none: the session's 64-bit random
    id in the resource URL is then the handle.
    """
    token = request_token(request)
    session = registry.get(session_id)
    if session is not None and origins is not None and session.origin not in origins:
        session = None
    if token is None:
        if origins is not None and not api_key:
            if session is None:
                raise NotFound("no such session (ended or timed out)")
            return session
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <session token>'")
    if session is not None and (_same(token, session.token) or (api_key and _same(token, api_key))):
        session.touch()
        return session
    if any(_same(token, s.token) for s in registry if s is not session):
        raise Forbidden("this token belongs to another session")
    if session is None:
        raise NotFound("no such session (ended or timed out)")
    raise Unauthorized("wrong bearer token for this session")


def authorize_ended(request: web.Request, ended: IssuedResource | None, api_key: str | None) -> IssuedResource:
    """A resource no longer found but handed out (``realtime/http/ended.py``: ended, or ending) if the
    request could have ended it while it lived (its session's token or the API key; a ``legacy`` one
    without a key needs none); else 401, or 404 when there is no record of it."""
    if ended is None:
        raise NotFound("no such session or viewer (never created, or ended long ago)")
    token = request_token(request)
    if token is None:
        if ended.legacy and not api_key:
            return ended
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <session token>'")
    if _same(token, ended.token) or (api_key and _same(token, api_key)):
        return ended
    raise Unauthorized("wrong bearer token for this resource")

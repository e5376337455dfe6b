"""``POST /v1/sessions/{id}/livekit``: what the agent sends to make a session join its room, checked at the edge.

Body: ``{"url": "wss://<project>.livekit.cloud", "token": "<JWT>", "agent_identity": "<the agent's
identity>", "sample_rate": 24000}``. The token is the avatar participant's, minted by the agent
(``avatarstream.integrations.livekit.token``): the server needs no LiveKit credentials.
``viewer.py`` (LiveKit's SDK) is imported on the first join, so a server without the ``livekit``
extra starts as before and answers this route with 501 and the install line.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from avatarstream.realtime.errors import BadRequest, NotSupported, echo
from avatarstream.realtime.transports.agent.protocol import ACCEPTED_RATES
from avatarstream.realtime.transports.base import Viewer

VIEWER_MODULE = "avatarstream.realtime.transports.livekit.viewer"
INSTALL_HINT = "pip install 'avatarstream[livekit]'"
MAX_TOKEN_CHARS = 8192
MAX_IDENTITY_CHARS = 256
DEFAULT_SAMPLE_RATE = 24_000
JOIN_TIMEOUT_S = 30.0  # connecting to the room and the agent's arrival in it, together


@dataclass(frozen=True)
class JoinRequest:
    url: str  # the LiveKit server (ws, wss, http or https)
    token: str  # the avatar participant's token
    agent_identity: str  # whose audio (``lk.audio_stream``) and ``lk.clear_buffer`` calls to accept
    sample_rate: int = DEFAULT_SAMPLE_RATE  # the published audio's rate (the agent's audio rate)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> "JoinRequest":
        """A request from a JSON object; ``BadRequest`` naming the field that is wrong."""
        url = body.get("url")
        if not isinstance(url, str) or URL(url).scheme not in ("ws", "wss", "http", "https") or not URL(url).host:
            raise BadRequest(f"'url' must be the LiveKit server's ws:// or wss:// URL, got {echo(url)}")
        token = body.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise BadRequest("'token' must be the avatar participant's LiveKit token (a JWT)")
        agent = body.get("agent_identity")
        if not isinstance(agent, str) or not agent or len(agent) > MAX_IDENTITY_CHARS:
            raise BadRequest(f"'agent_identity' must be the agent participant's identity, got {echo(agent)}")
        rate = body.get("sample_rate", DEFAULT_SAMPLE_RATE)
        if isinstance(rate, bool) or rate not in ACCEPTED_RATES:
            raise BadRequest(f"'sample_rate' must be one of {', '.join(map(str, ACCEPTED_RATES))}, got {echo(rate)}")
        unknown = sorted(set(body) - {"url", "token", "agent_identity", "sample_rate"})
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}")
        return cls(url, token, agent, int(rate))

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "token": self.token, "agent_identity": self.agent_identity,
                "sample_rate": self.sample_rate}


def viewer_module() -> Any:
    """``viewer.py``, imported now; 501 with the install line when the extra is missing."""
    try:
        return importlib.import_module(VIEWER_MODULE)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("livekit"):
            raise
        raise NotSupported(f"this server cannot join LiveKit rooms: {exc.name} is not installed ({INSTALL_HINT})",
                           code="livekit_unavailable") from None


async def join_room(session: Any, request: JoinRequest) -> Viewer:
    """Join the room as the session's avatar; returns the viewer once it publishes (``viewer.py``)."""
    viewer: Viewer = await viewer_module().join(session, request, timeout_s=JOIN_TIMEOUT_S)
    return viewer

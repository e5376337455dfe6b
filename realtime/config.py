"""The server's one typed configuration. Every default is defined here once; ``avatar serve``'s
options are derived from these fields (``avatarstream/cli/serve.py``), and the session registry,
the HTTP layer and the transports read their settings from it."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avatarstream.engines.base import AvatarEngine, Portrait
from avatarstream.engines.registry import engine_capabilities
from avatarstream.realtime.session.session import SessionOptions

API_KEY_ENV = "AVATARSTREAM_API_KEY"
DEFAULT_ENGINE = "lite"


@dataclass
class ServerConfig:
    image: str | None = None  # portrait path, or a demo name ("human", "cat"); None = the demo human
    engine: str = DEFAULT_ENGINE  # default engine of new sessions
    weights: str | None = None  # checkpoint directory of a neural engine
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"backend": ..., "engines_dir": ...}
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4  # concurrent sessions; more get 503 + Retry-After
    size: int = 0  # default video width and height in pixels; 0: the engine's default size
    idle_timeout: float = 300.0  # s without a connected viewer or input before a session is closed
    viewer_connect_timeout: float = 15.0  # s a WebRTC viewer may take to connect (ICE + DTLS)
    max_viewers_per_session: int = 8
    margin_frames: int = 2  # render-time allowance on top of the engine's lookahead (frames)
    ice_servers: list[str] = field(default_factory=list)  # STUN/TURN URLs for clients behind NAT
    api_key: str | None = None  # None: from $AVATARSTREAM_API_KEY; "" or unset there: no key
    insecure: bool = False  # allow a non-loopback host without an API key
    cors_origins: list[str] = field(default_factory=list)  # origins allowed to call the API from a browser
    portrait: Portrait | None = None  # already-loaded portrait (overrides ``image``)
    engine_loader: Callable[..., AvatarEngine] | None = None  # default: engines.registry.load_engine

    def __post_init__(self) -> None:
        if not self.size:
            self.size = engine_capabilities(self.engine).default_size or 0
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None

    def session_options(self, **overrides: Any) -> SessionOptions:
        """The per-session options these settings imply (``overrides``: size, controls)."""
        base = SessionOptions(size=self.size, margin_frames=self.margin_frames,
                              max_viewers=self.max_viewers_per_session)
        return SessionOptions(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def binds_beyond_loopback(self) -> bool:
        host = self.host.strip("[]")
        if host in ("localhost", ""):
            return host == ""
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True  # a host name other than localhost

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
from avatarstream.realtime.session.admission import AdmissionPolicy
from avatarstream.realtime.session.latency import ADAPTIVE, LatencySettings, latency_preset
from avatarstream.realtime.session.session import SessionOptions
from avatarstream.realtime.video_settings import VIDEO_DEFAULTS, EncoderMode, VideoEncoding

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
    # an explicit cap on concurrent sessions (watched or not; more get 503 + Retry-After); None or 0: no
    # fixed cap, admission by measured load decides (realtime/session/admission.py)
    max_sessions: int | None = None
    size: int = 0  # default video width and height in pixels; 0: the engine's default size
    idle_timeout: float = 300.0  # s without a connected viewer or input before a session is closed
    # s a connection may stay open without a complete request's headers (new, or idle between keep-alive
    # requests): slow or silent clients cannot hold connections (aiohttp's keep-alive timeout)
    header_timeout: float = 5.0
    viewer_connect_timeout: float = 15.0  # s a WebRTC viewer may take to connect (ICE + DTLS)
    max_viewers_per_session: int = 8
    latency: str = ADAPTIVE.name  # latency preset (realtime/session/latency.py): classic, adaptive (default) or low
    ice_servers: list[str] = field(default_factory=list)  # STUN/TURN URLs for clients behind NAT
    api_key: str | None = None  # None: from $AVATARSTREAM_API_KEY; "" or unset there: no key
    insecure: bool = False  # allow a non-loopback host without an API key
    cors_origins: list[str] = field(default_factory=list)  # origins allowed to call the API from a browser
    # admission by measured load (realtime/session/admission.py)
    # refuse (503 + Retry-After) the session that would push the active ones below min_fps, at creation
    # and when an unwatched session's first viewer attaches
    admission: bool = True
    admission_min_fps: float = 24.0
    admission_cpu_cores: float = 0.0  # CPU the sessions may use; 0: every core of the machine
    admission_headroom: float = 0.85  # fraction of that CPU (and of the event loop thread) sessions may fill
    admission_window: float = 3.0  # seconds of measurements behind each capacity estimate
    admission_retry_after: int = 5  # Retry-After (s) of a refusal
    # how viewers' video is encoded (realtime/video_settings.py holds the defaults; the WebRTC transport applies them)
    video_encoder: str = VIDEO_DEFAULTS.mode.value  # shared (video + audio once per session), shared-video, per-viewer, aiortc
    video_codec: str = VIDEO_DEFAULTS.codec  # preferred codec: vp8 or h264
    video_bitrate_kbps: int = VIDEO_DEFAULTS.bitrate_kbps
    video_keyframe_interval: float = VIDEO_DEFAULTS.keyframe_interval_s
    vp8_speed: int = VIDEO_DEFAULTS.vp8_speed
    h264_preset: str = VIDEO_DEFAULTS.h264_preset
    video_threads: int = VIDEO_DEFAULTS.threads
    # memory of a long-running server (realtime/memory.py; the malloc settings are glibc's, ignored elsewhere)
    release_memory: bool = True  # after a session or viewer ends: collect its cycles, return free malloc pages
    gc_freeze: bool = True  # avatar serve: start-up objects out of the cyclic GC's sight (cheap collections)
    malloc_arena_max: int = 0  # malloc arenas all threads share; 0: glibc's default (8 per core)
    portrait: Portrait | None = None  # already-loaded portrait (overrides ``image``)
    engine_loader: Callable[..., AvatarEngine] | None = None  # default: engines.registry.load_engine

    def __post_init__(self) -> None:
        if not self.size:
            self.size = engine_capabilities(self.engine).default_size or 0
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.max_sessions is not None and self.max_sessions < 0:
            raise ValueError(f"max_sessions must be 0 or None (no fixed cap) or more, got {self.max_sessions}")
        if self.malloc_arena_max < 0:
            raise ValueError(f"malloc_arena_max must be 0 (glibc's default) or more, got {self.malloc_arena_max}")
        self.latency_settings()  # ValueError naming the presets, at start-up
        self.admission_policy()  # ValueError for a bad setting, at start-up
        self.video_encoding()

    def session_options(self, **overrides: Any) -> SessionOptions:
        """The per-session options these settings imply (``overrides``: size, controls)."""
        base = SessionOptions(size=self.size, latency=self.latency_settings(),
                              max_viewers=self.max_viewers_per_session)
        return SessionOptions(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})

    def latency_settings(self) -> LatencySettings:
        return latency_preset(self.latency)

    def admission_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(enabled=self.admission, min_fps=self.admission_min_fps,
                               cpu_cores=self.admission_cpu_cores, headroom=self.admission_headroom,
                               window_s=self.admission_window, retry_after_s=self.admission_retry_after)

    def video_encoding(self) -> VideoEncoding:
        return VideoEncoding(mode=EncoderMode(self.video_encoder), codec=self.video_codec,
                             bitrate_kbps=self.video_bitrate_kbps,
                             keyframe_interval_s=self.video_keyframe_interval, vp8_speed=self.vp8_speed,
                             h264_preset=self.h264_preset, threads=self.video_threads)

    @property
    def binds_beyond_loopback(self) -> bool:
        host = self.host.strip("[]")
        if host in ("localhost", ""):
            return host == ""
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True  # a host name other than localhost

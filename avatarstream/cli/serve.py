"""``avatar serve``: the real-time avatar server (browser page, /offer, WHEP, agent sessions API)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
from typing import Any

from avatarstream.engines.base import EngineError
from avatarstream.engines.registry import engine_capabilities, engine_names
from avatarstream.realtime.memory import freeze_startup_objects, limit_arenas
from avatarstream.realtime.config import API_KEY_ENV, DEFAULT_ENGINE, ServerConfig
from avatarstream.realtime.session.latency import PRESETS
from avatarstream.realtime.video_settings import H264_PRESETS, VIDEO_CODECS, EncoderMode
from avatarstream.cli.backend_options import (add_backend_arguments, backend_options, engine_flag_options,
                                              engine_sizes, resolve_size)

DEFAULTS = ServerConfig.__dataclass_fields__  # every default is defined once, in realtime/config.py


def _default(name: str) -> Any:
    return DEFAULTS[name].default


def add_arguments(p: argparse.ArgumentParser) -> None:
    streaming = [n for n in engine_names() if engine_capabilities(n).streams]
    p.add_argument("--image", default=None,
                   help="portrait image file, or a demo name: 'cat' or 'human' (default: the demo human portrait)")
    p.add_argument("--engine", default=DEFAULT_ENGINE,
                   help=f"avatar engine: {', '.join(streaming)} (default: {DEFAULT_ENGINE}, CPU, no downloads)")
    p.add_argument("--weights", default=None, help="checkpoint directory for neural engines")
    add_backend_arguments(p)
    p.add_argument("--host", default=_default("host"),
                   help="address to listen on (default: %(default)s; 0.0.0.0 for all interfaces needs an API key)")
    p.add_argument("--port", type=int, default=_default("port"), help="(default: %(default)s)")
    p.add_argument("--max-sessions", type=int, default=0,
                   help="an explicit cap on concurrent sessions, watched or not; more get HTTP 503 (default: 0, no "
                        "fixed cap: admission by measured load decides how many sessions may render)")
    p.add_argument("--size", type=int, default=engine_capabilities(DEFAULT_ENGINE).default_size,
                   help=f"video width and height in pixels (default: %(default)s; {engine_sizes(streaming_only=True)})")
    p.add_argument("--idle-timeout", type=float, default=_default("idle_timeout"),
                   help="close sessions without a connected viewer or input after this many seconds (default: %(default)s)")
    p.add_argument("--viewer-connect-timeout", type=float, default=_default("viewer_connect_timeout"),
                   help="drop a WebRTC viewer that has not connected after this many seconds (default: %(default)s)")
    p.add_argument("--max-viewers", type=int, default=_default("max_viewers_per_session"),
                   help="viewers per session, all transports together (default: %(default)s)")
    p.add_argument("--api-key", default=None,
                   help=f"API key needed to create sessions (default: ${API_KEY_ENV}; none on loopback)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="URL",
                   help="a browser origin (e.g. https://app.example.com) allowed to call the API besides the "
                        "server's own page (repeatable; '*' for any)")
    p.add_argument("--insecure", action="store_true",
                   help="serve on a non-loopback address without an API key (anyone reaching it can create sessions)")
    p.add_argument("--latency", default=_default("latency"), choices=list(PRESETS),
                   help="latency preset: 'adaptive' sizes the render margin and the start hold from measurements "
                        "(p99 + guard), 'low' trades smoothness for delay (p90, no guard: ~1 frame in 10 may "
                        "repeat under load; joyvasa also streams 2-frame chunks: 80 ms of audio lookahead instead "
                        "of 440, 5x the motion windows), 'classic' the old fixed 80 ms margin + 60 ms hold (default: %(default)s)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN/TURN server URL for clients behind NAT (repeatable; none by default); WHEP players get "
                        "them as 'Link: <url>; rel=\"ice-server\"' headers")
    add_capacity_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_capacity_arguments(p: argparse.ArgumentParser) -> None:
    """Admission by measured load and WebRTC video encoding (docs/server.md, "Capacity")."""
    g = p.add_argument_group("capacity", "admission by measured load, and how video is encoded")
    g.add_argument("--no-admission", dest="admission", action="store_false", default=_default("admission"),
                   help="admit sessions up to --max-sessions whatever the measured load")
    g.add_argument("--admission-min-fps", type=float, default=_default("admission_min_fps"),
                   help="refuse (503) the new session, or the first viewer of an unwatched one, that would push the "
                        "active sessions below this frame rate (default: %(default)s)")
    g.add_argument("--admission-cpu-cores", type=float, default=_default("admission_cpu_cores"),
                   help="CPU cores the sessions may use; 0: all of the machine's (default: %(default)s)")
    g.add_argument("--admission-headroom", type=float, default=_default("admission_headroom"),
                   help="fraction of that CPU, and of the event loop thread, sessions may fill (default: %(default)s)")
    g.add_argument("--admission-window", type=float, default=_default("admission_window"),
                   help="seconds of measurements behind each capacity estimate (default: %(default)s)")
    g.add_argument("--admission-retry-after", type=int, default=_default("admission_retry_after"),
                   help="Retry-After seconds of a refusal (default: %(default)s)")
    g.add_argument("--video-encoder", default=_default("video_encoder"), choices=[m.value for m in EncoderMode],
                   help="media encoding: shared = video and Opus audio encoded once per session for all its viewers; "
                        "shared-video = video shared, audio encoded per viewer; per-viewer = one encoder per viewer; "
                        "aiortc = aiortc's own per-viewer encoders (default: %(default)s)")
    g.add_argument("--video-codec", default=_default("video_codec"), choices=list(VIDEO_CODECS),
                   help="preferred video codec when the viewer offers several (default: %(default)s)")
    g.add_argument("--video-bitrate", type=int, default=_default("video_bitrate_kbps"), metavar="KBPS",
                   help="target video bitrate (default: %(default)s)")
    g.add_argument("--video-keyframe-interval", type=float, default=_default("video_keyframe_interval"),
                   metavar="SECONDS", help="a keyframe at least this often (default: %(default)s)")
    g.add_argument("--vp8-speed", type=int, default=_default("vp8_speed"),
                   help="libvpx cpu-used, 0 (best) .. 16 (fastest) (default: %(default)s)")
    g.add_argument("--h264-preset", default=_default("h264_preset"), choices=list(H264_PRESETS),
                   help="libx264 preset, with tune=zerolatency (default: %(default)s)")
    g.add_argument("--video-threads", type=int, default=_default("video_threads"),
                   help="threads per video encoder (default: %(default)s)")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """Memory of a long-running server (realtime/memory.py; docs/server.md, "Soak")."""
    g = p.add_argument_group("memory", "garbage collection and glibc malloc (malloc settings are ignored on other "
                                       "C libraries)")
    g.add_argument("--malloc-arena-max", type=int, default=_default("malloc_arena_max"), metavar="N",
                   help="malloc arenas shared by all threads; 0: glibc's default, 8 per core (default: %(default)s)")
    g.add_argument("--no-release-memory", dest="release_memory", action="store_false",
                   default=_default("release_memory"),
                   help="after a session or viewer ends, leave its reference cycles to the garbage collector's "
                        "own schedule and keep freed allocator memory instead of returning it to the system")
    g.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false", default=_default("gc_freeze"),
                   help="leave the start-up objects to the cyclic garbage collector (each full collection "
                        "then scans every object: ~150 ms on 2 cores)")


def capacity_options(args: argparse.Namespace) -> dict:
    """The ServerConfig fields of ``add_capacity_arguments``; EngineError names a bad value."""
    options = {"admission": args.admission, "admission_min_fps": args.admission_min_fps,
            "admission_cpu_cores": args.admission_cpu_cores, "admission_headroom": args.admission_headroom,
            "admission_window": args.admission_window, "admission_retry_after": args.admission_retry_after,
            "video_encoder": args.video_encoder, "video_codec": args.video_codec,
            "video_bitrate_kbps": args.video_bitrate, "video_keyframe_interval": args.video_keyframe_interval,
            "vp8_speed": args.vp8_speed, "h264_preset": args.h264_preset, "video_threads": args.video_threads}
    try:
        ServerConfig(**options)  # validates the admission policy and the video settings
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    return options


def check_portrait(config: ServerConfig, engine_options: dict | None = None) -> None:
    """Fail at start-up, with a clear message, if the portrait is unreadable or has no face.

    ``engine_options`` (``--backend`` / ``--engines-dir``) go to the configured engine only."""
    from avatarstream.engines.registry import load_engine
    from avatarstream.engines.portraits import load_portrait

    portrait = load_portrait(config.image)
    engine = load_engine(config.engine, **engine_flag_options(config.engine, weights=config.weights),
                         **(engine_options or {}))
    stream = engine.open_stream(portrait, size=config.size)  # raises NoFaceError
    stream.close()
    config.portrait = portrait
    # serve with this engine instance: it has already analysed the portrait
    config.engine_loader = lambda name, **opts: engine if name == config.engine else load_engine(
        name, **_accepted(name, opts))


def latency_engine_options(engine: str, latency: str) -> dict[str, str]:
    """``--latency low`` also selects the engine's own low-latency streaming (an engine option ``latency="low"``,
    e.g. joyvasa's 2-frame chunks: docs/joyvasa.md, "Delay") where the engine declares one; the other presets leave
    the engine at its default. Engines never import the server: the server passes the option."""
    from avatarstream.engines.registry import engine_options

    if latency == "low" and "latency" in engine_options(engine).option_names():
        return {"latency": "low"}
    return {}


def serve_engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options ``avatar serve`` passes from its flags: ``--backend`` / ``--engines-dir`` and what
    ``--latency`` selects in the engine (``latency_engine_options``)."""
    return {**backend_options(args), **latency_engine_options(args.engine, args.latency)}


def _accepted(name: str, options: dict) -> dict:
    """The server passes --weights along for every engine; keep only the options ``name`` declares."""
    from avatarstream.engines.registry import engine_options

    accepted = engine_options(name).option_names()
    return {k: v for k, v in options.items() if k in accepted}


async def _freeze(app: Any) -> None:
    freeze_startup_objects()


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from avatarstream.realtime.http.app import PathOnlyAccessLogger, create_app

    faulthandler.enable()  # a crash in native code (codecs, dlib) prints every thread's Python stack
    if args.malloc_arena_max < 0:
        raise EngineError("--malloc-arena-max must be 0 (glibc's default) or more")
    if args.malloc_arena_max:
        limit_arenas(args.malloc_arena_max)  # before any thread starts: arenas already made stay

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_sessions < 0:
        raise EngineError("--max-sessions must be 0 (no fixed cap: admission by measured load) or more")
    caps = engine_capabilities(args.engine)  # unknown engine -> EngineError listing the known ones
    if not caps.streams:
        raise EngineError(f"the {args.engine} engine renders files only and cannot serve; use 'avatar render "
                          f"--engine {args.engine}', or serve with one of: "
                          f"{', '.join(n for n in engine_names() if engine_capabilities(n).streams)}")
    args.size = resolve_size(caps, args.size)
    engine_options = serve_engine_options(args)
    config = ServerConfig(image=args.image, engine=args.engine, weights=args.weights, host=args.host, port=args.port,
                          max_sessions=args.max_sessions or None, size=args.size, idle_timeout=args.idle_timeout,
                          viewer_connect_timeout=args.viewer_connect_timeout,
                          max_viewers_per_session=args.max_viewers, ice_servers=list(args.ice_server),
                          latency=args.latency,
                          **capacity_options(args),
                          release_memory=args.release_memory, gc_freeze=args.gc_freeze,
                          malloc_arena_max=args.malloc_arena_max,
                          api_key=args.api_key, insecure=args.insecure, cors_origins=list(args.cors_origin))
    if config.binds_beyond_loopback and not config.api_key and not config.insecure:
        raise EngineError(f"--host {args.host} makes the server reachable from other machines: set an API key "
                          f"(--api-key or ${API_KEY_ENV}), or pass --insecure to serve without one")
    check_portrait(config, engine_options)
    app = create_app(config)
    if config.gc_freeze:
        app.on_startup.append(_freeze)  # after the app's own start-up (engine loaded, portrait prepared)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    portrait = config.portrait.name if config.portrait else config.image
    print(f"avatar serve: {config.engine} engine, portrait {portrait}; open http://{shown}:{args.port}/",
          flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, loop=asyncio.new_event_loop(),
                access_log_class=PathOnlyAccessLogger)
    return 0

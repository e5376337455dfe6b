"""``avatar serve``: the real-time avatar server (browser page, /offer, WHEP, agent sessions API)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from avatarstream.engines.base import EngineError
from avatarstream.cli.backend_options import add_backend_arguments, backend_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None,
                   help="portrait image file, or a demo name: 'cat' or 'human' (default: the demo human portrait)")
    p.add_argument("--engine", default="lite", help="avatar engine (default: lite, CPU, no downloads)")
    p.add_argument("--weights", default=None, help="checkpoint directory for neural engines")
    add_backend_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions; more get HTTP 503")
    p.add_argument("--size", type=int, default=512, choices=[256, 512], help="video width and height in pixels")
    p.add_argument("--idle-timeout", type=float, default=300.0, help="close sessions without viewers after this many seconds")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN/TURN server URL for clients behind NAT (repeatable; none by default)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def check_portrait(config, engine_options: dict | None = None) -> None:
    """Fail at start-up, with a clear message, if the portrait is unreadable or has no face.

    ``engine_options`` (``--backend`` / ``--engines-dir``) go to the configured engine only."""
    from avatarstream.engines.registry import load_engine
    from avatarstream.engines.portraits import load_portrait

    portrait = load_portrait(config.image)
    engine = load_engine(config.engine, weights=config.weights, **(engine_options or {}))
    stream = engine.open_stream(portrait, size=config.size)  # raises NoFaceError
    stream.close()
    config.portrait = portrait
    # serve with this engine instance: it has already analysed the portrait
    config.engine_loader = lambda name, **opts: engine if name == config.engine else load_engine(name, **opts)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from avatarstream.realtime.http_app import ServerConfig, create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_sessions < 1:
        raise EngineError("--max-sessions must be at least 1")
    engine_options = backend_options(args)
    config = ServerConfig(image=args.image, engine=args.engine, weights=args.weights, host=args.host, port=args.port,
                          max_sessions=args.max_sessions, size=args.size, idle_timeout=args.idle_timeout,
                          ice_servers=list(args.ice_server))
    check_portrait(config, engine_options)
    app = create_app(config)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"avatar serve: {config.engine} engine, portrait {config.portrait.name}; open http://{shown}:{args.port}/",
          flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, loop=asyncio.new_event_loop())
    return 0

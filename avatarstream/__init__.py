"""avatarstream: real-time talking portraits over WebRTC.

The installed package holds the repository's top-level folders as sub-packages::

    avatarstream.engines    the engine contract (engines/base.py) and one folder per engine family
    avatarstream.realtime   the server: sessions, transports (WebRTC, agent WebSocket), HTTP API
    avatarstream.export     build tool: ONNX / TensorRT export of the neural stages
    avatarstream.web        the browser pages
    avatarstream.cli        the ``avatar`` command

The names below are the public API. They are imported on first use, so ``import avatarstream``
stays cheap and never pulls torch or aiortc::

    from avatarstream import load_engine, load_portrait
    stream = load_engine("lite").open_stream(load_portrait("cat"), size=256)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the engine contract
    "SAMPLE_RATE": "avatarstream.engines.base",
    "FPS": "avatarstream.engines.base",
    "Portrait": "avatarstream.engines.base",
    "AvatarFrame": "avatarstream.engines.base",
    "AvatarEngine": "avatarstream.engines.base",
    "EngineStream": "avatarstream.engines.base",
    "EngineError": "avatarstream.engines.base",
    "NoFaceError": "avatarstream.engines.base",
    "MissingWeightsError": "avatarstream.engines.base",
    "OfflineRenderer": "avatarstream.engines.base",
    "EngineCapabilities": "avatarstream.engines.base",
    "load_engine": "avatarstream.engines.registry",
    "engine_names": "avatarstream.engines.registry",
    "engine_capabilities": "avatarstream.engines.registry",
    "load_portrait": "avatarstream.engines.portraits",
    "portrait_from_bytes": "avatarstream.engines.portraits",
    # the server and its client
    "ServerConfig": "avatarstream.realtime.config",
    "create_app": "avatarstream.realtime.http.app",
    "AvatarClient": "avatarstream.realtime.client",
    "ClientError": "avatarstream.realtime.client",
    # writing a transport (realtime/transports/base.py): what it reads from a session, what a viewer is
    "SessionOutput": "avatarstream.realtime.transports.base",
    "SessionInput": "avatarstream.realtime.transports.base",
    "Viewer": "avatarstream.realtime.transports.base",
    "ViewerState": "avatarstream.realtime.transports.base",
    "EventType": "avatarstream.realtime.session.events",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'avatarstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

"""Engine names -> engine factories, imported lazily so the lite engine never pulls torch.

Each family declares its options and capabilities in a light module (``engines/<family>/options.py``:
``OPTIONS``, ``CAPABILITIES``) that imports no torch; the engine module itself is imported only by
``load_engine``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from avatarstream.engines.base import AvatarEngine, EngineCapabilities, EngineError, EngineOptions

# name -> "module:factory"; factory(options) -> AvatarEngine
ENGINES: dict[str, str] = {
    "lite": "avatarstream.engines.lite.engine:LiteEngine",
    "joyvasa": "avatarstream.engines.joyvasa.avatar_engine:JoyVasaEngine",
    "loopy": "avatarstream.engines.loopy.avatar_engine:LoopyEngine",
}

# name -> the torch-free module declaring OPTIONS (an EngineOptions dataclass) and CAPABILITIES
DECLARATIONS: dict[str, str] = {
    "lite": "avatarstream.engines.lite.options",
    "joyvasa": "avatarstream.engines.joyvasa.options",
    "loopy": "avatarstream.engines.loopy.options",
}


def engine_names() -> list[str]:
    return list(ENGINES)


def _declarations(name: str) -> ModuleType:
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    return importlib.import_module(DECLARATIONS[name])


def engine_capabilities(name: str) -> EngineCapabilities:
    """What engine ``name`` does (sizes, controls, offline rendering, ...), without importing the engine."""
    return _declarations(name).CAPABILITIES


def engine_options(name: str) -> type[EngineOptions]:
    """The options dataclass of engine ``name`` (its fields are the accepted options, with defaults)."""
    return _declarations(name).OPTIONS


def load_engine(name: str, **options: Any) -> AvatarEngine:
    """Build the engine ``name`` from its options (``engine_options(name)``; None means "not given").

    Unknown options and wrongly typed values raise EngineError before the engine module is imported."""
    parsed = engine_options(name).parse(options)
    module_name, factory_name = ENGINES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # e.g. torch missing for neural engines
        raise EngineError(
            f"engine {name!r} needs packages that are not installed ({exc}); "
            f"install them with: pip install 'avatarstream[neural,cpu]' (on a GPU machine: 'avatarstream[neural,gpu]')"
        ) from exc
    factory = getattr(module, factory_name)
    return factory(parsed)

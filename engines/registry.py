"""Engine names -> engine factories, imported lazily so the lite engine never pulls torch."""

from __future__ import annotations

import importlib
from typing import Any

from avatarstream.engines.base import AvatarEngine, EngineError

# name -> "module:factory"; factory(**options) -> AvatarEngine
ENGINES: dict[str, str] = {
    "lite": "avatarstream.engines.lite.engine:LiteEngine",
    "joyvasa": "avatarstream.engines.joyvasa.avatar_engine:JoyVasaEngine",
    "loopy": "avatarstream.engines.loopy.avatar_engine:LoopyEngine",
}


def engine_names() -> list[str]:
    return list(ENGINES)


def load_engine(name: str, **options: Any) -> AvatarEngine:
    """Build the engine ``name``; options are engine specific (``weights``, ``device``, ``backend`` ...)."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    module_name, factory_name = ENGINES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # e.g. torch missing for neural engines
        raise EngineError(
            f"engine {name!r} needs packages that are not installed ({exc}); "
            f"install them with: pip install 'avatarstream[neural]'"
        ) from exc
    factory = getattr(module, factory_name)
    return factory(**{k: v for k, v in options.items() if v is not None})

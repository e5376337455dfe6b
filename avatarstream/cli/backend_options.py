"""Engine options from command-line flags, shared by ``serve`` and ``render``.

``--backend`` / ``--engines-dir`` pick per-stage runtimes for engines whose capabilities say they run exported
stages; the options reach the engine only when given (``load_engine(name, backend=..., engines_dir=...)``), and
engines that run no exported stages refuse them rather than silently ignoring them. Every other engine flag
(``--weights``, ``--device``, ``--seed``) is likewise refused, naming the flag, by an engine without that option.
Torch is never imported here: options and capabilities come from ``engines.registry``'s light declarations.
"""

from __future__ import annotations

import argparse
from typing import Any

from avatarstream.engines.base import EngineCapabilities, EngineError
from avatarstream.engines.registry import engine_capabilities, engine_names, engine_options


def backend_engines() -> tuple[str, ...]:
    """Engines whose stages can run on exported onnxruntime / TensorRT runtimes."""
    return tuple(n for n in engine_names() if engine_capabilities(n).exported_stages)


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    names = " or ".join(backend_engines())
    p.add_argument("--backend", default=None, metavar="CHOICE",
                   help=f"per-stage runtime for the {names} engine: torch (default), onnxruntime, tensorrt, or "
                        "per stage, e.g. warping_spade=tensorrt,default=torch (see docs/export.md)")
    p.add_argument("--engines-dir", default=None, metavar="DIR",
                   help="ONNX graphs / TensorRT engines written by 'avatar export --out DIR' (needed by --backend)")


def engine_sizes(streaming_only: bool = False) -> str:
    """``"lite: 64..2048; joyvasa: 256 or 512; ..."`` from the engines' capabilities (for ``--size`` help)."""
    caps = [engine_capabilities(n) for n in engine_names()]
    return "; ".join(f"{c.name}: {c.describe_sizes()}" for c in caps if c.streams or not streaming_only)


def resolve_size(capabilities: EngineCapabilities, size: int | None) -> int:
    """``--size`` for a streaming engine: the engine's default when not given, else checked against its sizes."""
    if size is None:
        if capabilities.default_size is None:
            raise EngineError(f"the {capabilities.name} engine has no default frame size; give --size")
        return capabilities.default_size
    try:
        return capabilities.check_size(size)
    except EngineError as exc:
        raise EngineError(f"--size: {exc}") from None


def engine_flag_options(engine: str, **flags: Any) -> dict[str, Any]:
    """Options for ``engine`` from flag values (``weights=args.weights`` ...), keeping only those given (not None).

    A given flag the engine has no option for -> EngineError naming the flag and the engine's options."""
    accepted = engine_options(engine).option_names()
    options = {k: v for k, v in flags.items() if v is not None}
    for name in options:
        if name not in accepted:
            raise EngineError(f"--{name.replace('_', '-')} is not used by the {engine} engine "
                              f"(its options: {', '.join(accepted)})")
    return options


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options for ``args.engine`` from ``--backend`` / ``--engines-dir`` (only those given)."""
    backend = getattr(args, "backend", None)
    engines_dir = getattr(args, "engines_dir", None)
    if not engine_capabilities(args.engine).exported_stages:
        if backend not in (None, "torch") or engines_dir is not None:
            raise EngineError(f"--backend/--engines-dir choose runtimes for exported neural stages; the "
                              f"{args.engine!r} engine runs none (use --engine {' or '.join(backend_engines())})")
        return {}
    return engine_flag_options(args.engine, backend=backend, engines_dir=engines_dir)

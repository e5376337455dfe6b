"""``--backend`` / ``--engines-dir``: per-stage runtimes for the neural engine, shared by ``serve`` and ``render``.

The options reach the engine only when given (``load_engine(name, backend=..., engines_dir=...)``); engines
that run no exported stages refuse them rather than silently ignoring them. Torch is never imported here.
"""

from __future__ import annotations

import argparse
from typing import Any

from avatarstream.engines.base import EngineError

BACKEND_ENGINES = ("joyvasa",)  # engines whose stages can run on exported onnxruntime / TensorRT runtimes


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, metavar="CHOICE",
                   help="per-stage runtime for the joyvasa engine: torch (default), onnxruntime, tensorrt, or "
                        "per stage, e.g. warping_spade=tensorrt,default=torch (see docs/export.md)")
    p.add_argument("--engines-dir", default=None, metavar="DIR",
                   help="ONNX graphs / TensorRT engines written by 'avatar export --out DIR' (needed by --backend)")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options for ``args.engine`` from ``--backend`` / ``--engines-dir`` (only those given)."""
    backend = getattr(args, "backend", None)
    engines_dir = getattr(args, "engines_dir", None)
    if args.engine not in BACKEND_ENGINES:
        if backend not in (None, "torch") or engines_dir is not None:
            raise EngineError(f"--backend/--engines-dir choose runtimes for exported neural stages; the "
                              f"{args.engine!r} engine runs none (use --engine {' or '.join(BACKEND_ENGINES)})")
        return {}
    options: dict[str, Any] = {}
    if backend is not None:
        options["backend"] = backend
    if engines_dir is not None:
        options["engines_dir"] = engines_dir
    return options

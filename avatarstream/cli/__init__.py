"""The ``avatar`` command. Each sub-command lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("avatarstream.cli.serve", "serve the avatar over WebRTC (HTTP API + browser page)"),
    "cluster": ("avatarstream.cli.cluster", "serve sessions across machines on Ray (head: the front; worker)"),
    "render": ("avatarstream.cli.render", "render a talking-portrait MP4 from an image and an audio file"),
    "bench": ("avatarstream.cli.bench", "benchmark an engine or backend; writes JSON and plots"),
    "weights": ("avatarstream.cli.weights", "download or check the official neural-engine weights"),
    "export": ("avatarstream.cli.export", "export neural stages to ONNX / TensorRT"),
    "train": ("avatarstream.cli.train", "train a model (loopy)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description="avatarstream: real-time talking portraits over WebRTC")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            p.set_defaults(_unavailable=f"'avatar {name}' is unavailable: {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    from avatarstream.engines.base import EngineError

    try:
        return int(args._run(args) or 0)
    except EngineError as exc:
        print(f"avatar {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

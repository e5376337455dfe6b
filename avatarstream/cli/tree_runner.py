"""Run the ``avatar`` command straight from a source tree that is not pip-installed.

The installed package maps the repository's folders under ``avatarstream`` (``engines/`` is
``avatarstream.engines``...; pyproject's package-dir). A machine that only received the working tree (the GPU
check machine: torch with CUDA, no pip install of this project) gets the same mapping here::

    python avatarstream/cli/tree_runner.py bench --suite gpu --out docs/gpu
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("bench", "engines", "export", "realtime", "web")  # as pyproject.toml [tool.setuptools.package-dir]


def map_tree(root: Path = ROOT) -> None:
    """Make ``import avatarstream.<folder>`` load ``root/<folder>`` (the tree's own code, never an install)."""
    sys.path.insert(0, str(root))
    for name in [n for n in sys.modules if n == "avatarstream" or n.startswith("avatarstream.")]:
        del sys.modules[name]
    package = importlib.import_module("avatarstream")
    if package.__file__ is None or Path(package.__file__).resolve().parent != root / "avatarstream":
        raise ImportError(f"avatarstream resolved to {package.__file__}, not the tree at {root}")
    for name in SUBPACKAGES:
        full = f"avatarstream.{name}"
        spec = importlib.util.spec_from_file_location(full, root / name / "__init__.py",
                                                      submodule_search_locations=[str(root / name)])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot map {root / name} as {full}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)


def main(argv: list[str] | None = None) -> int:
    map_tree()
    from avatarstream.cli import main as avatar_main

    return avatar_main(argv)


if __name__ == "__main__":
    sys.exit(main())

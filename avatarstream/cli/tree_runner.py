"""Run the ``avatar`` command straight from a source tree that is not pip-installed.

The installed package maps the repository's folders under ``avatarstream`` (``engines/`` is
``avatarstream.engines``...; pyproject.toml's package-dir, which is read here too). A machine that only received
the working tree (the GPU check machine: torch with CUDA, no pip install of this project) gets the same mapping::

    python avatarstream/cli/tree_runner.py bench --suite gpu --out docs/gpu
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_dir(root: Path = ROOT) -> dict[str, str]:
    """pyproject.toml's ``[tool.setuptools.package-dir]``: installed package -> repository folder."""
    text = (root / "pyproject.toml").read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        mapping: dict[str, str] = tomllib.loads(text)["tool"]["setuptools"]["package-dir"]
        return mapping
    return package_dir_lines(text)  # Python 3.10 (a GPU machine's system python) has no tomllib


def package_dir_lines(text: str) -> dict[str, str]:
    """The package-dir table read from its ``"a.b" = "c"`` lines (what pyproject.toml writes there)."""
    table = re.search(r"^\[tool\.setuptools\.package-dir\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if table is None:
        raise ImportError("no [tool.setuptools.package-dir] table in pyproject.toml")
    return dict(re.findall(r'^\s*"([\w.]+)"\s*=\s*"([\w./-]+)"', table.group(1), re.M))


def map_tree(root: Path = ROOT) -> None:
    """Make ``import avatarstream.<folder>`` load ``root/<folder>`` (the tree's own code, never an install)."""
    sys.path.insert(0, str(root))
    for name in [n for n in sys.modules if n == "avatarstream" or n.startswith("avatarstream.")]:
        del sys.modules[name]
    package = importlib.import_module("avatarstream")
    if package.__file__ is None or Path(package.__file__).resolve().parent != root / "avatarstream":
        raise ImportError(f"avatarstream resolved to {package.__file__}, not the tree at {root}")
    for full, folder in sorted(package_dir(root).items()):  # parents before their subpackages
        if full == "avatarstream":
            continue
        spec = importlib.util.spec_from_file_location(full, root / folder / "__init__.py",
                                                      submodule_search_locations=[str(root / folder)])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot map {root / folder} as {full}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        parent, _, name = full.rpartition(".")
        setattr(sys.modules[parent], name, module)


def main(argv: list[str] | None = None) -> int:
    map_tree()
    from avatarstream.cli import main as avatar_main

    return avatar_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""Type-check the contract and server modules with mypy (settings: pyproject.toml [tool.mypy]).

The repository keeps realtime/, engines/, export/ and web/ at the root and installs them as
``avatarstream.*`` through a package-dir mapping; the editable install resolves that mapping with an
import hook mypy cannot follow. This script links the folders under build/typecheck/avatarstream/
(relative symlinks, the installed layout; build/ is ignored by git), which [tool.mypy] mypy_path points
at, runs ``python -m mypy`` with the modules listed in [tool.mypy], and prints repository paths
(``realtime/client.py``) instead of the linked ones. Extra arguments go to mypy.

    .venv/bin/python .ci/typecheck.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def package_links() -> dict[Path, Path]:
    """Link path under TREE -> repository path, from the package-dir mapping in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    links: dict[Path, Path] = {}
    for package, folder in mapping.items():
        if package == folder:
            # The package folder itself (avatarstream/) also holds the mapped ones: link its contents.
            for child in sorted((ROOT / folder).iterdir()):
                if child.name != "__pycache__":
                    links[TREE / package / child.name] = child
        else:
            links[TREE.joinpath(*package.split("."))] = ROOT / folder
    return links


def build_tree() -> None:
    links = package_links()
    for folder, dirs, files in os.walk(TREE):  # does not descend into linked folders
        for name in dirs + files:
            stale = Path(folder) / name
            if stale.is_symlink() and stale not in links:
                stale.unlink()  # a folder or module that was moved or removed
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        relative = Path(os.path.relpath(target, link.parent))
        if link.is_symlink() and Path(os.readlink(link)) == relative:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(relative, target_is_directory=target.is_dir())


def main(argv: list[str]) -> int:
    build_tree()
    result = subprocess.run([sys.executable, "-m", "mypy", *argv], cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    # Longest link first so avatarstream/cli is rewritten before a shorter prefix could match.
    for link, target in sorted(package_links().items(), key=lambda item: -len(str(item[0]))):
        output = output.replace(str(link.relative_to(ROOT)) + os.sep, str(target.relative_to(ROOT)) + os.sep)
        output = output.replace(str(link.relative_to(ROOT)) + ":", str(target.relative_to(ROOT)) + ":")
    sys.stdout.write(output)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

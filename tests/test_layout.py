"""The layout: measurement (bench/, installed as ``avatarstream.bench``) sits above the product and imports it;
the product (engines/, export/, realtime/, web/ and the ``avatarstream`` package with its cli/ and integrations/)
never imports measurement. ``avatar bench`` (avatarstream/cli/bench.py) is the one entry point: it names the suites
as strings and imports them when a suite runs, never at module level. The bench extra's libraries (matplotlib,
psutil) are imported by bench/ only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("engines", "export", "realtime", "web", "avatarstream")
ENTRY = REPO / "avatarstream" / "cli" / "bench.py"
BENCH_EXTRA = ("matplotlib", "psutil")


def _package(path: Path) -> list[str]:
    """The installed package name of a repository file's folder, as parts (``engines/lite`` -> avatarstream.engines.lite)."""
    folder = path.parent.relative_to(REPO).parts
    return ["avatarstream", *folder] if folder[0] != "avatarstream" else list(folder)


def _imports(source: str, package: list[str]) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, at module level) for every import in ``source``; relative imports are resolved
    against ``package``."""
    tree = ast.parse(source)
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) not in in_function) for name in names]
    return found


def _product_files() -> list[Path]:
    files = [p for top in PRODUCT for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 100, "the product's folders were not found"
    return files


def _is_bench(name: str) -> bool:
    return name == "avatarstream.bench" or name.startswith("avatarstream.bench.") or name.split(".")[0] == "bench"


def test_product_never_imports_measurement():
    wrong = []
    for path in _product_files():
        for name, line, top_level in _imports(path.read_text(), _package(path)):
            if _is_bench(name) and (path != ENTRY or top_level):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "product modules import the measurement package:\n" + "\n".join(wrong)


def test_the_bench_extra_is_imported_by_measurement_only():
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}" for path in _product_files()
             for name, line, _ in _imports(path.read_text(), _package(path)) if name.split(".")[0] in BENCH_EXTRA]
    assert not wrong, "product modules import the bench extra's libraries:\n" + "\n".join(wrong)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert not [lib for lib in BENCH_EXTRA if lib in required], "the bench extra leaked into the dependencies"
    assert all(any(d.startswith(lib) for d in project["optional-dependencies"]["bench"]) for lib in BENCH_EXTRA)


def test_the_scan_sees_an_import_of_measurement():
    """The scan is not blind: module-level, relative and lazy imports of bench are all found."""
    source = "from ...bench import speech\n\n\ndef f():\n    import avatarstream.bench.timing\n"
    package = _package(REPO / "engines" / "lite" / "engine.py")
    names = [(n, top) for n, _, top in _imports(source, package) if _is_bench(n)]
    assert ("avatarstream.bench", True) in names and ("avatarstream.bench.timing", False) in names, names


def test_suites_are_named_in_the_entry_point_and_live_in_bench():
    from avatarstream.cli.bench import SUITES

    assert SUITES and all(module.startswith("avatarstream.bench.") for module in SUITES.values()), SUITES
    for module in SUITES.values():
        rel = Path(*module.split(".")[2:])
        assert (REPO / "bench" / rel.with_suffix(".py")).is_file() or (REPO / "bench" / rel / "__init__.py").is_file(), module


@pytest.mark.timeout(120)
def test_product_imports_leave_measurement_unloaded():
    """Importing the server, the engines' contract and the CLI loads nothing of avatarstream.bench."""
    code = ("import sys, json\n"
            "import avatarstream, avatarstream.cli, avatarstream.cli.bench, avatarstream.realtime.http.app\n"
            "import avatarstream.engines.registry, avatarstream.engines.lite.engine\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('avatarstream.bench'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

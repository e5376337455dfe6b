"""The layers README states, each checked over every import of the product (module level, inside functions,
relative, under TYPE_CHECKING) and each with a probe: a synthetic source that breaks the rule, which the check
must report (a rule that cannot fail proves nothing).

Top to bottom (installed names; pyproject.toml's package-dir maps the folders, read here):

* ``avatarstream.cli`` and ``avatarstream.bench`` (measurement) sit above everything; the product never imports
  measurement. ``avatar bench`` (avatarstream/cli/bench.py) is the one entry point: it names the suites as
  strings and imports them when a suite runs, never at module level. The bench extra's libraries (matplotlib,
  psutil) are imported by bench/ only.
* the server: ``realtime/http/``, ``realtime/cluster/`` (and the Python client ``realtime/client.py``).
* the transports: ``realtime/transports/<name>/`` (webrtc, agent, ...), one folder each; they never import the
  server, the client or the CLI.
* the session layer: ``realtime/session/``, ``realtime/config.py`` and the modules beside it (clock, playback,
  errors, memory, video_settings), with the transport contract ``realtime/transports/base.py``. It knows no
  transport: it imports no module of ``realtime/transports/`` but the contract, nothing of the server, the
  client, the CLI or ``avatarstream.integrations``, and no transport library (aiortc, aiohttp, websockets).
* the engines (``engines/``) import only ``avatarstream.engines``: never realtime/, export/, the CLI or the server.
* ``export/`` (a build tool above the engines) never imports realtime/ or the CLI.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
MEASUREMENT = "avatarstream.bench"
PRODUCT = {package: folder for package, folder in PACKAGE_DIR.items() if package != MEASUREMENT}
ENTRY = REPO / "avatarstream" / "cli" / "bench.py"
BENCH_EXTRA = ("matplotlib", "psutil")

RT = "avatarstream.realtime"
TRANSPORTS = f"{RT}.transports"
CONTRACT = f"{TRANSPORTS}.base"
SESSION_LAYER = (f"{RT}.session", f"{RT}.config", f"{RT}.clock", f"{RT}.playback", f"{RT}.errors", f"{RT}.memory",
                 f"{RT}.video_settings", CONTRACT)
SERVER = (f"{RT}.http", f"{RT}.cluster", f"{RT}.client", "avatarstream.cli")
INTEGRATIONS = "avatarstream.integrations"  # agent-framework adapters: in-process readers up to a whole local server
TRANSPORT_LIBRARIES = ("aiortc", "aiohttp", "websockets")


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module(path: Path) -> str:
    """The installed module name of a repository file (``engines/lite/engine.py`` -> avatarstream.engines.lite.engine)."""
    rel = path.relative_to(REPO)
    for package, folder in sorted(PACKAGE_DIR.items(), key=lambda item: -len(item[1])):
        if rel.parts[: len(Path(folder).parts)] == Path(folder).parts:
            parts = [*package.split("."), *rel.parts[len(Path(folder).parts):]]
            parts[-1] = parts[-1].removesuffix(".py")
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(f"{rel} is under no folder of pyproject's package-dir")


def _imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, at module level) for every import in ``source``; relative imports are resolved
    against ``module``'s package. ``from a import b`` yields both ``a`` and ``a.b``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
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
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            names = [name] + [f"{name}.{a.name}" for a in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) not in in_function) for name in names]
    return found


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[str], bool]  # to the importing module
    forbidden: Callable[[str, str, bool], bool]  # (importing module, imported name, at module level)
    probe: tuple[str, str]  # (a repository file, a source that breaks the rule there)

    def violations(self, files: list[tuple[Path, str]]) -> list[str]:
        wrong = []
        for path, source in files:
            module = _module(path)
            if not self.applies(module):
                continue
            for name, line, top_level in _imports(source, module, path.name == "__init__.py"):
                if self.forbidden(module, name, top_level):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
        return wrong


def _bench_import(module: str, name: str, top_level: bool) -> bool:
    lazy_entry = module == "avatarstream.cli.bench" and not top_level  # the suites, when one runs
    return (_within(name, MEASUREMENT) or name.split(".")[0] == "bench") and not lazy_entry


RULES = [
    Rule("the session layer imports no transport but the contract (transports/base.py)",
         lambda m: _within(m, SESSION_LAYER),
         lambda m, n, _: _within(n, TRANSPORTS) and n != TRANSPORTS and not _within(n, CONTRACT),
         ("realtime/session/registry.py", "from avatarstream.realtime.transports.webrtc.shared_video import X\n")),
    Rule("the session layer imports nothing of the server, the client, the CLI or the integrations",
         lambda m: _within(m, SESSION_LAYER),
         lambda m, n, _: _within(n, (*SERVER, INTEGRATIONS)),
         ("realtime/config.py", "def f():\n    from .http import keys\n")),
    Rule("the session layer imports no transport library (aiortc, aiohttp, websockets)",
         lambda m: _within(m, SESSION_LAYER),
         lambda m, n, _: n.split(".")[0] in TRANSPORT_LIBRARIES,
         ("realtime/session/admission.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aiortc\n")),
    Rule("transports never import the server, the client or the CLI",
         lambda m: _within(m, TRANSPORTS),
         lambda m, n, _: _within(n, SERVER),
         ("realtime/transports/webrtc/peer.py", "from avatarstream.realtime.http.errors import x\n")),
    Rule("engines import only the engines (never realtime/, export/, the CLI, the server or bench)",
         lambda m: _within(m, "avatarstream.engines"),
         lambda m, n, _: n.split(".")[0] == "avatarstream" and not _within(n, "avatarstream.engines"),
         ("engines/lite/engine.py", "import avatarstream.realtime.clock\n")),
    Rule("export/ never imports realtime/ or the CLI",
         lambda m: _within(m, "avatarstream.export"),
         lambda m, n, _: _within(n, (RT, "avatarstream.cli", INTEGRATIONS)),
         ("export/__init__.py", "from ..cli import main\n")),
    Rule("the product never imports measurement (bench/), but the entry point's suites when one runs",
         lambda m: not _within(m, MEASUREMENT),
         _bench_import,
         ("engines/lite/engine.py", "def f():\n    from ...bench import speech\n")),
    Rule("the bench extra's libraries (matplotlib, psutil) are imported by bench/ only",
         lambda m: not _within(m, MEASUREMENT),
         lambda m, n, _: n.split(".")[0] in BENCH_EXTRA,
         ("realtime/http/metrics.py", "import psutil\n")),
]


def _product_files() -> list[tuple[Path, str]]:
    paths = [p for folder in PRODUCT.values() for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(paths) > 100, "the product's folders were not found"
    return [(p, p.read_text()) for p in paths]


@pytest.fixture(scope="module")
def product_files() -> list[tuple[Path, str]]:
    return _product_files()


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layer_rule_holds(rule: Rule, product_files):
    wrong = rule.violations(product_files)
    assert not wrong, f"broken: {rule.name}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layer_rule_can_fail(rule: Rule):
    """The probe: the rule's own violating import, at a real file's place, is reported; the same file's real
    source is not."""
    where, source = rule.probe
    path = REPO / where
    assert path.is_file(), where
    assert rule.violations([(path, path.read_text() + "\n" + source)]), f"{rule.name}: the probe was not seen"
    assert not rule.violations([(path, path.read_text())])


def _transport_name_tests(source: str) -> list[int]:
    """Lines comparing something with a transport's name (``v.transport == "webrtc"``, ``in ("agent", ...)``)."""
    names = {p.name for p in (REPO / PACKAGE_DIR[RT] / "transports").iterdir() if (p / "__init__.py").is_file()}
    assert {"webrtc", "agent"} <= names, names
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            constants = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else
                                                       getattr(o, "elts", []))]
            if any(isinstance(c, ast.Constant) and c.value in names for c in constants):
                lines.append(node.lineno)
    return lines


def test_the_session_layer_never_tests_a_transport_name(product_files):
    """What a viewer reports crosses the contract typed (``ViewerStats``): the session layer (admission
    included) reads its fields whatever the transport, and never branches on a transport's name."""
    wrong = [f"{p.relative_to(REPO)}:{line}" for p, source in product_files if _within(_module(p), SESSION_LAYER)
             for line in _transport_name_tests(source)]
    assert not wrong, f"the session layer tests a transport's name: {wrong}"
    probe = 'skipped = [v.stats()["video"]["skipped"] for v in viewers if v.transport == "webrtc"]\n'
    assert _transport_name_tests(probe) == [1] and _transport_name_tests('ok = kind in ("agent", "x")\n') == [1]


def test_the_layers_cover_what_the_product_holds(product_files):
    """Every realtime/ module sits in a stated layer (a new top-level module must be placed, not slip past)."""
    placed = (*SESSION_LAYER, *SERVER, TRANSPORTS)
    modules = [(str(p.relative_to(REPO)), _module(p)) for p, _ in product_files]
    loose = [rel for rel, m in modules if _within(m, RT) and m != RT and not _within(m, placed)]
    assert not loose, f"realtime/ modules in no layer of tests/test_layout.py (and README): {loose}"


def test_the_bench_extra_is_declared_as_an_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert not [lib for lib in BENCH_EXTRA if lib in required], "the bench extra leaked into the dependencies"
    assert all(any(d.startswith(lib) for d in project["optional-dependencies"]["bench"]) for lib in BENCH_EXTRA)


def test_suites_are_named_in_the_entry_point_and_live_in_bench():
    from avatarstream.cli.bench import SUITES

    bench = REPO / PACKAGE_DIR[MEASUREMENT]
    assert SUITES and all(module.startswith(MEASUREMENT + ".") for module in SUITES.values()), SUITES
    for module in SUITES.values():
        rel = Path(*module.split(".")[2:])
        assert (bench / rel.with_suffix(".py")).is_file() or (bench / rel / "__init__.py").is_file(), module


@pytest.mark.timeout(120)
def test_product_imports_leave_measurement_unloaded():
    """Importing the server, the engines' contract and the CLI loads nothing of avatarstream.bench."""
    code = ("import sys, json\n"
            "import avatarstream, avatarstream.cli, avatarstream.cli.bench, avatarstream.realtime.http.app\n"
            "import avatarstream.engines.registry, avatarstream.engines.lite.engine\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('avatarstream.bench'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

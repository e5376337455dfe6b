"""The embedded default (lite engine, serve, render) must work without torch installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO / "engines" / "lite" / "portraits"

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('torch', 'torchvision', 'torchaudio', 'transformers', 'diffusers', 'tensorrt'):
                raise ImportError(f'{name} is blocked in this test (simulating a machine without torch)')
            return None
    sys.meta_path.insert(0, _NoTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_cli_parser_and_lite_engine_need_no_torch():
    r = run_without_torch(
        f"""
        from avatarstream.cli import build_parser
        build_parser().parse_args(['serve', '--help']) if False else None
        for cmd in ('serve', 'render', 'bench'):
            try:
                build_parser().parse_args([cmd, '--help'])
            except SystemExit as e:
                assert e.code == 0, cmd
        import numpy as np, cv2
        from avatarstream.engines.registry import load_engine
        from avatarstream.engines.base import Portrait
        img = cv2.cvtColor(cv2.imread(r'{PORTRAITS / "astronaut.jpg"}'), cv2.COLOR_BGR2RGB)
        stream = load_engine('lite').open_stream(Portrait(img), size=256)
        t = np.arange(16000) / 16000
        frames = stream.feed((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)) + stream.flush()
        assert len(frames) >= 24, len(frames)
        assert 'torch' not in sys.modules
        print('ok', len(frames))
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout


def test_neural_engine_without_torch_says_what_to_install():
    r = run_without_torch(
        """
        from avatarstream.engines.registry import load_engine
        from avatarstream.engines.base import EngineError
        try:
            load_engine('joyvasa', weights='/nonexistent')
        except EngineError as e:
            print('error:', e)
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install" in r.stdout and "neural" in r.stdout


# -- one installed namespace ---------------------------------------------------------------------------------------

def _package_dir() -> dict[str, str]:
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "packages" not in cfg, "the folder mapping is written once: package-dir, with setuptools finding packages"
    return cfg["package-dir"]


def test_every_source_folder_is_a_package_setuptools_finds():
    """setuptools finds the packages under each folder of package-dir by their __init__.py: a folder of Python
    modules without one would be left out of every install (the wheel, the Docker image) without an error."""
    package_dir = _package_dir()
    assert package_dir["avatarstream"] == "avatarstream" and len(package_dir) >= 5, package_dir
    missing = [str(p.relative_to(REPO)) for p in _folders_without_init([REPO / f for f in package_dir.values()])]
    assert not missing, f"folders of Python modules that are not packages (no __init__.py): {missing}"


def _folders_without_init(roots: list[Path]) -> list[Path]:
    return sorted({py.parent for root in roots for py in root.rglob("*.py")
                   if "__pycache__" not in py.parts and not (py.parent / "__init__.py").is_file()})


def test_the_package_check_sees_a_folder_without_init(tmp_path):
    """The check above can fail: a module in a folder with no __init__.py is reported."""
    (tmp_path / "pkg" / "loose").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "loose" / "mod.py").write_text("")
    assert _folders_without_init([tmp_path / "pkg"]) == [tmp_path / "pkg" / "loose"]


def test_public_api_names_resolve():
    r = run_without_torch(
        """
        import avatarstream
        assert 'torch' not in sys.modules and 'aiortc' not in sys.modules
        names = avatarstream.__all__
        for name in names:
            getattr(avatarstream, name)
        assert 'torch' not in sys.modules
        print('ok', len(names))
        """
    )
    assert r.returncode == 0, r.stdout + r.stderr


# The install itself (one top-level package, package data, `avatar serve` from the install, outside the
# repository): tests/test_docker_image.py, from exactly the files the Docker image gets.


def test_tree_runner_and_type_check_read_the_mapping_from_pyproject():
    """The source-tree runner (GPU machine) and the type-check link farm take package-dir from pyproject.toml,
    also where tomllib is missing (the runner's fallback parser, Python 3.10)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tree_runner_probe", REPO / "avatarstream" / "cli" / "tree_runner.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    mapping = _package_dir()
    assert runner.package_dir(REPO) == mapping
    assert runner.package_dir_lines((REPO / "pyproject.toml").read_text()) == mapping  # Python 3.10's way
    spec = importlib.util.spec_from_file_location("typecheck_probe", REPO / ".ci" / "typecheck.py")
    typecheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(typecheck)
    linked = {str(link.relative_to(typecheck.TREE)).replace("/", "."): str(target.relative_to(REPO))
              for link, target in typecheck.package_links().items()}
    assert {k: v for k, v in linked.items() if k != "avatarstream" and k in mapping} == \
        {k: v for k, v in mapping.items() if k != "avatarstream"}

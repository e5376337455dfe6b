"""The Docker image builds from the repository as it is, checked the way a machine without a Docker engine can.

The Dockerfile's build context is the repository (what a clone has: tracked files, plus new ones git does not
ignore) filtered by ``.dockerignore``; its ``COPY`` instructions place files under ``WORKDIR`` and ``pip install .``
builds there. This test does the same with the same inputs: it reads the Dockerfile's ``WORKDIR`` / ``COPY`` lines
and ``.dockerignore``, copies exactly those files into a temporary folder, builds the wheel from it (as the image's
``pip install .`` does), installs the wheel into a fresh virtual environment (the dependencies are this checkout's
.venv, reached through a ``.pth``: the image gets them from PyPI) and starts the image's command, ``avatar serve``,
from that install, outside the repository, until ``/health`` answers on 127.0.0.1. What it cannot check: the
``apt-get`` line and the base image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from importlib.metadata import Distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY_TAG = f"python{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = pytest.mark.timeout(180)


# -- the build context -------------------------------------------------------------------------------------------

def context_files(repo: Path = REPO) -> list[str]:
    """The files a clone of the repository has (tracked, or new and not ignored by git), relative paths."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return sorted(p for p in set(out.split("\0")) if p and (repo / p).is_file())


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over slash-separated paths."""
    parts = pattern.split("/")
    regex = ""
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        regex += "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in part)
        regex += "" if last else "/"
    return re.compile(regex + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception ``!``, pattern) in file order; the last rule that matches a path decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        if any(ch in pattern for ch in "[\\"):
            raise AssertionError(f".dockerignore: {raw!r} uses syntax this check does not model ([...] or \\)")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern excludes the path it matches and everything under a folder it matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def image_tree(dest: Path, repo: Path = REPO) -> tuple[Path, list[str]]:
    """Lay out under ``dest`` the files the Dockerfile's COPY instructions put in the image. Returns the folder
    of the ``RUN pip install .`` (its WORKDIR, under ``dest``) and the image paths copied."""
    rules = dockerignore_rules((repo / ".dockerignore").read_text()) if (repo / ".dockerignore").is_file() else []
    context = [p for p in context_files(repo) if not ignored(p, rules)]
    workdir = "/"
    install_dir: str | None = None
    copied: list[str] = []
    for word, args in dockerfile_instructions((repo / "Dockerfile").read_text()):
        if word == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, args))
        elif word == "COPY":
            words = shlex.split(args)
            assert not any(w.startswith("--") for w in words), f"COPY flags are not modelled here: {args}"
            *sources, target = words
            target_dir = target.endswith("/") or target in (".", "./") or len(sources) > 1
            target_abs = os.path.normpath(os.path.join(workdir, target))
            for source in sources:
                src = os.path.normpath(source)
                for path in context:
                    if src == ".":
                        rel = path
                    elif path == src:
                        rel = os.path.basename(path) if target_dir else ""
                    elif path.startswith(src + "/"):
                        rel = path[len(src) + 1:]
                    else:
                        continue
                    image_path = os.path.normpath(os.path.join(target_abs, rel)) if rel else target_abs
                    out = dest / image_path.lstrip("/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(repo / path, out)
                    copied.append(image_path)
        elif word == "RUN" and re.search(r"\bpip install \.(\s|$)", args):
            install_dir = workdir
    assert install_dir is not None, "the Dockerfile has no `RUN pip install .`"
    return dest / install_dir.lstrip("/"), copied


# -- the checks ----------------------------------------------------------------------------------------------------

def test_dockerignore_follows_dockers_matching():
    """The model of .dockerignore used below: a folder pattern excludes what is under it, ``**`` spans folders,
    ``*`` stays within one, and a later ``!`` rule brings a path back."""
    rules = dockerignore_rules(".venv\n**/__pycache__\n*.egg-info\ndocs\n!docs/keep.md\n")
    assert ignored(".venv/lib/x.py", rules) and ignored("realtime/http/__pycache__/app.pyc", rules)
    assert ignored("avatarstream.egg-info/PKG-INFO", rules) and not ignored("engines/x.egg-info", rules)
    assert ignored("docs/server.md", rules) and not ignored("docs/keep.md", rules)
    assert not ignored("realtime/http/app.py", rules) and not ignored("bench/gpu/data/a.json", rules)


@pytest.fixture(scope="module")
def image_install(tmp_path_factory):
    """The image's files, the wheel built from them, and a fresh venv with that wheel installed."""
    tmp = tmp_path_factory.mktemp("image")
    app, copied = image_tree(tmp / "root")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp / "wheels"), str(app)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, ("`pip install .` in the image would fail: the wheel does not build from the "
                                   f"files the Dockerfile copies:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
    (wheel,) = (tmp / "wheels").glob("avatarstream-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = venv / "lib" / PY_TAG / "site-packages"
    # the dependencies: this checkout's .venv, after the venv's own site-packages (whose avatarstream wins)
    import numpy

    deps = Path(numpy.__file__).resolve().parents[1]
    (site / "zz_dependencies.pth").write_text(f"{deps}\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                               timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return {"app": app, "copied": copied, "wheel": wheel, "venv": venv, "site": site, "tmp": tmp}


def test_the_wheel_holds_every_module_of_the_mapped_folders(image_install):
    """Every Python module under a folder pyproject maps into ``avatarstream`` is in the wheel (setuptools finds
    packages by their __init__.py; a folder without one would silently be missing from the image)."""
    import tomllib

    app: Path = image_install["app"]
    mapping = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for path in (app / folder).rglob("*.py"):
            rel = path.relative_to(app / folder)
            expected.add("/".join([*package.split("."), *rel.parts]))
    with zipfile.ZipFile(image_install["wheel"]) as wheel:
        names = wheel.namelist()
    in_wheel = {n for n in names if n.endswith(".py")}
    assert expected and expected == in_wheel, f"differ: {sorted(expected ^ in_wheel)[:20]}"
    tops = {n.split("/")[0] for n in names}  # site-packages gets one name
    assert tops == {"avatarstream", "avatarstream-0.1.0.dist-info"}, tops
    for data in ("avatarstream/web/index.html", "avatarstream/engines/lite/portraits/cat.jpg"):
        assert (image_install["site"] / data).is_file(), data


def test_the_image_dependencies_are_declared_and_present(image_install):
    """Every requirement of the wheel (no extra) resolves in the environment the server runs from."""
    dist = Distribution.at(next(image_install["site"].glob("avatarstream-*.dist-info")))
    code = ("import importlib.metadata as m, sys\n"
            "missing = []\n"
            "for name in sys.argv[1:]:\n"
            "    try: m.version(name)\n"
            "    except m.PackageNotFoundError: missing.append(name)\n"
            "print(missing)\n")
    names = [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    assert "aiortc" in names and "numpy" in names, names
    out = subprocess.run([str(image_install["venv"] / "bin" / "python"), "-c", code, *names], capture_output=True,
                         text=True, timeout=60, cwd=image_install["tmp"], env=_clean_env())
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_avatar_serve_starts_from_the_image_install_and_answers_health(image_install):
    """The image's command (``avatar serve``, the console script the wheel installs) serves from the installed
    copy, not from the repository."""
    venv: Path = image_install["venv"]
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import avatarstream.realtime.http.app as a; print(a.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=image_install["tmp"], env=_clean_env())
    assert where.stdout.strip().startswith(str(image_install["site"])), where.stdout + where.stderr
    port = _free_port()
    log_path = image_install["tmp"] / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(venv / "bin" / "avatar"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=image_install["tmp"], env=_clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        health = json.loads(_wait_for(f"http://127.0.0.1:{port}/health", proc, log_path))
        assert health["status"] == "ok", health
        assert "<video" in _wait_for(f"http://127.0.0.1:{port}/", proc, log_path)  # the page, from package data
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _clean_env() -> dict[str, str]:
    """No path or key of this checkout leaks in: the install alone must serve."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AVATARSTREAM_API_KEY", "VIRTUAL_ENV")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"avatar serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in 90 s:\n{log_path.read_text()[-3000:]}")

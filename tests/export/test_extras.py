"""pyproject's extras: a GPU install gets exactly one onnxruntime.

``onnxruntime`` and ``onnxruntime-gpu`` both install the module ``onnxruntime``; installed together, whichever
pip wrote last shadows the other (the CUDA provider vanishes, or the CPU build is half overwritten). The CPU
package lives in the ``cpu`` extra, the GPU one in ``gpu``; a GPU server installs ``neural`` + ``gpu`` and may add
the server-side extras. What each extra provides is read from pyproject and, for the packages installed here,
from their own declared requirements (pipecat-ai, for one, requires onnxruntime itself).
"""

from __future__ import annotations

import itertools
import re
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
requirements = pytest.importorskip("packaging.requirements", reason="packaging not installed")

REPO = Path(__file__).resolve().parents[2]
ORT = {"onnxruntime", "onnxruntime-gpu"}
# Extras that are never part of a GPU server's install: the CPU runtime, the test tools, and the Pipecat service
# (which runs in the voice agent's process and requires CPU onnxruntime itself; see pyproject's comment).
NOT_ON_GPU_SERVER = {"cpu", "test", "pipecat"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _provided(reqs: list[str], depth: int = 3) -> set[str]:
    """Distribution names ``reqs`` bring in: the requirements themselves and, for installed ones, their
    unconditional requirements (and requested extras), ``depth`` levels down."""
    seen: set[str] = set()
    frontier = [requirements.Requirement(r) for r in reqs]
    for _ in range(depth + 1):
        nxt = []
        for req in frontier:
            name = _name(req.name)
            if name in seen and not req.extras:
                continue
            seen.add(name)
            try:
                declared = metadata.requires(req.name) or []
            except metadata.PackageNotFoundError:
                continue
            for text in declared:
                sub = requirements.Requirement(text)
                marker = sub.marker
                if marker is None or any(marker.evaluate({"extra": e}) for e in req.extras) or marker.evaluate({"extra": ""}):
                    nxt.append(sub)
        frontier = nxt
    return seen


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_cpu_and_gpu_extras_each_bring_one_onnxruntime(project):
    extras = project["optional-dependencies"]
    assert {_name(requirements.Requirement(r).name) for r in extras["cpu"]} & ORT == {"onnxruntime"}
    assert {_name(requirements.Requirement(r).name) for r in extras["gpu"]} & ORT == {"onnxruntime-gpu"}
    assert not _provided(project["dependencies"]) & ORT, "the base install must not bring an onnxruntime"
    assert not _provided(extras["neural"]) & ORT, "neural must leave the onnxruntime choice to cpu / gpu"


def test_no_gpu_install_gets_both_onnxruntimes(project):
    extras = project["optional-dependencies"]
    server = sorted(set(extras) - NOT_ON_GPU_SERVER)
    assert "gpu" in server and "neural" in server
    base = project["dependencies"]
    for k in range(1, len(server) + 1):
        for combo in itertools.combinations(server, k):
            if "gpu" not in combo:
                continue
            got = _provided(base + [r for e in combo for r in extras[e]]) & ORT
            assert got == {"onnxruntime-gpu"}, f"pip install '.[{','.join(combo)}]' installs {sorted(got)}"


def test_extras_left_off_the_gpu_server_do_bring_cpu_onnxruntime(project):
    """Why they are left off: each would add CPU onnxruntime next to onnxruntime-gpu (pipecat-ai through its own
    requirements, checked where it is installed)."""
    extras = project["optional-dependencies"]
    assert "onnxruntime" in _provided(extras["cpu"])
    try:
        metadata.version("pipecat-ai")
    except metadata.PackageNotFoundError:
        pytest.skip("pipecat-ai not installed (pip install '.[pipecat]'): its requirements cannot be read")
    for extra in ("pipecat", "test"):
        assert "onnxruntime" in _provided(extras[extra]), extra


def test_ci_installs_the_cpu_runtime():
    setup = (REPO / ".ci" / "setup").read_text()
    installs = re.findall(r"pip install -q -e '\.\[([a-z,]+)\]'", setup)
    assert installs and {"neural", "cpu", "test"} <= set(installs[0].split(","))

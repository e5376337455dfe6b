"""``avatar bench --suite gpu``: refuses without a GPU; ``--dry-run`` runs the same code on CPU, from the bare
tree as the GPU machine runs it (``avatarstream/cli/tree_runner.py``, without av/aiortc/dlib/tensorrt/psutil/
matplotlib/aiohttp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the gpu suite needs torch (pip install 'avatarstream[neural]')")

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "avatarstream" / "cli" / "tree_runner.py"
ABSENT_ON_GPU_MACHINE = ("av", "aiortc", "dlib", "tensorrt", "psutil", "matplotlib", "aiohttp", "playwright")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {ABSENT_ON_GPU_MACHINE!r}:\n"
        "    sys.modules[name] = None  # as if not installed\n")
    env = {**os.environ, "PYTHONPATH": str(block)}
    return subprocess.run([sys.executable, str(RUNNER), "bench", "--suite", "gpu", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the suite would run for real")
def test_refuses_without_a_gpu(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr + proc.stdout


def test_dry_run_from_the_bare_tree(tmp_path):
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    result = report["result"]
    assert report["suite"] == "gpu" and result["device"] == "cpu"
    rows = result["renderer"]["rows"]
    assert {(r["mode"], r["batch"]) for r in rows} == {("eager_fp32", 1), ("eager_fp32", 2)}
    assert all(r["ms_per_frame"] > 0 for r in rows)
    assert result["joyvasa"]["eager_fp32"]["window_ms"] > 0
    workers = result["worker"]["rows"]
    assert [w["sessions"] for w in workers] == [1, 2]
    assert all(w["fps_total"] > 0 and w["min_session_chunks"] >= 1 for w in workers)
    assert "skipped" in result["parity"]
    motion = result["motion_worker"]["rows"]
    assert [m["sessions"] for m in motion] == [1, 2, 4, 8]
    for m in motion:
        for mode in ("alone", "worker"):
            assert m[mode]["windows_per_s"] > 0 and m[mode]["min_session_windows"] >= 1, m
        assert m["worker_vs_alone"] > 0
    assert motion[-1]["worker"]["multi_session_calls"] >= 1  # 8 sessions back to back share DiT calls
    png = Path(result["plot"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

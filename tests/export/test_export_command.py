"""``avatar export`` end to end on the small stages, and its error messages."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import json

from avatarstream.cli import main


def test_export_small_stages_with_parity(tmp_path, capsys):
    out = tmp_path / "engines"
    rc = main(["export", "--out", str(out), "--stages", "stitching,stitching_lip,stitching_eye"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"stitching", "stitching_lip", "stitching_eye"}
    assert manifest["stages"]["stitching"]["inputs"] == ["x"]
    assert len(manifest["stages"]["stitching"]["sha256"]) == 64
    parity = json.loads((out / "parity.json").read_text())
    assert [p["backend"] for p in parity] == ["onnxruntime"] * 3
    assert all(p["within_bound"] and p["relative"] < 1e-4 for p in parity)
    assert "stitching" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--stages", "nose"], "unknown stages"),
    (["--weights", "/nonexistent/weights"], "is not a directory"),
])
def test_export_errors(argv, message, tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err


def test_tensorrt_backend_names_what_is_missing(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("tensorrt and a CUDA GPU are present (see test_tensorrt.py)")
        expected = "no CUDA GPU"
    except ImportError:
        expected = "tensorrt not installed"
    assert main(["export", "--out", str(tmp_path), "--backend", "tensorrt", "--stages", "stitching"]) == 1
    assert expected in capsys.readouterr().err


def test_export_with_official_layout_weights(tmp_path):
    """--weights reads the official file layout (written here with random values by the LivePortrait helper)."""
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints

    weights = tmp_path / "pretrained_weights"
    write_random_checkpoints(weights, seed=5)
    out = tmp_path / "engines"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--stages", "stitching_eye"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == str(weights)

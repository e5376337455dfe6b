"""``avatar bench --engine export`` smoke run on the cheap stages: JSON fields, ratios, parity and the PNG."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

from avatarstream.cli.bench import BenchOptions


def test_bench_small_stages(tmp_path):
    from avatarstream.bench.export import run_bench

    opts = BenchOptions(out_dir=tmp_path, quick=True, backend="all")
    report = run_bench(opts, stages=["stitching", "stitching_eye"])
    assert report["backends"][:2] == ["torch", "onnxruntime"]
    if "tensorrt" not in report["backends"]:
        assert report["skipped_backends"]["tensorrt"] in ("tensorrt not installed", "no CUDA GPU", "needs --device cuda")
    entry = report["stages"]["stitching"]["1"]
    assert entry["torch"]["median_ms"] > 0 and entry["onnxruntime"]["median_ms"] > 0
    assert entry["torch"]["speedup_vs_eager_torch"] == 1.0
    assert entry["onnxruntime"]["speedup_vs_eager_torch"] > 0
    assert entry["onnxruntime"]["parity_relative"] < 1e-4
    png = tmp_path / "export_bench.png"
    assert report["plot"] == str(png) and png.stat().st_size > 10_000

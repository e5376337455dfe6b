"""Per-stage ``--backend`` choice and opening the chosen runtimes from an export directory."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.backend_choice import open_stage_runtimes, parse_backend_choice
from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.export.exporter import export_all
from avatarstream.export.parity import compare_outputs


def test_parse_forms():
    stages = ["stitching", "warping_spade", "audio_encoder"]
    assert parse_backend_choice("torch", stages) == dict.fromkeys(stages, "torch")
    assert parse_backend_choice("tensorrt", stages) == dict.fromkeys(stages, "tensorrt")
    assert parse_backend_choice("warping_spade=tensorrt,audio_encoder=onnxruntime", stages) == {
        "stitching": "torch", "warping_spade": "tensorrt", "audio_encoder": "onnxruntime"}
    assert parse_backend_choice("default=onnxruntime, stitching=torch", stages) == {
        "stitching": "torch", "warping_spade": "onnxruntime", "audio_encoder": "onnxruntime"}
    with pytest.raises(EngineError, match="unknown backend"):
        parse_backend_choice("stitching=tvm", stages)
    with pytest.raises(EngineError, match="unknown stage"):
        parse_backend_choice("mouth=torch", stages)


def test_open_mixed_runtimes(tmp_path):
    source = NetworkSource(seed=4)
    export_all(source, tmp_path, stages=["stitching", "stitching_lip"], progress=False)
    choice = parse_backend_choice("stitching=onnxruntime", ["stitching", "stitching_lip"])
    runtimes = open_stage_runtimes(choice, source=source, engines_dir=tmp_path)
    assert {n: r.backend for n, r in runtimes.items()} == {"stitching": "onnxruntime", "stitching_lip": "torch"}
    spec = get_stage("stitching")
    feeds = {"x": spec.example_inputs(3, torch.Generator().manual_seed(0))[0]}
    eager = spec.build(source)
    (err,) = compare_outputs({"delta": eager(feeds["x"])}, runtimes["stitching"].run(feeds), ["delta"])
    assert err.relative < 1e-4
    with pytest.raises(EngineError, match="no TensorRT engine"):
        open_stage_runtimes({"stitching": "tensorrt"}, source=source, engines_dir=tmp_path)
    with pytest.raises(EngineError, match="no ONNX graph for stitching_eye"):
        open_stage_runtimes({"stitching_eye": "onnxruntime"}, source=source, engines_dir=tmp_path)
    with pytest.raises(EngineError, match="need the ENGINES_DIR"):
        open_stage_runtimes({"stitching": "onnxruntime"}, source=source)

"""StageRuntime implementations: torch and onnxruntime CPU here; onnxruntime CUDA and TensorRT where they exist."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.network_source import NetworkSource
from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime, StageRuntime, TorchRuntime, open_runtime
from avatarstream.export.exporter import export_stage
from avatarstream.export.parity import FP32_RELATIVE_BOUND, compare_outputs


@pytest.fixture(scope="module")
def stitching(tmp_path_factory):
    source = NetworkSource(seed=3)
    spec = get_stage("stitching")
    graph = export_stage(spec, source, tmp_path_factory.mktemp("rt"))
    return spec, source, graph


def _feeds(spec, batch: int, device: str = "cpu"):
    inputs = spec.example_inputs(batch, torch.Generator().manual_seed(batch))
    return {n: t.to(device) for n, t in zip(spec.input_names, inputs)}


def test_torch_and_onnxruntime_agree_across_batches(stitching):
    spec, source, graph = stitching
    eager = open_runtime("torch", module_factory=lambda: spec.build(source), input_names=spec.input_names,
                         output_names=spec.output_names)
    ort_rt = open_runtime("onnxruntime", onnx_path=graph.path)
    assert isinstance(eager, StageRuntime) and isinstance(ort_rt, StageRuntime)
    assert ort_rt.input_names == spec.input_names and ort_rt.output_names == spec.output_names
    for batch in (1, 5, 16):
        feeds = _feeds(spec, batch)
        (err,) = compare_outputs(eager.run(feeds), ort_rt.run(feeds), spec.output_names)
        assert err.relative <= FP32_RELATIVE_BOUND


def test_clear_errors(stitching, tmp_path):
    spec, source, graph = stitching
    with pytest.raises(EngineError, match="unknown backend"):
        open_runtime("openvino", onnx_path=graph.path)
    with pytest.raises(EngineError, match="run 'avatar export' first"):
        open_runtime("onnxruntime", onnx_path=tmp_path / "absent.onnx")
    with pytest.raises(EngineError, match="missing stage inputs"):
        OnnxRuntime(graph.path).run({})
    with pytest.raises(EngineError, match="missing stage inputs"):
        TorchRuntime(spec.build(source), spec.input_names, spec.output_names).run({"y": torch.zeros(1)})


def _require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def test_onnxruntime_cuda_io_binding(stitching):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    _require_cuda()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")
    spec, source, graph = stitching
    runtime = OnnxRuntime(graph.path, device="cuda")
    eager = TorchRuntime(spec.build(source), spec.input_names, spec.output_names)
    for batch in (2, 2, 7):  # the second call reuses the learned output shapes
        feeds = _feeds(spec, batch, "cuda")
        out = runtime.run(feeds)
        assert out["delta"].is_cuda
        (err,) = compare_outputs(eager.run({k: v.cpu() for k, v in feeds.items()}), out, spec.output_names)
        assert err.relative <= FP32_RELATIVE_BOUND

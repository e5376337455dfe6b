"""The real warping + SPADE code in LivePortrait's narrow test configuration: dynamic batch and both grid samples."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import onnx
from small_warp import small_warp_stage, warp_inputs

from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime
from avatarstream.export.grid_sample_5d import grid_sample_mode
from avatarstream.export.onnx_export import export_onnx
from avatarstream.export.parity import FP32_RELATIVE_BOUND, compare_outputs, run_eager


@pytest.fixture(scope="module")
def small_stage():
    return small_warp_stage()


@pytest.mark.parametrize("mode", ["native", "decomposed"])
def test_small_warping_spade_batch_and_decomposed(mode, small_stage, tmp_path):
    spec = get_stage("warping_spade")
    with grid_sample_mode(mode):
        graph = export_onnx(small_stage, warp_inputs(1, 0), tmp_path / f"ws-{mode}.onnx", input_names=spec.input_names,
                            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
    samples = [n for n in onnx.load(str(graph.path)).graph.node if n.op_type == "GridSample"]
    assert len(samples) == (2 if mode == "native" else 4)  # dense-motion sample + final warp
    runtime = OnnxRuntime(graph.path, threads=2)
    for batch in (2,):
        inputs = warp_inputs(batch, batch)
        reference = run_eager(small_stage, inputs, spec.output_names)
        (err,) = compare_outputs(reference, runtime.run(dict(zip(spec.input_names, inputs))), spec.output_names)
        assert reference["image"].shape == (batch, 3, 512, 512)
        assert err.relative <= FP32_RELATIVE_BOUND, (mode, batch, err)

"""Mixed-precision FP16 graphs (``export.fp16_graph``, ``avatar export --precision fp16``) on small networks.

onnxruntime 1.32's CPU provider has FP16 kernels for data movement only (Shape, Reshape, Transpose, Gather, ...)
and for LayerNormalization; for Conv, MatMul, Gemm, the elementwise ops, InstanceNormalization and Resize it
inserts Casts and computes in FP32. On CPU the parity below therefore measures the FP16 storage of every
tensor between ops (what a strongly typed TensorRT engine stores too), not FP16 accumulation inside kernels.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import onnx
import small_warp
import torch
from onnx import TensorProto

from avatarstream.cli import main
from avatarstream.engines.runtimes.stage_registry import get_stage
from avatarstream.engines.runtimes.stage_runtime import OnnxRuntime
from avatarstream.export.fp16_graph import convert_to_fp16, write_fp16_graph
from avatarstream.export.grid_sample_5d import grid_sample_mode
from avatarstream.export.onnx_export import export_onnx
from avatarstream.export.parity import FP16_RELATIVE_BOUND, compare_outputs, run_eager
from avatarstream.export.tensorrt_build import graph_has_fp16

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


@pytest.fixture(scope="module")
def small_warp_stage():
    return small_warp.small_warp_stage()


def _warp_inputs(batch: int, seed: int):
    # 32x32 (the real graph's 64x64 halved): which ops run in FP16 / FP32 does not depend on the spatial size
    return small_warp.warp_inputs(batch, seed, size=32)


@pytest.mark.parametrize("mode", ["native", "decomposed"])
def test_small_warping_fp16_graph(mode, small_warp_stage, tmp_path):
    spec = get_stage("warping_spade")
    with grid_sample_mode(mode):
        graph = export_onnx(small_warp_stage, _warp_inputs(1, 0), tmp_path / "ws.onnx", input_names=spec.input_names,
                            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
    report = write_fp16_graph(graph.path, tmp_path / "ws.fp16.onnx")
    model = onnx.load(str(tmp_path / "ws.fp16.onnx"))
    types = _types(model)
    assert graph_has_fp16(tmp_path / "ws.fp16.onnx") and not graph_has_fp16(graph.path)
    assert {model.graph.input[i].type.tensor_type.elem_type for i in range(3)} == {FLOAT}  # I/O stay FP32
    assert model.graph.output[0].type.tensor_type.elem_type == FLOAT
    # The pinned subgraph: every GridSample (volume and grid), the mask softmax and what feeds the grids are FP32.
    for node in model.graph.node:
        if node.op_type in ("GridSample", "Softmax"):
            assert all(types[x] == FLOAT for x in node.input), node.name
            assert types[node.output[0]] == FLOAT, node.name
    # The heavy path is FP16: every convolution computes on FP16 inputs and weights.
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[x] == FLOAT16 for n in convs for x in n.input), "a Conv left in FP32"
    assert report.fp32_ops["GridSample"] == (2 if mode == "native" else 4)
    assert "Conv" not in report.fp32_ops and report.fp16_nodes > 100

    spec_feeds = dict(zip(spec.input_names, _warp_inputs(2, 2)))
    reference = run_eager(small_warp_stage, tuple(spec_feeds.values()), spec.output_names)
    fp32 = OnnxRuntime(graph.path, threads=2).run(spec_feeds)
    fp16 = OnnxRuntime(tmp_path / "ws.fp16.onnx", threads=2).run(spec_feeds)
    assert fp16["image"].dtype == torch.float32
    (vs_graph,) = compare_outputs(fp32, fp16, spec.output_names)
    (vs_torch,) = compare_outputs(reference, fp16, spec.output_names)
    print(f"\nsmall warping+SPADE ({mode}) FP16 graph vs FP32 graph: {vs_graph.relative:.2e}, vs eager torch: "
          f"{vs_torch.relative:.2e}")
    assert vs_graph.relative < FP16_RELATIVE_BOUND and vs_torch.relative < FP16_RELATIVE_BOUND
    assert vs_graph.relative > 1e-6  # it really computes something in FP16


def test_small_dit_fp16_graph_keeps_step_embedding_fp32(tmp_path):
    pytest.importorskip("transformers", reason="the joyvasa networks need transformers (pip install '.[neural]')")
    from avatarstream.engines.joyvasa.checkpoint import SMALL_CONFIG, small_motion_generator
    from avatarstream.engines.joyvasa.stages import DenoiseStage

    spec = get_stage("dit_denoise")
    stage = DenoiseStage(small_motion_generator(seed=0)).eval()

    def inputs(windows: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        rows, dim = 2 * windows, SMALL_CONFIG.feature_dim
        return (torch.randn(rows, 100, 70, generator=g), torch.randn(rows, 100, dim, generator=g),
                torch.randn(rows, 25, 70, generator=g), torch.randn(rows, 25, dim, generator=g),
                torch.full((rows,), 3, dtype=torch.int64))

    graph = export_onnx(stage, inputs(1, 0), tmp_path / "dit.onnx", input_names=spec.input_names,
                        output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
    converted, report = convert_to_fp16(onnx.load(str(graph.path)))
    onnx.save(converted, str(tmp_path / "dit.fp16.onnx"))
    types = _types(converted)
    # The step arrives as int64; its float embedding (Cast of the integer, then light ops) stays FP32 until the
    # first matrix product, where a Cast to FP16 appears.
    step_casts = [n for n in converted.graph.node if n.op_type == "Cast" and types.get(n.input[0]) == TensorProto.INT64
                  and types[n.output[0]] in (FLOAT, FLOAT16)]
    assert step_casts and all(types[n.output[0]] == FLOAT for n in step_casts)
    assert report.fp32_ops["Softmax"] == sum(n.op_type == "Softmax" for n in converted.graph.node)
    matmuls = [n for n in converted.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(types[n.output[0]] == FLOAT16 for n in matmuls)

    feeds = dict(zip(spec.input_names, inputs(2, 5)))
    reference = run_eager(stage, tuple(feeds.values()), spec.output_names)
    (err,) = compare_outputs(reference, OnnxRuntime(tmp_path / "dit.fp16.onnx").run(feeds), spec.output_names)
    print(f"\nsmall DiT denoise FP16 graph vs eager torch: {err.relative:.2e}")
    assert 1e-6 < err.relative < FP16_RELATIVE_BOUND


def test_export_precision_fp16_writes_fp16_graphs(tmp_path, capsys):
    """``avatar export --precision fp16``: the DiT gets a FP16 graph (recorded in the manifest, parity-gated at
    1e-2), the stitching MLPs (keypoint math) stay FP32 graphs gated at 1e-4."""
    pytest.importorskip("transformers", reason="the joyvasa networks need transformers (pip install '.[neural]')")
    out = tmp_path / "engines"
    assert main(["export", "--out", str(out), "--precision", "fp16", "--stages", "stitching_eye,dit_denoise"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    dit, eye = manifest["stages"]["dit_denoise"], manifest["stages"]["stitching_eye"]
    assert (dit["precision"], dit["path"], dit["fp32_path"]) == ("fp16", "dit_denoise.fp16.onnx", "dit_denoise.onnx")
    assert dit["metadata"]["precision"] == "fp16" and dit["fp16_conversion"]["fp16_nodes"] > 0
    assert graph_has_fp16(out / dit["path"]) and not graph_has_fp16(out / dit["fp32_path"])
    assert (eye["precision"], eye["path"]) == ("fp32", "stitching_eye.onnx")
    parity = {p["stage"]: p for p in json.loads((out / "parity.json").read_text())}
    assert parity["dit_denoise"]["precision"] == "fp16" and parity["dit_denoise"]["bound"] == FP16_RELATIVE_BOUND
    assert 1e-7 < parity["dit_denoise"]["relative"] < FP16_RELATIVE_BOUND
    assert parity["stitching_eye"]["precision"] == "fp32" and parity["stitching_eye"]["relative"] < 1e-4
    print(f"\nreal-shape DiT denoise (random weights) FP16 graph vs eager torch: {parity['dit_denoise']['relative']:.2e}")

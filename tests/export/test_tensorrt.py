"""TensorRT engines: build + cache, preallocated buffers, CUDA-graph replay, FP32 parity and FP16 report.

Runs where ``tensorrt`` and a CUDA GPU exist; skipped otherwise with the missing piece named.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import torch
import torch.nn.functional as F

trt = pytest.importorskip("tensorrt", reason="tensorrt not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from avatarstream.engines.runtimes.network_source import NetworkSource  # noqa: E402
from avatarstream.engines.runtimes.stage_registry import get_stage  # noqa: E402
from avatarstream.engines.runtimes.stage_runtime import TensorRTRuntime, TorchRuntime  # noqa: E402
from avatarstream.engines.runtimes.stage_spec import ProfileShapes  # noqa: E402
from avatarstream.export.exporter import export_stage  # noqa: E402
from avatarstream.export.grid_sample_5d import grid_sample_5d  # noqa: E402
from avatarstream.export.onnx_export import export_onnx  # noqa: E402
from avatarstream.export.parity import FP32_RELATIVE_BOUND, compare_outputs  # noqa: E402
from avatarstream.export.tensorrt_build import TensorRTVersion, build_engine  # noqa: E402

VERSION = TensorRTVersion.of(trt)


class _Sampler(torch.nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, volume, grid):
        return grid_sample_5d(volume, grid, False, self.mode)


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("mode", ["native", "decomposed"])
def test_grid_sample_engine(mode, fp16, tmp_path):
    if mode == "native" and not VERSION.native_grid_sample_5d:
        pytest.skip(f"TensorRT {trt.__version__} has no 5-D GridSample (arrives in 11.2; use decomposed)")
    if fp16 and VERSION.strongly_typed_only:
        pytest.skip(f"TensorRT {trt.__version__} is strongly typed only: FP16 needs an FP16 ONNX graph")
    g = torch.Generator().manual_seed(0)
    volume, grid = torch.randn(2, 4, 8, 16, 16, generator=g), torch.rand(2, 8, 16, 16, 3, generator=g) * 2.4 - 1.2
    graph = export_onnx(_Sampler(mode), (volume[:1], grid[:1]), tmp_path / "gs.onnx", input_names=["volume", "grid"],
                        output_names=["out"], dynamic_axes={"volume": {0: "b"}, "grid": {0: "b"}, "out": {0: "b"}})
    profiles = {"volume": ProfileShapes((1, 4, 8, 16, 16), (2, 4, 8, 16, 16), (4, 4, 8, 16, 16)),
                "grid": ProfileShapes((1, 8, 16, 16, 3), (2, 8, 16, 16, 3), (4, 8, 16, 16, 3))}
    built = build_engine(graph, tmp_path / "trt", name="gs", profiles=profiles, fp16=fp16)
    assert not built.cached
    assert build_engine(graph, tmp_path / "trt", name="gs", profiles=profiles, fp16=fp16).cached
    runtime = TensorRTRuntime(built.path)
    ref = F.grid_sample(volume, grid, align_corners=False)
    for _ in range(3):  # warm-up + capture, then CUDA-graph replays
        out = runtime.run({"volume": volume.cuda(), "grid": grid.cuda()})["out"]
    err = float((out.float().cpu() - ref).abs().max() / ref.abs().max())
    print(f"\nTensorRT {trt.__version__} grid sample {mode} {'fp16' if fp16 else 'fp32'}: relative {err:.3e}")
    assert err <= (1e-2 if fp16 else FP32_RELATIVE_BOUND)


@pytest.mark.parametrize("name", ["stitching", "appearance_feature_extractor", "motion_extractor", "warping_spade",
                                  "audio_encoder", "dit_denoise"])
def test_stage_engine_parity(name, tmp_path):
    source = NetworkSource(seed=0)
    spec = get_stage(name)
    graph = export_stage(spec, source, tmp_path, grid_sample=VERSION.grid_sample_mode)
    eager = TorchRuntime(spec.build(source), spec.input_names, spec.output_names, device="cuda")
    for fp16 in (False, True):
        if fp16 and VERSION.strongly_typed_only:
            continue  # 11.x: FP16 needs an FP16 ONNX graph (ModelOpt AutoCast), not a builder flag
        built = build_engine(graph, tmp_path / "trt", name=name, profiles=spec.profiles(), fp16=fp16 and not spec.fp32_only)
        runtime = TensorRTRuntime(built.path)
        for batch in spec.bench_batches[:2]:
            inputs = spec.example_inputs(batch, torch.Generator().manual_seed(batch))
            feeds = {n: t.cuda() for n, t in zip(spec.input_names, inputs)}
            errors = compare_outputs(eager.run(feeds), runtime.run(feeds), spec.output_names)
            relative = max(e.relative for e in errors)
            print(f"\n{name} TensorRT {'fp16' if fp16 else 'fp32'} batch {batch}: relative {relative:.3e}")
            if not fp16 or spec.fp32_only:
                assert relative <= FP32_RELATIVE_BOUND  # FP32 builds clear BuilderFlag.TF32
            else:
                assert relative <= 1e-2  # FP16 engines: gated loosely

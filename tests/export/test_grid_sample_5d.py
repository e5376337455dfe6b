"""5-D grid sample: the native and the decomposed forms against torch, in torch and through onnxruntime."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install -e .[neural])")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[neural,cpu])")

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from avatarstream.export.grid_sample_5d import GRID_SAMPLE_MODES, grid_sample_5d, grid_sample_mode
from avatarstream.export.onnx_export import export_onnx


def _case(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(batch, 3, 5, 6, 7, generator=g)
    # Coordinates reach past [-1, 1] so zero padding at every face, edge and corner is exercised.
    grid = torch.rand(batch, 4, 5, 6, 3, generator=g) * 2.6 - 1.3
    grid[0, 0, 0, 0] = torch.tensor([-1.0, -1.0, -1.0])  # exactly on the corners and an integer voxel
    grid[0, 0, 0, 1] = torch.tensor([1.0, 1.0, 1.0])
    return volume, grid


class _Sampler(torch.nn.Module):
    def __init__(self, mode: str, align_corners: bool) -> None:
        super().__init__()
        self.mode, self.align_corners = mode, align_corners

    def forward(self, volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return grid_sample_5d(volume, grid, self.align_corners, self.mode)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", GRID_SAMPLE_MODES)
def test_matches_torch(mode: str, align_corners: bool) -> None:
    volume, grid = _case()
    ref = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    got = grid_sample_5d(volume, grid, align_corners, mode)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=2e-5, rtol=0), float((got - ref).abs().max())


def test_fp16_volume_keeps_fp32_coordinates() -> None:
    volume, grid = _case()
    ref = F.grid_sample(volume, grid, align_corners=False)
    for mode in GRID_SAMPLE_MODES:
        got = grid_sample_5d(volume.half(), grid, False, mode)
        assert got.dtype == torch.float16
        assert (got.float() - ref).abs().max() < 1e-2


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", GRID_SAMPLE_MODES)
def test_onnxruntime_matches_torch(mode: str, align_corners: bool, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    volume, grid = _case(batch=1)
    graph = export_onnx(
        _Sampler(mode, align_corners), (volume, grid), tmp_path / f"{mode}.onnx", input_names=["volume", "grid"],
        output_names=["out"], dynamic_axes={"volume": {0: "batch"}, "grid": {0: "batch"}, "out": {0: "batch"}},
    )
    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph.path)))
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(model.graph.value_info) + list(model.graph.input)}
    samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    if mode == "native":
        assert len(samples) == 1 and ranks[samples[0].input[0]] == 5
    else:
        assert len(samples) == 2 and all(ranks[n.input[0]] == 4 for n in samples)
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    volume, grid = _case(batch=3, seed=1)  # another batch size through the dynamic axis
    (out,) = session.run(None, {"volume": volume.numpy(), "grid": grid.numpy()})
    ref = F.grid_sample(volume, grid, align_corners=align_corners).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


def test_unknown_mode_and_bad_shapes() -> None:
    volume, grid = _case()
    with pytest.raises(ValueError, match="unknown grid-sample mode"):
        grid_sample_5d(volume, grid, mode="plugin")
    with pytest.raises(ValueError, match=r"\(N,C,D,H,W\)"):
        grid_sample_5d(volume[:, :, 0], grid)


def test_mode_swaps_the_liveportrait_helper() -> None:
    helper = pytest.importorskip("avatarstream.engines.liveportrait.grid_sample", reason="LivePortrait networks not present")
    volume, grid = _case()
    original = helper.grid_sample_3d
    ref = original(volume, grid)
    with grid_sample_mode("decomposed"):
        assert helper.grid_sample_3d is not original
        got = helper.grid_sample_3d(volume, grid)
    assert helper.grid_sample_3d is original
    assert torch.allclose(got, ref, atol=2e-5)

"""Keypoints and warp grids stay float32 when the convolutions run in reduced precision (autocast).

CUDA fp16 autocast is what the renderer uses on GPU; CPU bfloat16 autocast exercises the same code
path here (bfloat16 has fewer mantissa bits than fp16, so a grid cast to it shows larger errors)."""

from __future__ import annotations

import pytest
import torch

from avatarstream.engines.liveportrait.grid_sample import make_coordinate_grid


@pytest.fixture(scope="module")
def warping(small_networks):
    return small_networks.warping_module


def _inputs(warping, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = warping.dense_motion_network.compress.in_channels
    d = warping.dense_motion_network.identity_grid.shape[0]
    feature = torch.randn(1, c, d, 64, 64, generator=g)
    kp = torch.rand(1, 21, 3, generator=g) * 1.6 - 0.8
    return feature, kp


def test_identity_motion_keeps_an_exact_grid_under_autocast(warping):
    feature, kp = _inputs(warping)
    d = feature.shape[2]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = warping(feature, kp_driving=kp, kp_source=kp)
    deformation = out["deformation"]
    assert deformation.dtype == torch.float32
    # every sparse motion is the identity grid when driving == source, so the softmax mix is the grid itself
    identity = make_coordinate_grid(d, 64, 64)
    assert (deformation[0] - identity).abs().max().item() < 1e-5


def test_keypoint_offsets_reach_the_grid_in_float32(warping):
    feature, kp = _inputs(warping, seed=1)
    shift = torch.zeros_like(kp)
    shift[..., 0] = 1e-3  # 0.03 px of the 64-wide volume: lost entirely in bfloat16 near x = 0.5
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = warping(feature, kp_driving=kp, kp_source=kp + shift)
    d = feature.shape[2]
    identity = make_coordinate_grid(d, 64, 64)
    # every slot moves by exactly +shift (slot 0 does not move), so the x offset lies in [0, 1e-3] and y, z stay put
    dx = out["deformation"][0, ..., 0] - identity[..., 0]
    assert dx.min().item() > -1e-6 and dx.max().item() < 1e-3 + 1e-6 and dx.max().item() > 1e-4
    assert (out["deformation"][0, ..., 1:] - identity[..., 1:]).abs().max().item() < 1e-5

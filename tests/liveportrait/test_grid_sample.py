"""The 5-D grid sample path: native op vs the gather implementation, and the align_corners quirk."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avatarstream.engines.liveportrait import grid_sample as gs


def test_gather_equals_torch_grid_sample():
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(2, 4, 5, 6, 7, generator=g)
    grid = torch.rand(2, 3, 4, 5, 3, generator=g) * 2.6 - 1.3  # includes points outside [-1, 1]
    grid[0, 0, 0, 0] = torch.tensor([1.0, -1.0, 1.0])  # exactly on the corners
    ref = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(gs.grid_sample_3d_gather(volume, grid), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gs.grid_sample_3d(volume, grid), ref, rtol=0, atol=0)


def test_identity_grid_is_reference_formula_and_quirk_kept():
    d, h, w = 16, 64, 64
    grid = gs.make_coordinate_grid(d, h, w)
    assert grid.shape == (d, h, w, 3)
    assert torch.equal(grid[0, 0, :, 0], 2 * (torch.arange(w, dtype=torch.float32) / (w - 1)) - 1)
    assert torch.equal(grid[:, 0, 0, 2], 2 * (torch.arange(d, dtype=torch.float32) / (d - 1)) - 1)
    assert grid[0, 5, 9].tolist()[:2] == [grid[0, 0, 9, 0].item(), grid[0, 5, 0, 1].item()]
    volume = torch.randn(1, 2, d, h, w, generator=torch.Generator().manual_seed(1))
    sampled = gs.grid_sample_3d(volume, grid[None])
    # The reference builds the grid align_corners=True style but samples with align_corners=False:
    # an "identity" warp is a slight zoom-out with darkened (zero-padded) borders, not the identity.
    assert not torch.allclose(sampled, volume, atol=1e-3)
    torch.testing.assert_close(sampled, F.grid_sample(volume, grid[None], align_corners=False), rtol=0, atol=0)
    torch.testing.assert_close(F.grid_sample(volume, grid[None], align_corners=True), volume, rtol=1e-5, atol=1e-5)
    assert sampled[0, :, :, h // 2, 0].abs().mean() < volume[0, :, :, h // 2, 0].abs().mean()


def test_warping_module_same_with_either_implementation(small_networks):
    warp = small_networks.warping_module
    g = torch.Generator().manual_seed(2)
    feature = torch.randn(1, 16, 4, 64, 64, generator=g)
    kp_s = torch.rand(1, 21, 3, generator=g) - 0.5
    kp_d = kp_s + 0.05 * torch.randn(1, 21, 3, generator=g)
    try:
        with torch.no_grad():
            gs.IMPLEMENTATION = "torch"
            a = warp(feature, kp_d, kp_s)
            gs.IMPLEMENTATION = "gather"
            b = warp(feature, kp_d, kp_s)
    finally:
        gs.IMPLEMENTATION = "torch"
    assert a["deformation"].shape == (1, 4, 64, 64, 3) and a["occlusion_map"].shape == (1, 1, 64, 64)
    torch.testing.assert_close(b["out"], a["out"], rtol=1e-4, atol=1e-5)

"""The one place where LivePortrait samples a 5-D volume with a 3-D grid.

The reference calls ``torch.nn.functional.grid_sample(volume, grid)`` with the defaults:
trilinear interpolation, ``padding_mode='zeros'`` and ``align_corners=False``, while its grids
are built in align_corners=True style (``-1`` and ``+1`` at the first and last voxel centres).
That mismatch is part of the trained model and is reproduced here as is.

Exporters can swap the implementation: ``IMPLEMENTATION = "torch"`` uses the native op (ONNX
``GridSample``, 5-D since opset 20), ``"gather"`` uses only gathers and arithmetic, for runtimes
without a 5-D GridSample (TensorRT 8, ORT-CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLEMENTATION = "torch"  # "torch" or "gather"


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``volume`` (N,C,D,H,W) at ``grid`` (N,Do,Ho,Wo,3 with x,y,z in [-1,1]) -> (N,C,Do,Ho,Wo)."""
    if IMPLEMENTATION == "torch":
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if IMPLEMENTATION == "gather":
        return grid_sample_3d_gather(volume, grid)
    raise ValueError(f"unknown grid_sample IMPLEMENTATION {IMPLEMENTATION!r}; use 'torch' or 'gather'")


def grid_sample_3d_gather(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear, zero-padded, align_corners=False sampling written with gathers only."""
    n, c, d, h, w = volume.shape
    out_shape = grid.shape[1:4]
    g = grid.reshape(n, -1, 3).to(volume.dtype)
    # align_corners=False: -1 and +1 are the outer edges of the first and last voxel.
    ix = ((g[..., 0] + 1) * w - 1) * 0.5
    iy = ((g[..., 1] + 1) * h - 1) * 0.5
    iz = ((g[..., 2] + 1) * d - 1) * 0.5
    x0, y0, z0 = torch.floor(ix), torch.floor(iy), torch.floor(iz)
    fx, fy, fz = ix - x0, iy - y0, iz - z0
    flat = volume.reshape(n, c, d * h * w)
    out = volume.new_zeros(n, c, g.shape[1])
    for dz in (0, 1):
        zc = z0 + dz
        wz = fz if dz else 1 - fz
        for dy in (0, 1):
            yc = y0 + dy
            wy = fy if dy else 1 - fy
            for dx in (0, 1):
                xc = x0 + dx
                wx = fx if dx else 1 - fx
                inside = (xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1) & (zc >= 0) & (zc <= d - 1)
                index = (zc.clamp(0, d - 1) * (h * w) + yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
                values = torch.gather(flat, 2, index.unsqueeze(1).expand(n, c, index.shape[1]))
                weight = (wx * wy * wz * inside.to(volume.dtype)).unsqueeze(1)
                out = out + values * weight
    return out.reshape(n, c, *out_shape)


def make_coordinate_grid(depth: int, height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The reference identity grid (D,H,W,3): x along W, y along H, z along D, each from -1 to +1 inclusive."""
    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1

    x, y, z = axis(width), axis(height), axis(depth)
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)

"""The 5-D grid sample (trilinear, zero padding) in the two forms the exporters can emit.

LivePortrait's warping module samples 5-D volumes (N,C,D,H,W) at 3-D grids (N,Do,Ho,Wo,3), twice per frame.
Runtimes differ in what they accept:

* ``native``: ``torch.nn.functional.grid_sample`` on the 5-D input. The ONNX exporter writes one opset-20
  ``GridSample`` node (``mode="linear"``), which onnxruntime CPU (>= 1.17) and TensorRT 10.x/11 run natively.
* ``decomposed``: the volume becomes one tall 2-D image, its depth slices stacked along H with a zero row above
  and below each slice. Two 4-D ``GridSample`` calls read the two neighbouring depth slices (z0 and z0 + 1) of
  every sample point and a linear blend in z mixes them. Every TensorRT >= 8.5 parses 4-D ``GridSample``.

Both forms compute the grid coordinates in FP32, also when the volume is FP16 (the TensorRT builder keeps the
same layers in FP32, see ``export.tensorrt_build``). The LivePortrait networks call the one helper
``engines.liveportrait.grid_sample.grid_sample_3d``; :func:`grid_sample_mode` swaps it for the chosen form while a
graph is traced or exported.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

GRID_SAMPLE_MODES = ("native", "decomposed")


def grid_sample_5d_native(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """``F.grid_sample`` on 5-D input with FP32 coordinates; exports to one opset-20 ``GridSample``."""
    _check_shapes(volume, grid)
    dtype = volume.dtype
    if dtype == torch.float32 and grid.dtype == torch.float32:
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    out = F.grid_sample(volume.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.to(dtype)


def grid_sample_5d_decomposed(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """The same sampling as :func:`grid_sample_5d_native` from two 4-D grid samples and a blend over depth."""
    _check_shapes(volume, grid)
    n, c, d, h, w = volume.shape
    do, ho, wo = grid.shape[1], grid.shape[2], grid.shape[3]
    g = grid.float().reshape(-1, do, ho * wo, 3)
    x, y, z = g[..., 0], g[..., 1], g[..., 2]
    if align_corners:
        iy = (y + 1) * (0.5 * (h - 1))
        iz = (z + 1) * (0.5 * (d - 1))
    else:
        iy = ((y + 1) * h - 1) * 0.5
        iz = ((z + 1) * d - 1) * 0.5
    # One pixel or more outside, zero padding reads nothing; clamping onto the zero rows gives exactly that.
    iy = iy.clamp(-1.0, float(h))
    z0 = torch.floor(iz)
    wz1 = iz - z0
    wz0 = 1.0 - wz1
    z1 = z0 + 1.0
    w0 = wz0 * ((z0 >= 0) & (z0 <= d - 1)).float()
    w1 = wz1 * ((z1 >= 0) & (z1 <= d - 1)).float()

    stride = h + 2  # rows per slice in the tall image: zero row, h data rows, zero row
    tall_h = d * stride
    tall = F.pad(volume.float(), (0, 0, 1, 1)).reshape(-1, c, tall_h, w)

    def read_slice(zk: torch.Tensor) -> torch.Tensor:
        row = zk.clamp(0.0, float(d - 1)) * stride + 1.0 + iy
        if align_corners:
            yn = row * (2.0 / (tall_h - 1)) - 1.0
        else:
            yn = (2.0 * row + 1.0) / tall_h - 1.0
        grid_2d = torch.stack([x, yn], dim=-1)  # (N, Do, Ho*Wo, 2)
        return F.grid_sample(tall, grid_2d, mode="bilinear", padding_mode="zeros", align_corners=align_corners)

    out = read_slice(z0) * w0.unsqueeze(1) + read_slice(z1) * w1.unsqueeze(1)
    return out.reshape(-1, c, do, ho, wo).to(volume.dtype)


def grid_sample_5d(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False, mode: str = "native") -> torch.Tensor:
    """Trilinear, zero-padded 5-D grid sample in the chosen exportable form (``native`` or ``decomposed``)."""
    return _implementation(mode)(volume, grid, align_corners)


def _implementation(mode: str) -> Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]:
    if mode == "native":
        return grid_sample_5d_native
    if mode == "decomposed":
        return grid_sample_5d_decomposed
    raise ValueError(f"unknown grid-sample mode {mode!r}; choose one of {', '.join(GRID_SAMPLE_MODES)}")


def _check_shapes(volume: torch.Tensor, grid: torch.Tensor) -> None:
    if volume.dim() != 5 or grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError(f"need volume (N,C,D,H,W) and grid (N,Do,Ho,Wo,3), got {tuple(volume.shape)} and {tuple(grid.shape)}")


HELPER_MODULE = "avatarstream.engines.liveportrait.grid_sample"
HELPER_FUNCTION = "grid_sample_3d"


@contextlib.contextmanager
def grid_sample_mode(mode: str) -> Iterator[None]:
    """Make the LivePortrait networks sample with ``mode`` (their reference default: align_corners=False).

    The networks reach the 5-D sample through ``engines.liveportrait.grid_sample.grid_sample_3d``, by module
    attribute or imported by name; every such binding inside ``engines.liveportrait`` is swapped while the
    context is active and restored on exit.
    """
    impl = _implementation(mode)
    import importlib

    helper = importlib.import_module(HELPER_MODULE)
    original = getattr(helper, HELPER_FUNCTION)

    def replacement(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return impl(volume, grid, False)

    patched: list[object] = []
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith("avatarstream.engines.liveportrait") and getattr(module, HELPER_FUNCTION, None) is original:
            setattr(module, HELPER_FUNCTION, replacement)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            setattr(module, HELPER_FUNCTION, original)

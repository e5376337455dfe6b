"""Device selection shared by the torch engines (joyvasa, loopy); imports torch."""

from __future__ import annotations

import torch

from avatarstream.engines.base import EngineError


def resolve_device(device: str | None) -> str:
    """``auto`` -> cuda when a GPU is present, else cpu; a clear error for an unusable request."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise EngineError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device

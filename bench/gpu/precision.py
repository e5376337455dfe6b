"""What the GPU check's rows run with, set and stated in one place: TF32 for FP32 matmuls and convolutions, and
cuDNN's autotuner (``torch.backends``), plus the machine's GPU kind and compute mode for the JSON."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator

import torch


@contextlib.contextmanager
def fp32_precision(tf32: bool) -> Iterator[None]:
    """FP32 work inside runs with TF32 on or off (matmuls and cuDNN convolutions); the previous flags come back."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def backend_flags() -> dict:
    """The process's defaults, which the product runs with (the rows that set them say so)."""
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_version": torch.backends.cudnn.version()}


def gpu_kind(device: torch.device) -> dict:
    """Name, capability, SMs and memory (torch), compute mode and driver (nvidia-smi; the reason when it fails)."""
    if device.type != "cuda":
        return {"name": "cpu", "compute_mode": None, "why": "no CUDA device"}
    p = torch.cuda.get_device_properties(device)
    out: dict = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                 "memory_mb": round(p.total_memory / 2**20), "cuda": torch.version.cuda}
    try:
        line = subprocess.run(["nvidia-smi", f"--id={device.index or 0}",
                               "--query-gpu=compute_mode,driver_version,clocks.max.sm,power.limit,mig.mode.current",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=15).stdout.strip()
        keys = ("compute_mode", "driver", "max_sm_clock", "power_limit", "mig_mode")
        out.update(dict(zip(keys, [x.strip() for x in line.split(",")])) if line else {"compute_mode": None})
    except Exception as exc:  # noqa: BLE001 - no nvidia-smi: say so
        out.update(compute_mode=None, compute_mode_error=f"{type(exc).__name__}: {exc}")
    return out

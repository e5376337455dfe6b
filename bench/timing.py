"""Timing of repeated calls for the suites: wall-clock milliseconds per call, with the device synchronised so a
GPU call is timed to its end, not to its launch (torch is imported only for a CUDA device)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def _no_sync() -> None:
    return None


def device_sync(device: object) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` for a CUDA device, else nothing."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return _no_sync


def call_times_ms(fn: Callable[[], object], reps: int, *, warmup: int = 1,
                  sync: Callable[[], None] = _no_sync) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def median_ms(fn: Callable[[], object], reps: int, *, warmup: int = 1, sync: Callable[[], None] = _no_sync) -> float:
    """Median milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    return float(statistics.median(call_times_ms(fn, reps, warmup=warmup, sync=sync)))

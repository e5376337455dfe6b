"""Host <-> device traffic and side streams for the GPU hot path, in one place: what the shared workers and the
renderer use so that the host never waits for the GPU where the product does not need the result.

* ``upload(t, device)``: a host tensor to the device, staged in pinned memory and copied asynchronously on CUDA
  (ordered on the current stream: the kernels after it see the data; the host does not wait);
* ``side_stream(stream)``: run a worker's work on its own CUDA stream, after everything queued before on the
  caller's current stream (explicit ordering: ``wait_stream``, no host sync); ``None`` (CPU) runs in place;
* ``StageClock``: stage times without host syncs: on CUDA each stage is bracketed by two events recorded on the
  current stream and read after the fact (finished pairs are folded in as later stages start, with ``query``,
  which never blocks; ``collect(wait=True)`` waits for the rest, only when a reader asks); on the CPU wall time.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Iterator

import torch

from avatarstream.engines.base import StageTimes


def upload(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (cast to ``dtype``) without a host stall: a host tensor is pinned, then copied with
    ``non_blocking``; one already on the device is only cast (and marked as used on the current stream)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    elif t.device.type == "cuda":  # made on another stream, perhaps: its memory is not reused before this one is done
        t.record_stream(torch.cuda.current_stream(t.device))
    return t.to(device=device, dtype=dtype, non_blocking=True)


def new_stream(device: torch.device | str) -> torch.cuda.Stream | None:
    """A CUDA stream of its own on ``device`` (None on a CPU)."""
    device = torch.device(device)
    return torch.cuda.Stream(device=device) if device.type == "cuda" else None


@contextlib.contextmanager
def side_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Queue the block's work on ``stream``, after the work already queued on the current stream."""
    if stream is None:
        yield
        return
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        yield


class StageClock:
    """Per-stage milliseconds into ``times`` (see the module docstring); at most ``keep`` pairs wait to be read,
    older ones are dropped (``dropped`` counts them) so a clock nobody reads stays bounded."""

    def __init__(self, device: torch.device | str, times: StageTimes | None = None, keep: int = 512) -> None:
        self.device = torch.device(device)
        self.times = times if times is not None else StageTimes()
        self.keep = keep
        self.dropped = 0
        self._pending: deque[tuple[str, torch.cuda.Event, torch.cuda.Event]] = deque()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            yield
            self.times.add(stage, (time.perf_counter() - t0) * 1000)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.collect(wait=False)
        self._pending.append((stage, start, end))
        while len(self._pending) > self.keep:
            self._pending.popleft()
            self.dropped += 1

    def collect(self, wait: bool = False) -> StageTimes:
        """Fold the finished pairs into ``times`` (all of them, waiting for the GPU, with ``wait``)."""
        while self._pending:
            stage, start, end = self._pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                break
            self._pending.popleft()
            self.times.add(stage, start.elapsed_time(end))
        return self.times

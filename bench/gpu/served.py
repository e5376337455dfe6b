"""Sessions as ``avatar serve`` runs them, in-process: the server's ``AvatarSession`` (its clock, playback
buffer, engine pump on its own thread, output ring) over the shared joyvasa engine, each watched by a
``FrameSink`` viewer on the transport contract.

The HTTP layer is left out: on the GPU machine ``realtime.http.app`` and ``realtime.session.registry`` do not
import (they import aiortc / PyAV for WebRTC), so sessions are created the way the registry creates them
(``AvatarSession(engine, portrait, options=ServerConfig.session_options(...))``, then ``start()``) and speech
is pushed with ``push_audio`` as the agent WebSocket's handler pushes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from avatarstream.bench.gpu.product import Product
from avatarstream.bench.gpu.sink import FrameSink
from avatarstream.engines.base import SAMPLE_RATE
from avatarstream.realtime.session.session import AvatarSession


@dataclass
class Served:
    session: AvatarSession
    sink: FrameSink
    feeder: asyncio.Task | None = None


def allocated_mb(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


async def open_sessions(product: Product, n: int, memory: list | None = None) -> list[Served]:
    """Start ``n`` sessions one after the other, each with its sink; ``memory`` gets GPU MB after each start."""
    served = []
    for k in range(n):
        session = AvatarSession(product.engine, product.portrait(), engine_name="joyvasa",
                                options=product.session_options, origin="api")
        await session.start()
        sink = FrameSink(session, name=f"sink-{k}")
        sink.start()
        served.append(Served(session, sink))
        if memory is not None:
            memory.append(allocated_mb(product.device))
    return served


async def feed_speech(session: AvatarSession, speech: np.ndarray, offset_s: float, queued_s: float = 1.5) -> None:
    """Keep ``queued_s`` of speech queued (1 s pushes, cycling through ``speech`` from ``offset_s``): the session's
    clock takes it at exactly 1x, 640 samples per 40 ms tick."""
    pos = int(offset_s * SAMPLE_RATE) % speech.size
    while True:
        while session.queued_seconds < queued_s:
            piece = np.take(speech, np.arange(pos, pos + SAMPLE_RATE), mode="wrap")
            session.push_audio(piece)
            pos = (pos + SAMPLE_RATE) % speech.size
        await asyncio.sleep(0.1)


async def close_sessions(served: list[Served]) -> None:
    for s in served:
        if s.feeder is not None:
            s.feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await s.feeder
    await asyncio.gather(*(s.sink.close() for s in served))
    # together: each waits for its engine's feed in flight (long on a slow CPU, where a lagging pump feeds 1 s)
    await asyncio.gather(*(s.session.close() for s in served))


class UtilSampler:
    """GPU utilisation (``torch.cuda.utilization``, which reads NVML through pynvml) sampled every 0.25 s on a
    thread while a measurement runs; ``unavailable`` says why there is none (no CUDA device, no pynvml)."""

    def __init__(self, device: torch.device, period_s: float = 0.25) -> None:
        self.device, self.period_s = device, period_s
        self.samples: list[float] = []
        self.unavailable: str | None = None
        if device.type != "cuda":
            self.unavailable = "no CUDA device"
        else:
            try:
                torch.cuda.utilization(device)
            except Exception as exc:  # noqa: BLE001 - e.g. ModuleNotFoundError: pynvml
                self.unavailable = f"torch.cuda.utilization failed: {type(exc).__name__}: {exc}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = []
        if self.unavailable is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpu-util", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception as exc:  # noqa: BLE001
                self.unavailable = f"torch.cuda.utilization failed: {type(exc).__name__}: {exc}"
                return

    def stop(self) -> dict:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2.0)
            self._thread = None
        if not self.samples:
            return {"gpu_util_percent_mean": None, "gpu_util_percent_max": None,
                    "gpu_util_unavailable": self.unavailable or "no sample taken"}
        return {"gpu_util_percent_mean": round(float(np.mean(self.samples)), 1),
                "gpu_util_percent_max": round(float(np.max(self.samples)), 1), "gpu_util_samples": len(self.samples)}


@dataclass
class Window:
    """A measurement window on the monotonic clock."""

    t0: float = field(default_factory=time.monotonic)
    t1: float = 0.0

    def close(self) -> "Window":
        self.t1 = time.monotonic()
        return self

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None

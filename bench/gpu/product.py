"""The product under test: the ``joyvasa`` engine as ``avatar serve --engine joyvasa --weights DIR`` loads it
(``engines.registry.load_engine``, default options: FP16 rendering and batch 8 on CUDA, the shared motion and
render workers), on a weights directory of seeded random values in the official layout
(``engines.joyvasa.random_weights``: the real shapes, or the miniatures in the dry run), and the sessions'
options as the server derives them (``ServerConfig.session_options``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatarstream.bench.gpu.inputs import FaceRecord, load_face, portrait_bytes, speech
from avatarstream.engines.base import SAMPLES_PER_FRAME, Portrait
from avatarstream.engines.joyvasa.avatar_engine import JoyVasaEngine
from avatarstream.engines.joyvasa.checkpoint import SMALL_CONFIG
from avatarstream.engines.joyvasa.random_weights import write_random_weights
from avatarstream.engines.liveportrait.config import LivePortraitConfig
from avatarstream.engines.portraits import portrait_from_bytes
from avatarstream.engines.registry import load_engine
from avatarstream.realtime.session.session import SessionOptions

SIZE = 512  # frames are 512 x 512 (the render is pasted back into the portrait's 512 framing)
# The dry run's renderer: narrower than LivePortraitConfig.small() (same structure, 512 x 512 output), so a
# shared 2-core CPU renders a frame in ~0.3 s instead of ~1.5 s and the served sessions deliver some frames.
DRY_RUN_RENDERER = LivePortraitConfig(
    appearance_feature_extractor=dict(block_expansion=4, max_features=16, reshape_channel=4, reshape_depth=4,
                                      num_resblocks=1),
    motion_extractor=dict(num_kp=21, num_bins=66, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    warping_module=dict(block_expansion=4, max_features=16, reshape_channel=4, dense_motion_params=dict(
        block_expansion=2, max_features=8, num_blocks=3, reshape_depth=4, compress=1)),
    spade_generator=dict(block_expansion=4, max_features=16, out_channels=4, spade_hidden=4))


@dataclass
class Product:
    engine: JoyVasaEngine
    device: torch.device
    dry_run: bool
    face: FaceRecord
    portrait_bytes: bytes
    speech: np.ndarray  # float32 16 kHz
    session_options: SessionOptions
    session_options_source: str
    setup: dict  # seconds spent writing and loading the weights

    def portrait(self) -> Portrait:
        """A new session's portrait: decoded from its bytes, with the shipped face (no detection here)."""
        p = portrait_from_bytes(self.portrait_bytes, "astronaut.jpg")
        return dataclasses.replace(p, face=self.face.face)

    def describe(self) -> dict:
        e = self.engine
        return {"engine": "joyvasa", "weights": "random values of the real shapes" if not self.dry_run
                else "random values of miniature shapes (dry run: DRY_RUN_RENDERER, SMALL_CONFIG)",
                "device": str(self.device), "fp16": e.fp16, "batch_size": e.batch_size,
                "chunk_frames": e.stream_config.chunk_frames, "lookahead_ms": e.stream_config.lookahead_ms,
                "diffusion_steps": e.model.schedule().num_steps,
                "motion_max_batch": e.options.motion_max_batch, "motion_max_wait_ms": e.options.motion_max_wait_ms,
                "session_options": {k: v for k, v in vars(self.session_options).items() if k != "controls"},
                "session_options_source": self.session_options_source, "size": SIZE,
                "face": self.face.describe(), **self.setup}


def session_options(latency: str | None = None) -> tuple[SessionOptions, str]:
    """The sessions' options as ``avatar serve --engine joyvasa [--latency LATENCY]`` derives them (None: the
    server's default preset), and where they came from."""
    try:
        from avatarstream.realtime.config import ServerConfig

        if latency is None:
            return ServerConfig(engine="joyvasa").session_options(size=SIZE), "ServerConfig(engine='joyvasa')"
        return (ServerConfig(engine="joyvasa", latency=latency).session_options(size=SIZE),
                f"ServerConfig(engine='joyvasa', latency={latency!r})")
    except Exception as exc:  # noqa: BLE001 - the server's config did not import here: say so, use the defaults
        return SessionOptions(size=SIZE), f"SessionOptions defaults (ServerConfig failed: {type(exc).__name__}: {exc})"


def build_product(dry_run: bool, workdir: Path, device: torch.device, motion_steps: int | None = None) -> Product:
    """``motion_steps``: the miniature motion generator's diffusion steps (dry run; None: its 4)."""
    t0 = time.perf_counter()
    motion_config = dataclasses.replace(SMALL_CONFIG, n_diff_steps=motion_steps) if dry_run and motion_steps else None
    root = write_random_weights(workdir / "weights", small=dry_run, motion_config=motion_config,
                                liveportrait_config=DRY_RUN_RENDERER if dry_run else None)
    t1 = time.perf_counter()
    options: dict[str, Any] = {"weights": str(root), "device": device.type}  # "cuda": as avatar serve resolves it
    if dry_run:
        options.update(liveportrait_config=DRY_RUN_RENDERER)  # the engine's streaming defaults, as on the GPU
    engine = load_engine("joyvasa", **options)
    assert isinstance(engine, JoyVasaEngine)
    engine.renderer("human")  # the networks load on the first session otherwise (as avatar serve's warm-up does)
    t2 = time.perf_counter()
    options_, source = session_options()
    return Product(engine, device, dry_run, load_face(), portrait_bytes(), speech(), options_, source,
                   {"weights_write_s": round(t1 - t0, 1), "engine_load_s": round(t2 - t1, 1)})


def warm_up(product: Product) -> float:
    """One stream through both workers (kernels, cuDNN choices, allocations); returns seconds."""
    t = time.perf_counter()
    stream = product.engine.open_stream(product.portrait(), size=SIZE)
    audio = product.speech[: (4 if product.dry_run else 30) * SAMPLES_PER_FRAME]
    stream.feed(audio)
    stream.flush()
    stream.close()
    return time.perf_counter() - t


def run_async(coro):
    """Run one section's coroutine on a fresh event loop (sessions need a running loop)."""
    return asyncio.run(coro)

"""The joyvasa product path's host <-> device traffic per frame in the steady state, counted on the CPU with the
code path that runs on a GPU (``tests/host_transfers.py``: device tensors followed through every torch op, the
syncs and uploads they would cause counted by call site), through the engine's shared motion and render workers,
with the GPU's render batch (8) and the real 50 diffusion steps (on the miniature networks).

Before (main 4dcf21d, the same count; the explicit ``torch.cuda.synchronize`` of the old ``Renderer._timed``, 2 per
stage for W and G per render batch, does not run on a CPU and is added from the code):

=========  ======  =======  ==========================================  ==================================
config     frames  windows  syncs (per frame)                           blocking uploads (per frame)
=========  ======  =======  ==========================================  ==================================
default    20      2        32 + 16 explicit = 48 (2.4)                 570 (28.5)
low        8       4        28 + 16 explicit = 44 (5.5)                 1044 (130.5)
=========  ======  =======  ==========================================  ==================================

by site, default: syncs stitch 20 (one per frame), tensor_to_images 4 (per batch), _context 4 and _generate_chunk 2
and motion_worker._call 2 (per window); uploads motion_worker ``column`` 398 + step 100 (5 per DiT call), stitch 40,
render 20 (2 and 1 per frame), motion_worker._start 10, audio_features 2 (per window).

After (this test): syncs only the frames handed to the host (one per render batch) and each window's x_0 (one per
window); no blocking upload; asynchronous pinned uploads once per window (audio, context motion, x_T, noise) and
once per render batch (the keypoints to stitch), none per denoising step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the joyvasa engine needs torch (pip install '.[neural]')")
pytest.importorskip("transformers", reason="the joyvasa engine needs transformers (pip install '.[neural]')")

from host_transfers import HostTransfers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 512
STEPS = 50
RENDER_BATCH = 8


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    from avatarstream.bench.gpu.product import build_product

    product = build_product(True, tmp_path_factory.mktemp("syncs"), torch.device("cpu"), motion_steps=STEPS)
    product.engine.batch_size = RENDER_BATCH  # as on a GPU (the CPU default is 1)
    yield product
    product.engine.close()


def count_stream(product, latency: str, chunks: int, warm_chunks: int = 1) -> dict:
    from avatarstream.bench.gpu.latency_configs import streaming
    from avatarstream.engines.base import SAMPLES_PER_FRAME

    engine = product.engine
    with streaming(product, latency) as config:
        counter = HostTransfers([engine.model, *engine.renderer("human").networks.modules()])
        with counter.installed():
            workers = (engine.motion_worker(), engine.render_worker(engine.renderer("human")))
            for worker in workers:
                worker._process = counter.enter_in(worker._process)  # type: ignore[method-assign]
            stream = engine.open_stream(product.portrait(), size=SIZE)
            try:
                step = config.chunk_frames * SAMPLES_PER_FRAME
                audio, pos = product.speech[16000:], 0
                for _ in range(warm_chunks + 1):  # the first window needs chunk + lookahead frames
                    stream.feed(audio[pos:pos + step])
                    pos += step
                counter.counting = True
                frames, calls0, batches0 = 0, workers[0].stats.calls, workers[1].stats.batches
                for _ in range(chunks):
                    frames += len(stream.feed(audio[pos:pos + step]))
                    pos += step
                counter.counting = False
            finally:
                stream.close()
    return {"frames": frames, "windows": chunks, "dit_calls": workers[0].stats.calls - calls0,
            "render_batches": workers[1].stats.batches - batches0, **counter.totals(), **counter.report()}


@pytest.mark.parametrize("latency, chunks", [("default", 1), ("low", 2)])
def test_steady_state_frames_sync_only_to_hand_frames_and_windows_to_the_host(product, latency, chunks):
    out = count_stream(product, latency, chunks)
    windows, batches = out["windows"], out["render_batches"]
    assert out["frames"] == chunks * (10 if latency == "default" else 2) and out["dit_calls"] == windows * STEPS
    print(f"{latency}: {out}")
    assert out["syncs"] == {"liveportrait/renderer.py:tensor_to_images": batches,  # the frames handed to the host
                            "joyvasa/motion_worker.py:_call": windows}  # each window's x_0 (the driver is numpy)
    assert out["uploads"] == {}  # nothing blocking goes up
    assert out["uploads_async"] == {"joyvasa/network.py:audio_features": windows,  # the window's audio
                                    "joyvasa/motion_worker.py:_start": 3 * windows,  # context motion, x_T, noise
                                    "liveportrait/renderer.py:stitch_on_device": batches}  # keypoints per batch


def test_the_counter_sees_what_it_counts():
    """The shim on known traffic (so a count of 0 above means none, not blindness)."""
    weight = torch.nn.Linear(3, 3)
    counter = HostTransfers([weight])
    counter.counting = True
    with counter.installed(), torch.no_grad():
        y = weight(torch.ones(1, 3).to("cpu"))  # an upload (a host tensor to the device), then a device result
        torch.tensor([1.0], device="cpu")  # an upload of host data
        y.sum().item()  # a sync
        y.cpu().numpy()  # one sync (the host copy's numpy is free)
        torch.cuda.synchronize()  # counted, never run
        host = y.detach().cpu()
        host.numpy()  # a host tensor: nothing
    assert counter.totals() == {"syncs": 4, "uploads": 2, "uploads_async": 0}


def test_the_hot_path_downloads_only_with_cpu():
    """The counter reads ``x.to("cpu")`` of a device tensor as device -> device: the hot path never spells it so."""
    files = ["engines/liveportrait/renderer.py", "engines/joyvasa/motion_worker.py", "engines/joyvasa/streaming.py",
             "engines/joyvasa/network.py", "engines/joyvasa/avatar_engine.py", "engines/joyvasa/motion.py"]
    pattern = re.compile(r"""\.to\(\s*(["']cpu["']|device=["']cpu["']|torch\.device\(["']cpu)""")
    assert [f for f in files if pattern.search((REPO / f).read_text())] == []


def test_the_stage_clock_reads_cpu_wall_time_and_uploads_keep_values():
    from avatarstream.engines.runtimes.device_work import StageClock, side_stream, upload

    clock = StageClock("cpu")
    with clock.timed("w"):
        torch.ones(8).sum()
    with side_stream(None):  # no stream on a CPU: runs in place
        moved = upload(torch.arange(4.0), "cpu", torch.float64)
    assert clock.collect().calls == {"w": 1} and clock.times.ms["w"] >= 0
    assert moved.dtype == torch.float64 and moved.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA events and streams)")
def test_the_stage_clock_on_cuda_reads_events_without_waiting_and_stays_bounded():
    from avatarstream.engines.runtimes.device_work import StageClock, new_stream, side_stream, upload

    clock = StageClock("cuda", keep=4)
    x = torch.randn(512, 512, device="cuda")
    for _ in range(10):
        with clock.timed("matmul"):
            x = x @ x / 512
    assert len(clock._pending) <= 4 and clock.dropped + clock.collect(wait=True).calls["matmul"] == 10
    stream = new_stream("cuda")
    with side_stream(stream):
        y = upload(torch.arange(4.0), "cuda") * 2
    stream.synchronize()
    assert y.tolist() == [0.0, 2.0, 4.0, 6.0]

"""The shared render worker: batches frames of several sessions on one renderer, never mixes them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait.render_worker import RenderQueueFull, RenderWorker
from avatarstream.engines.liveportrait.renderer import Renderer

SESSIONS = 3
FRAMES = 4


@pytest.fixture(scope="module")
def renderer(small_networks):
    return Renderer(small_networks)


@pytest.fixture(scope="module")
def sessions(renderer, source_image256):
    """Per session: its avatar (a different source image each) and its driving keypoints."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(SESSIONS):
        image = np.roll(source_image256, 37 * k, axis=1)
        avatar = renderer.prepare(image)
        kp = avatar.keypoints[0].cpu().numpy()[None] + 0.03 * rng.standard_normal((FRAMES, 21, 3)).astype(np.float32)
        out.append((avatar, kp))
    return out


@pytest.fixture(scope="module")
def alone(renderer, sessions):
    """Each session rendered on its own, one frame per call: the reference."""
    return [np.concatenate([renderer.render([(avatar, k)]) for k in kp]) for avatar, kp in sessions]


def _close_to(got: np.ndarray, ref: np.ndarray) -> None:
    # Batched and single-frame convolutions may round differently in the last float bit; one uint8 step at most.
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert (got == ref).mean() > 0.99


def test_sessions_batched_together_get_their_own_frames(renderer, sessions, alone):
    worker = RenderWorker(renderer, max_batch=8, max_wait_ms=200)
    try:
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(SESSIONS)

        def session(k: int) -> None:
            avatar, kp = sessions[k]
            start.wait()
            try:
                results[k] = np.concatenate([worker.render([(avatar, f) for f in kp[i:i + 2]], session=k)
                                             for i in range(0, FRAMES, 2)])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=session, args=(k,)) for k in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        for k in range(SESSIONS):
            _close_to(results[k], alone[k])
        stats = worker.stats
        assert stats.frames == SESSIONS * FRAMES
        assert stats.max_batch_seen > 2  # frames of overlapping sessions rendered together
        assert stats.multi_session_batches > 0
        assert stats.max_batch_seen <= 8
    finally:
        worker.close()
    assert not worker.alive


def test_round_robin_no_session_starves(renderer, sessions):
    worker = RenderWorker(renderer, max_batch=2, max_wait_ms=0, max_pending=64)
    order: list[str] = []
    original = renderer.render

    class Recording:
        def render(self, items):
            order.append("".join("ab"[0 if a is sessions[0][0] else 1] for a, _ in items))
            return original(items)

    worker.renderer = Recording()
    try:
        long = worker.submit("a", sessions[0][0], list(sessions[0][1]) * 2)  # 8 frames queued first
        short = worker.submit("b", sessions[1][0], sessions[1][1][:2])  # 2 frames queued after
        assert short.result(300).shape == (2, 512, 512, 3)
        assert long.result(300).shape == (2 * FRAMES, 512, 512, 3)
        # b's two frames ride in the first batches beside a's, not after all of a's.
        first_b = next(i for i, s in enumerate(order) if "b" in s)
        assert first_b <= 1, order
    finally:
        worker.close()


def held_worker(renderer: Renderer, max_pending: int) -> tuple[RenderWorker, threading.Event]:
    """A one-frame-per-batch worker whose renderer holds every batch until the event is set."""
    worker = RenderWorker(renderer, max_batch=1, max_wait_ms=0, max_pending=max_pending)
    release = threading.Event()
    original = renderer.render

    class Slow:
        def render(self, items):
            release.wait(60)
            return original(items)

    worker.renderer = Slow()
    return worker, release


def test_back_pressure_cancel_and_close(renderer, sessions):
    worker, release = held_worker(renderer, max_pending=4)
    avatar, kp = sessions[0]
    try:
        first = worker.submit("s", avatar, kp[:1])
        time.sleep(0.2)  # the worker holds the first frame in its (blocked) batch
        queued = worker.submit("s", avatar, kp[:4])  # fills the queue
        with pytest.raises(RenderQueueFull):
            worker.submit("t", avatar, kp[:1], timeout=0.2)
        assert worker.cancel("s") == 4  # the session leaves: its queued frames go
        assert queued.cancelled()
        later = worker.submit("t", avatar, kp[:1], timeout=1.0)  # room again
        pending = worker.submit("u", avatar, kp[:2], timeout=1.0)
        release.set()
        assert first.result(120).shape == (1, 512, 512, 3)
        assert later.result(120).shape == (1, 512, 512, 3)
        pending.result(120)
    finally:
        release.set()
        worker.close()
    with pytest.raises(EngineError, match="closed"):
        worker.submit("s", avatar, kp[:1])


def test_close_fails_queued_work(renderer, sessions):
    worker, release = held_worker(renderer, max_pending=8)
    avatar, kp = sessions[0]
    worker.submit("s", avatar, kp[:1])
    time.sleep(0.2)
    queued = worker.submit("s", avatar, kp[1:3])
    closer = threading.Thread(target=worker.close)
    closer.start()
    time.sleep(0.1)
    release.set()
    closer.join(60)
    with pytest.raises(EngineError, match="closed"):
        queued.result(5)
    assert not worker.alive


def test_keypoints_left_on_the_device_render_like_host_ones(renderer, sessions, alone):
    """The stream's path: a batch's keypoints stitched on the renderer's device (tensors, not arrays) go through the
    worker as they are, mixed with host arrays of another session, and render the same frames."""
    (avatar, kp), (other, kp_other) = sessions[0], sessions[1]
    worker = RenderWorker(renderer, max_batch=8, max_wait_ms=1)
    try:
        on_device = torch.from_numpy(kp).to(renderer.device)
        got = worker.render([(avatar, on_device[i]) for i in range(FRAMES)], session=0)
        _close_to(got, alone[0])
        mixed = renderer.render([(avatar, on_device[0]), (other, kp_other[0])])
        _close_to(mixed, np.concatenate([alone[0][:1], alone[1][:1]]))
    finally:
        worker.close()
    x_s = avatar.keypoints[0].cpu().numpy()
    stitched = renderer.stitch_on_device(x_s, kp, multiplier=1.1)
    expected = x_s + (renderer.stitch(x_s, kp) - x_s) * 1.1
    np.testing.assert_allclose(stitched.cpu().numpy(), expected, atol=1e-5)
    with pytest.raises(EngineError, match="shape"):
        renderer.render([(avatar, on_device[0, :5])])

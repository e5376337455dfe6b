"""``RenderWorker``: one thread per renderer (GPU) that batches W + G frames across sessions.

Every session's stream submits its frames (a prepared avatar and driving keypoints per frame) and waits; the
worker is the only thread that runs the renderer. It takes frames from the sessions with pending work in
round-robin order (one session with a long backlog never starves the others), up to ``max_batch`` frames,
waiting at most ``max_wait_ms`` after the first frame for other sessions to add theirs, renders them as one
batch (``Renderer.render`` accepts frames of different avatars) and hands each request its own frames, in order.

Back-pressure: at most ``max_pending`` frames wait in the queue; a submit beyond that blocks up to its timeout
and then raises :class:`RenderQueueFull`. ``close`` stops the worker and fails what is still queued. The queue,
fairness (fewest frames in flight first, ties round-robin: one frame per session in turn), the deadline, cancel and
close are ``engines.runtimes.batching_worker``'s; this module says only how frames are batched: one renderer call
per batch.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait.renderer import PreparedAvatar, Renderer
from avatarstream.engines.runtimes.batching_worker import BatchingWorker, QueuedRequest, fail_future, resolve_future


class RenderQueueFull(EngineError):
    """The shared render queue stayed full for the whole submit timeout (the GPU is saturated)."""


@dataclass(eq=False)
class _Frames:
    """One request's frames: the avatar, its driving keypoints per frame, and the images rendered so far."""

    avatar: PreparedAvatar
    keypoints: list
    images: list = field(default_factory=list)  # rendered frames, in order


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    max_batch_seen: int = 0
    batch_sizes: dict = field(default_factory=dict)  # batch size -> count
    multi_session_batches: int = 0  # batches holding frames of more than one session


class RenderWorker(BatchingWorker[_Frames]):
    """Batches render work of several sessions on one renderer; see the module docstring."""

    label = "render"
    unit = "frames"
    queue_full = RenderQueueFull

    def __init__(self, renderer: Renderer, *, max_batch: int = 8, max_wait_ms: float = 4.0, max_pending: int = 256,
                 name: str = "render-worker") -> None:
        if max_batch < 1 or max_pending < max_batch:
            raise EngineError(f"need 1 <= max_batch <= max_pending, got max_batch={max_batch}, max_pending={max_pending}")
        self.renderer = renderer
        self.stats = WorkerStats()
        super().__init__(max_batch=max_batch, max_wait_ms=max_wait_ms, max_pending=max_pending, name=name)

    # -- sessions' side ------------------------------------------------------------------------

    def submit(self, session: Hashable, avatar: PreparedAvatar, keypoints: Sequence, *, timeout: float = 10.0) -> Future:
        """Queue ``keypoints`` (N frames of (21, 3)) of one session; the future gets uint8 (N, 512, 512, 3)."""
        frames = list(keypoints)
        if not frames:
            future: Future = Future()
            future.set_result(np.zeros((0, 512, 512, 3), np.uint8))
            return future
        return self._enqueue(QueuedRequest(session, _Frames(avatar, frames), len(frames)), timeout)

    def render(self, items: Sequence[tuple[PreparedAvatar, object]], *, session: Hashable | None = None,
               timeout: float = 60.0) -> np.ndarray:
        """``Renderer.render``'s contract through the worker: (avatar, keypoints) pairs of one avatar -> images."""
        if not items:
            return np.zeros((0, 512, 512, 3), np.uint8)
        avatar = items[0][0]
        if any(a is not avatar for a, _ in items):
            raise EngineError("one render request holds frames of one avatar; submit other avatars separately")
        key = session if session is not None else id(avatar)
        return self.submit(key, avatar, [kp for _, kp in items]).result(timeout)

    # -- the worker thread: one renderer call per batch ------------------------------------------

    def _process(self, batch: list[tuple[QueuedRequest[_Frames], int]]) -> None:
        try:
            self._run(batch)
        finally:
            self._release(*(r.session for r, _ in batch))

    def _run(self, batch: list[tuple[QueuedRequest[_Frames], int]]) -> None:
        live = [(r, i) for r, i in batch if not r.future.done()]  # a cancelled request needs no frames
        if not live:
            return
        try:
            images = self.renderer.render([(r.payload.avatar, r.payload.keypoints[i]) for r, i in live])
        except Exception as exc:  # noqa: BLE001 - the error belongs to the requests in this batch
            for r, _ in live:
                fail_future(r.future, exc)
            return
        s = self.stats
        s.batches += 1
        s.frames += len(live)
        s.max_batch_seen = max(s.max_batch_seen, len(live))
        s.batch_sizes[len(live)] = s.batch_sizes.get(len(live), 0) + 1
        if len({r.session for r, _ in live}) > 1:
            s.multi_session_batches += 1
        for (r, _), image in zip(live, images):
            frames = r.payload
            frames.images.append(image)
            if len(frames.images) == len(frames.keypoints):
                resolve_future(r.future, np.stack(frames.images))

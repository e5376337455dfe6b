"""``RenderWorker``: one thread per renderer (GPU) that batches W + G frames across sessions.

Every session's stream submits its frames (a prepared avatar and driving keypoints per frame) and waits; the
worker is the only thread that runs the renderer. It takes frames from the sessions with pending work in
round-robin order (one session with a long backlog never starves the others), up to ``max_batch`` frames,
waiting at most ``max_wait_ms`` after the first frame for other sessions to add theirs, renders them as one
batch (``Renderer.render`` accepts frames of different avatars) and hands each request its own frames, in order.

Back-pressure: at most ``max_pending`` frames wait in the queue; a submit beyond that blocks up to its timeout
and then raises :class:`RenderQueueFull`. ``close`` stops the worker and fails what is still queued.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait.renderer import PreparedAvatar, Renderer


class RenderQueueFull(EngineError):
    """The shared render queue stayed full for the whole submit timeout (the GPU is saturated)."""


@dataclass
class _Request:
    session: Hashable
    avatar: PreparedAvatar
    keypoints: list
    future: Future
    images: list = field(default_factory=list)  # rendered frames, in order
    next: int = 0  # next frame to put in a batch

    @property
    def remaining(self) -> int:
        return len(self.keypoints) - self.next


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    max_batch_seen: int = 0
    batch_sizes: dict = field(default_factory=dict)  # batch size -> count
    multi_session_batches: int = 0  # batches holding frames of more than one session


class RenderWorker:
    """Batches render work of several sessions on one renderer; see the module docstring."""

    def __init__(self, renderer: Renderer, *, max_batch: int = 8, max_wait_ms: float = 4.0, max_pending: int = 256,
                 name: str = "render-worker") -> None:
        if max_batch < 1 or max_pending < max_batch:
            raise EngineError(f"need 1 <= max_batch <= max_pending, got max_batch={max_batch}, max_pending={max_pending}")
        self.renderer = renderer
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_pending = max_pending
        self.stats = WorkerStats()
        self._queues: "OrderedDict[Hashable, deque[_Request]]" = OrderedDict()  # session -> its requests, FIFO
        self._pending = 0  # frames queued, not yet in a batch
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- sessions' side ------------------------------------------------------------------------

    def submit(self, session: Hashable, avatar: PreparedAvatar, keypoints: Sequence, *, timeout: float = 10.0) -> Future:
        """Queue ``keypoints`` (N frames of (21, 3)) of one session; the future gets uint8 (N, 512, 512, 3)."""
        frames = list(keypoints)
        future: Future = Future()
        if not frames:
            future.set_result(np.zeros((0, 512, 512, 3), np.uint8))
            return future
        if len(frames) > self.max_pending:
            raise EngineError(f"{len(frames)} frames in one request exceed the render queue ({self.max_pending})")
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._pending + len(frames) > self.max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RenderQueueFull(f"the render queue stayed full ({self._pending} frames) for {timeout:.1f} s")
                self._cond.wait(left)
            if self._closed:
                raise EngineError("the render worker is closed")
            self._queues.setdefault(session, deque()).append(_Request(session, avatar, frames, future))
            self._pending += len(frames)
            self._cond.notify_all()
        return future

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

    def cancel(self, session: Hashable) -> int:
        """Drop a leaving session's queued frames (frames already in a batch still complete); returns how many."""
        with self._cond:
            requests = self._queues.pop(session, deque())
            dropped = sum(r.remaining for r in requests)
            self._pending -= dropped
            self._cond.notify_all()
        for r in requests:
            r.future.cancel()
        return dropped

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, fail what is queued, and join the worker thread."""
        with self._cond:
            self._closed = True
            queued = [r for q in self._queues.values() for r in q]
            self._queues.clear()
            self._pending = 0
            self._cond.notify_all()
        for r in queued:
            if not r.future.done():
                r.future.set_exception(EngineError("the render worker is closed"))
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the worker thread ----------------------------------------------------------------------

    def _take_batch(self) -> list[tuple[_Request, int]]:
        """Up to ``max_batch`` (request, frame index) pairs, one frame per session in turn. Caller holds the lock."""
        batch: list[tuple[_Request, int]] = []
        while len(batch) < self.max_batch and self._queues:
            for session in list(self._queues):
                if len(batch) >= self.max_batch:
                    break
                queue = self._queues[session]
                request = queue[0]
                batch.append((request, request.next))
                request.next += 1
                self._pending -= 1
                if request.remaining == 0:
                    queue.popleft()
                    if not queue:
                        del self._queues[session]
            if batch:  # next round starts after the sessions served in this one
                for session in [b[0].session for b in batch]:
                    if session in self._queues:
                        self._queues.move_to_end(session)
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queues:
                    self._cond.wait()
                if self._closed:
                    return
                # Let other sessions join the batch for a short while once the first frame is there.
                until = time.monotonic() + self.max_wait_s
                while not self._closed and self._pending < self.max_batch:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                batch = self._take_batch()
                self._cond.notify_all()  # room in the queue
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        live = [(r, i) for r, i in batch if not r.future.done()]  # a cancelled request needs no frames
        if not live:
            return
        try:
            images = self.renderer.render([(r.avatar, r.keypoints[i]) for r, i in live])
        except Exception as exc:  # noqa: BLE001 - the error belongs to the requests in this batch
            for r, _ in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        s = self.stats
        s.batches += 1
        s.frames += len(live)
        s.max_batch_seen = max(s.max_batch_seen, len(live))
        s.batch_sizes[len(live)] = s.batch_sizes.get(len(live), 0) + 1
        if len({r.session for r, _ in live}) > 1:
            s.multi_session_batches += 1
        for (r, _), image in zip(live, images):
            r.images.append(image)
            if len(r.images) == len(r.keypoints) and not r.future.done():
                r.future.set_result(np.stack(r.images))

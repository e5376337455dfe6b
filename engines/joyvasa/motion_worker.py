"""``MotionWorker``: one thread per motion generator that runs the DiT denoising of every session's windows.

A stream's motion window is 50 reverse diffusion steps (``engines.joyvasa.sampler.sample``), each one DiT call of
2 rows (the unconditional and conditional halves of classifier-free guidance). Sessions submit a whole window
(``MotionWindow``: audio features, context, x_T and the step noise drawn from the session's own generator) and
wait on a Future; the worker is the only thread that runs the network. It keeps up to ``max_batch`` windows
*active* and runs one DiT call per step over all of them (2 rows each, stacked): the step index is an input per
row, so windows at different steps share a call (continuous batching). A window that arrives while others are in
flight joins at the next step; with nothing in flight the worker waits at most ``max_wait_ms`` after the first
window for the windows of the other *active* sessions (those that submitted a window or got one back in the last
``ACTIVE_SESSION_S``) to join, and not at all when the first window's session is the only active one. Guidance and the posterior update are applied per row with each window's own
step coefficients, and each window's noise was pre-drawn by its session in ``sample``'s order, so a window's
result does not depend on who shares its calls: it equals ``sample_window`` up to float rounding (the network's
matrix products round differently at other batch sizes; tests/joyvasa/test_motion_worker.py measures it).

Windows of different lengths never share a call: each step runs one call per window length in flight.

Fairness: a free slot goes to the session with the fewest windows in flight, ties in round-robin order, so a
session with a backlog never starves the others. Back-pressure: at most ``max_pending`` windows wait to start;
a submit beyond that blocks up to its timeout and then raises :class:`MotionQueueFull`. ``cancel`` drops a
session's windows (queued and in flight), ``close`` stops the worker and fails what is left.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Hashable

import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.options import MOTION_MAX_BATCH, MOTION_MAX_WAIT_MS
from avatarstream.engines.joyvasa.sampler import posterior_coefficients

# A session that submitted or got back a window this recently counts as active: the idle worker waits for its next.
# Streams submit one window per chunk (400 ms of audio for the default 10 frames), so 1 s spans two of them.
ACTIVE_SESSION_S = 1.0


class MotionQueueFull(EngineError):
    """The shared motion queue stayed full for the whole submit timeout (the denoiser is saturated)."""


def step_noise(shape: tuple[int, ...], num_steps: int, generator: torch.Generator) -> torch.Tensor:
    """(num_steps - 1, *shape) float32: the noise ``sample`` draws for t = T..2, drawn in the same order."""
    draws = [torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
             for _ in range(num_steps - 1)]
    return torch.stack(draws) if draws else torch.zeros((0, *shape))


@dataclass(frozen=True)
class MotionWindow:
    """One window to denoise, as ``offline.sample_window`` takes it, with its step noise drawn beforehand."""

    audio: torch.Tensor  # (1, M, d) audio features
    prev_motion: torch.Tensor  # (1, P, 70) normalised context motion
    prev_audio: torch.Tensor  # (1, P, d) context audio features
    x_T: torch.Tensor  # (1, M, 70)
    noise: torch.Tensor  # (T - 1, 1, M, 70): step_noise(x_T.shape, T, the session's generator)
    cfg_scale: float

    @property
    def length(self) -> int:
        return int(self.x_T.shape[1])


@dataclass
class _Active:
    """A window in flight: its device tensors and where its reverse chain stands."""

    session: Hashable
    future: Future
    t: int  # the step the next call runs
    x: torch.Tensor  # (1, M, 70) float32 x_t on the model's device
    audio: torch.Tensor  # (2, M, d) [null, audio] in the network's dtype
    prev_motion: torch.Tensor  # (2, P, 70)
    prev_audio: torch.Tensor  # (2, P, d)
    cross: list  # per layer (2, P + M, d) cross-attention terms
    noise: torch.Tensor  # (T - 1, 1, M, 70) float32 on the device
    cfg_scale: float


@dataclass
class MotionWorkerStats:
    calls: int = 0  # DiT calls (one per step and window length in flight)
    windows: int = 0  # windows finished
    max_windows_per_call: int = 0
    windows_per_call: dict = field(default_factory=dict)  # windows in a call -> calls
    multi_session_calls: int = 0  # calls holding windows of more than one session
    mixed_step_calls: int = 0  # calls holding windows at different diffusion steps (continuous batching)

    @property
    def mean_windows_per_call(self) -> float:
        return sum(k * v for k, v in self.windows_per_call.items()) / max(1, self.calls)


class MotionWorker:
    """Batches the denoising of several sessions' motion windows on one model; see the module docstring."""

    def __init__(self, model: DitTalkingHead, *, max_batch: int = MOTION_MAX_BATCH,
                 max_wait_ms: float = MOTION_MAX_WAIT_MS, max_pending: int = 64, name: str = "motion-worker") -> None:
        if max_batch < 1 or max_pending < 1:
            raise EngineError(f"need max_batch >= 1 and max_pending >= 1, got {max_batch}, {max_pending}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_pending = max_pending
        self.stats = MotionWorkerStats()
        self._schedule = model.schedule()
        self.num_steps = self._steps = self._schedule.num_steps  # T: a window's noise is step_noise(..., T, ...)
        self._queues: "OrderedDict[Hashable, deque[tuple[MotionWindow, Future]]]" = OrderedDict()
        self._pending = 0  # windows queued, not started
        self._active: list[_Active] = []  # touched by the worker thread only
        self._in_flight: dict[Hashable, int] = {}  # session -> windows in flight (under the lock)
        self._last_seen: dict[Hashable, float] = {}  # session -> its last submit or finished window (under the lock)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- sessions' side ------------------------------------------------------------------------

    def submit(self, session: Hashable, window: MotionWindow, *, timeout: float = 10.0) -> Future:
        """Queue one window of ``session``; the future gets its x_0, (1, M, 70) float32 on the CPU."""
        expected = (self._steps - 1, *window.x_T.shape)
        if tuple(window.noise.shape) != expected:
            raise EngineError(f"a motion window needs step noise of shape {expected} (step_noise), "
                              f"got {tuple(window.noise.shape)}")
        future: Future = Future()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._pending >= self.max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MotionQueueFull(f"the motion queue stayed full ({self._pending} windows) for {timeout:.1f} s")
                self._cond.wait(left)
            if self._closed:
                raise EngineError("the motion worker is closed")
            self._queues.setdefault(session, deque()).append((window, future))
            self._pending += 1
            self._last_seen[session] = time.monotonic()
            self._cond.notify_all()
        return future

    def sample(self, session: Hashable, window: MotionWindow, *, timeout: float = 60.0) -> torch.Tensor:
        """Submit and wait: ``offline.sample_window``'s result for this window."""
        return self.submit(session, window).result(timeout)

    def cancel(self, session: Hashable) -> int:
        """Drop a leaving session's windows, queued or in flight (their futures are cancelled); returns how many."""
        with self._cond:
            queued = self._queues.pop(session, deque())
            self._pending -= len(queued)
            self._last_seen.pop(session, None)
            self._cond.notify_all()
        for _, future in queued:
            future.cancel()
        # In-flight windows: cancelling the future is enough, the worker drops done windows before each call.
        flying = [a for a in list(self._active) if a.session == session]
        for a in flying:
            a.future.cancel()
        return len(queued) + len(flying)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, fail what is queued or in flight, and join the worker thread."""
        with self._cond:
            self._closed = True
            queued = [f for q in self._queues.values() for _, f in q]
            self._queues.clear()
            self._pending = 0
            self._cond.notify_all()
        self._thread.join(timeout)
        for future in queued + [a.future for a in self._active]:
            _fail(future, EngineError("the motion worker is closed"))
        self._active = []

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the worker thread ----------------------------------------------------------------------

    def _take(self, room: int) -> list[tuple[Hashable, MotionWindow, Future]]:
        """Up to ``room`` queued windows, fewest-in-flight session first, ties round-robin. Caller holds the lock."""
        taken = []
        counts = dict(self._in_flight)
        while len(taken) < room and self._queues:
            order = list(self._queues)
            session = min(order, key=lambda s: (counts.get(s, 0), order.index(s)))
            queue = self._queues[session]
            window, future = queue.popleft()
            self._pending -= 1
            if not queue:
                del self._queues[session]
            else:
                self._queues.move_to_end(session)
            if future.cancelled():
                continue
            counts[session] = counts.get(session, 0) + 1
            taken.append((session, window, future))
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queues and not self._active:
                    self._cond.wait()
                if self._closed:
                    return
                if not self._active:  # nothing in flight: let the other active sessions join for a short while
                    now = time.monotonic()
                    until = now + self.max_wait_s
                    for s in [s for s, t in self._last_seen.items() if now - t > ACTIVE_SESSION_S]:
                        del self._last_seen[s]
                    expected = min(self.max_batch, len(self._last_seen))
                    while not self._closed and self._pending < expected:
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._closed:
                        return
                taken = self._take(self.max_batch - len(self._active))
                for session, _, _ in taken:
                    self._in_flight[session] = self._in_flight.get(session, 0) + 1
                self._cond.notify_all()  # room in the queue
            for session, window, future in taken:
                self._start(session, window, future)
            self._step()

    def _start(self, session: Hashable, window: MotionWindow, future: Future) -> None:
        model = self.model
        device, dtype = model.device, model.audio_feature_map.weight.dtype
        try:
            with torch.no_grad():
                audio = window.audio.to(device, dtype)
                audio_in = torch.cat([model.null_audio_feat.expand(1, audio.shape[1], -1), audio], 0)
                prev_motion = torch.cat([window.prev_motion, window.prev_motion], 0).to(device, dtype)
                prev_audio = torch.cat([window.prev_audio, window.prev_audio], 0).to(device, dtype)
                cross = model.denoising_net.cross_attention_terms(torch.cat([prev_audio, audio_in], 1))
                self._active.append(_Active(session, future, self._steps, window.x_T.to(device, torch.float32),
                                            audio_in, prev_motion, prev_audio, cross,
                                            window.noise.to(device, torch.float32), float(window.cfg_scale)))
        except Exception as exc:  # noqa: BLE001 - the error belongs to this window
            self._finish(session)
            _fail(future, exc)

    def _finish(self, session: Hashable) -> None:
        with self._cond:
            if session in self._last_seen:  # not after a cancel
                self._last_seen[session] = time.monotonic()
            left = self._in_flight.get(session, 0) - 1
            if left > 0:
                self._in_flight[session] = left
            else:
                self._in_flight.pop(session, None)

    def _step(self) -> None:
        for a in [a for a in self._active if a.future.done()]:  # cancelled or failed: no more calls for it
            self._active.remove(a)
            self._finish(a.session)
        groups: dict[int, list[_Active]] = {}
        for a in self._active:
            groups.setdefault(int(a.x.shape[1]), []).append(a)
        for group in groups.values():
            try:
                self._call(group)
            except Exception as exc:  # noqa: BLE001 - the error belongs to the windows of this call
                for a in group:
                    _fail(a.future, exc)
        for a in [a for a in self._active if a.future.done()]:
            self._active.remove(a)
            self._finish(a.session)

    @torch.no_grad()
    def _call(self, group: list[_Active]) -> None:
        """One DiT call for every window of ``group`` (same length), then each window's posterior update."""
        net, device = self.model.denoising_net, self.model.device
        dtype = group[0].audio.dtype
        k = len(group)
        x = torch.cat([a.x for a in group], 0)  # (k, M, 70)
        step = torch.tensor([a.t for a in group for _ in range(2)], dtype=torch.long, device=device)
        cross = [torch.cat(terms, 0) for terms in zip(*(a.cross for a in group))]
        out = net(x.repeat_interleave(2, 0).to(dtype), torch.cat([a.audio for a in group], 0),
                  torch.cat([a.prev_motion for a in group], 0), torch.cat([a.prev_audio for a in group], 0),
                  step, cross).float()
        out = out.view(k, 2, *out.shape[1:])
        uncond, cond = out[:, 0], out[:, 1]
        coef = [posterior_coefficients(self._schedule, a.t) for a in group]

        def column(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(k, 1, 1)

        x0 = uncond + column([a.cfg_scale for a in group]) * (cond - uncond)  # sampler.classifier_free_guidance
        x = column([c[0] for c in coef]) * x + column([c[1] for c in coef]) * x0
        noisy = [i for i, a in enumerate(group) if a.t > 1]
        if noisy:
            z = torch.zeros_like(x)
            for i in noisy:
                z[i] = group[i].noise[self._steps - group[i].t, 0]
            x = x + column([c[2] for c in coef]) * z
        s = self.stats
        s.calls += 1
        s.max_windows_per_call = max(s.max_windows_per_call, k)
        s.windows_per_call[k] = s.windows_per_call.get(k, 0) + 1
        if len({a.session for a in group}) > 1:
            s.multi_session_calls += 1
        if len({a.t for a in group}) > 1:
            s.mixed_step_calls += 1
        for i, a in enumerate(group):
            a.x = x[i:i + 1]
            a.t -= 1
            if a.t == 0:
                s.windows += 1
                _resolve(a.future, a.x.cpu())


def _resolve(future: Future, value) -> None:
    try:
        future.set_result(value)
    except InvalidStateError:  # cancelled meanwhile by its session
        pass


def _fail(future: Future, exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass

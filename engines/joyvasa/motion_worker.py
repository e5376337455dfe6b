"""``MotionWorker``: one thread per motion generator that runs the DiT denoising of every session's windows.

A stream's motion window is 50 reverse diffusion steps (``engines.joyvasa.sampler.sample``), each one DiT call of
2 rows (the unconditional and conditional halves of classifier-free guidance). Sessions submit a whole window
(``MotionWindow``: audio features, context, x_T and the step noise drawn from the session's own generator) and
wait on a Future; the worker is the only thread that runs the network. It keeps up to ``max_batch`` windows
*active* and runs one DiT call per step over all of them (2 rows each, stacked): the step index is an input per
row, so windows at different steps share a call (continuous batching). A window that arrives while others are in
flight joins at the next step; with nothing in flight the worker waits at most ``max_wait_ms`` after the first
window for the windows of the other *active* sessions (those that submitted a window or got one back in the last
``ACTIVE_SESSION_S`` on the worker's ``clock``) to join, and not at all when the first window's session is the
only active one; a finished window's session is released before it gets the result, so its next window finds it
released. Guidance and the posterior update are applied per row with each window's own
step coefficients, and each window's noise was pre-drawn by its session in ``sample``'s order, so a window's
result does not depend on who shares its calls: it equals ``sample_window`` up to float rounding (the network's
matrix products round differently at other batch sizes; tests/joyvasa/test_motion_worker.py measures it).

Windows of different lengths never share a call: each step runs one call per window length in flight.

Host traffic (CUDA): a window's inputs go up once when it starts (pinned, asynchronous), with its per-step values
built there on the device (its step indices, guidance scale, posterior coefficients from a table made once per
worker); the denoising steps then copy nothing and never wait for the GPU; its x_0 comes back once, when it is done.
The worker runs on its own CUDA stream, after the work queued before on the submitting threads' stream (the audio
features a session's thread computed): ``engines.runtimes.device_work``.

Fairness: a free slot goes to the session with the fewest windows in flight, ties in round-robin order, so a
session with a backlog never starves the others. Back-pressure: at most ``max_pending`` windows wait to start;
a submit beyond that blocks up to its timeout and then raises :class:`MotionQueueFull`. ``cancel`` drops a
session's windows (queued and in flight), ``close`` stops the worker and fails what is left. The queue, fairness,
deadline, cancel and close are ``engines.runtimes.batching_worker``'s; this module says only how windows are
batched: continuously, one DiT call per step over the windows in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.options import MOTION_MAX_BATCH, MOTION_MAX_WAIT_MS
from avatarstream.engines.joyvasa.sampler import posterior_coefficients
from avatarstream.engines.runtimes.batching_worker import BatchingWorker, QueuedRequest, fail_future, resolve_future
from avatarstream.engines.runtimes.device_work import new_stream, side_stream, upload

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
    cfg_scale: torch.Tensor  # (1, 1, 1) float32 on the device
    steps: torch.Tensor  # (T + 1,) long on the device: steps[t] = t (an index into it needs no copy)
    zero: torch.Tensor  # (1, M, 70) zeros on the device: the last step's noise
    x0: torch.Tensor | None = None  # the result on the CPU, once the chain is done (answered after the release)


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


class MotionWorker(BatchingWorker[MotionWindow]):
    """Batches the denoising of several sessions' motion windows on one model; see the module docstring."""

    label = "motion"
    unit = "windows"
    queue_full = MotionQueueFull

    def __init__(self, model: DitTalkingHead, *, max_batch: int = MOTION_MAX_BATCH,
                 max_wait_ms: float = MOTION_MAX_WAIT_MS, max_pending: int = 64, name: str = "motion-worker",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or max_pending < 1:
            raise EngineError(f"need max_batch >= 1 and max_pending >= 1, got {max_batch}, {max_pending}")
        self.model = model
        self.stats = MotionWorkerStats()
        self._schedule = model.schedule()
        self.num_steps = self._steps = self._schedule.num_steps  # T: a window's noise is step_noise(..., T, ...)
        self._active: list[_Active] = []  # touched by the worker thread only
        # per step t: (coefficient of x_t, of x0, sigma_t), row 0 unused; one upload for the worker's life
        table = [(0.0, 0.0, 0.0)] + [posterior_coefficients(self._schedule, t) for t in range(1, self._steps + 1)]
        self._coef = upload(torch.tensor(table, dtype=torch.float32), model.device)
        self._stream = new_stream(model.device)  # the worker's own CUDA stream (None on a CPU)
        super().__init__(max_batch=max_batch, max_wait_ms=max_wait_ms, max_pending=max_pending, name=name,
                         clock=clock)

    # -- sessions' side ------------------------------------------------------------------------

    def submit(self, session: Hashable, window: MotionWindow, *, timeout: float = 10.0) -> Future:
        """Queue one window of ``session``; the future gets its x_0, (1, M, 70) float32 on the CPU."""
        expected = (self._steps - 1, *window.x_T.shape)
        if tuple(window.noise.shape) != expected:
            raise EngineError(f"a motion window needs step noise of shape {expected} (step_noise), "
                              f"got {tuple(window.noise.shape)}")
        return self._enqueue(QueuedRequest(session, window, 1), timeout)

    def sample(self, session: Hashable, window: MotionWindow, *, timeout: float = 60.0) -> torch.Tensor:
        """Submit and wait: ``offline.sample_window``'s result for this window."""
        return self.submit(session, window).result(timeout)

    # -- how windows are batched: continuously, one DiT call per step ----------------------------

    def _busy(self) -> bool:
        return bool(self._active)

    def _room(self) -> int:
        return self.max_batch - len(self._active)

    def _batch_target(self) -> int:
        # idle: wait for the windows of the sessions active lately, not at all when the first one's is the only one
        return min(self.max_batch, self._recent_sessions(ACTIVE_SESSION_S))

    def _cancel_in_flight(self, session: Hashable) -> int:
        # Cancelling the future is enough: the worker drops done windows before each call.
        flying = [a for a in list(self._active) if a.session == session]
        for a in flying:
            a.future.cancel()
        return len(flying)

    def _fail_in_flight(self, exc: EngineError) -> None:
        for a in self._active:
            fail_future(a.future, exc)
        self._active = []

    def _process(self, taken: list[tuple[QueuedRequest[MotionWindow], int]]) -> None:
        with side_stream(self._stream):
            for request, _ in taken:
                self._start(request.session, request.payload, request.future)
            self._step()

    def _start(self, session: Hashable, window: MotionWindow, future: Future) -> None:
        model = self.model
        device, dtype = model.device, model.audio_feature_map.weight.dtype
        try:
            with torch.no_grad():
                audio = upload(window.audio, device, dtype)
                audio_in = torch.cat([model.null_audio_feat.expand(1, audio.shape[1], -1), audio], 0)
                prev_motion = upload(window.prev_motion, device, dtype).expand(2, -1, -1)
                prev_audio = upload(window.prev_audio, device, dtype).expand(2, -1, -1)
                cross = model.denoising_net.cross_attention_terms(torch.cat([prev_audio, audio_in], 1))
                x = upload(window.x_T, device, torch.float32)
                self._active.append(_Active(session, future, self._steps, x, audio_in, prev_motion, prev_audio,
                                            cross, upload(window.noise, device, torch.float32),
                                            torch.full((1, 1, 1), float(window.cfg_scale), device=device),
                                            torch.arange(self._steps + 1, device=device), torch.zeros_like(x)))
        except Exception as exc:  # noqa: BLE001 - the error belongs to this window
            self._release(session)
            fail_future(future, exc)

    def _step(self) -> None:
        for a in [a for a in self._active if a.future.done()]:  # cancelled or failed: no more calls for it
            self._active.remove(a)
            self._release(a.session)
        groups: dict[int, list[_Active]] = {}
        for a in self._active:
            groups.setdefault(int(a.x.shape[1]), []).append(a)
        for group in groups.values():
            try:
                self._call(group)
            except Exception as exc:  # noqa: BLE001 - the error belongs to the windows of this call
                for a in group:
                    fail_future(a.future, exc)
        for a in [a for a in self._active if a.future.done() or a.x0 is not None]:  # failed, cancelled or finished
            self._active.remove(a)
            self._release(a.session)  # before its session has the result: its next submit finds it released
            if a.x0 is not None:
                resolve_future(a.future, a.x0)

    @torch.no_grad()
    def _call(self, group: list[_Active]) -> None:
        """One DiT call for every window of ``group`` (same length), then each window's posterior update; every
        per-step value is indexed out of tensors already on the device (no copy, no wait)."""
        net = self.model.denoising_net
        dtype = group[0].audio.dtype
        k = len(group)
        x = torch.cat([a.x for a in group], 0)  # (k, M, 70)
        t = torch.cat([a.steps[a.t:a.t + 1] for a in group])  # (k,) long, on the device
        cross = [torch.cat(terms, 0) for terms in zip(*(a.cross for a in group))]
        # each window's row twice (its unconditional and conditional halves), by expand: a shape known on the host
        rows = x.unsqueeze(1).expand(k, 2, *x.shape[1:]).reshape(2 * k, *x.shape[1:])
        out = net(rows.to(dtype), torch.cat([a.audio for a in group], 0),
                  torch.cat([a.prev_motion for a in group], 0), torch.cat([a.prev_audio for a in group], 0),
                  t.unsqueeze(1).expand(k, 2).reshape(2 * k), cross).float()
        out = out.view(k, 2, *out.shape[1:])
        uncond, cond = out[:, 0], out[:, 1]
        coef = self._coef[t].view(k, 3, 1, 1)  # (c_xt, c_x0, sigma) per window
        x0 = uncond + torch.cat([a.cfg_scale for a in group]) * (cond - uncond)  # sampler.classifier_free_guidance
        x = coef[:, 0] * x + coef[:, 1] * x0
        if any(a.t > 1 for a in group):
            z = torch.cat([a.noise[self._steps - a.t] if a.t > 1 else a.zero for a in group])
            x = x + coef[:, 2] * z
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
                a.x0 = a.x.cpu()  # answered by _step, once released


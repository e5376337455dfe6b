"""Streaming JoyVASA: audio in small pieces -> motion in chunks of N frames with bounded lookahead.

The offline algorithm generates 100 frames at a time from 4 s of audio. Here each step generates
the next ``chunk_frames`` (N) frames, as soon as the audio for them plus ``lookahead_ms`` more has
arrived:

* Audio features are computed on the segment [chunk start - left context, chunk end + lookahead)
  with the reference front end (reflect padding, 50 Hz -> 25 fps), and the N + la features of the
  new and lookahead frames are kept.
* The motion window is conditioned, as offline, on the last 25 generated frames and their audio
  features (initially the learned start features, rolled as frames arrive).
* The window positions after the known audio are either dropped (``future_fill="truncate"``, the
  default: a window of N + la frames) or filled with the learned ``null_audio_feat``
  (``"null"``: the network sees the 100-frame windows it was trained on, at ~2x the CPU cost).
* Only the first N frames are kept. x_T is drawn once per stream, like offline, and each window
  takes the slice of it that offline would give its frames: generated frame k (counting the two
  pre-roll frames) starts from x_T[k mod 100], so consecutive chunks start from different noise.
* ``flush`` returns exactly the frames of the audio pushed (ceil(samples / 640)), as
  ``engines.base`` asks; the 640 silent samples the reference appends only condition the last
  frames, they add none.

With N = 100, no lookahead and no left context this is exactly the offline algorithm (tested).
Stream clock: frame n covers pushed samples [n * 640, (n + 1) * 640); 1280 samples of silence are
prepended at the start of a stream (as offline; those two frames have negative indices and are
never emitted, the first of them is ``reference_frame``).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
import torch

from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, StageTimes, check_audio
from avatarstream.engines.joyvasa.motion import POSE_TERMS, MotionFrame, MotionTemplate, PoseSmoother
from avatarstream.engines.joyvasa.motion_worker import MotionWindow, MotionWorker, step_noise
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.offline import PREROLL_FRAMES, PREROLL_SAMPLES, TAIL_SAMPLES, initial_noise, sample_window
from avatarstream.engines.joyvasa.sampler import DEFAULT_CFG_SCALE

FUTURE_FILLS = ("null", "truncate")
FRAME_MS = 1000 * SAMPLES_PER_FRAME / SAMPLE_RATE  # 40
# longest wait for the shared motion worker's result of one window: a window is ~0.1 s on a GPU and a few seconds on
# a CPU; a minute means the worker is stuck, and the stream says so (the GPU check's sections are bounded too)
WINDOW_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StreamingConfig:
    chunk_frames: int = 10  # N: frames generated per step
    lookahead_ms: float = 80.0  # audio after the chunk that conditions it (rounded up to 40 ms frames)
    audio_context_ms: float = 1000.0  # audio before the chunk given to the encoder
    future_fill: str = "truncate"  # measured closer to offline and ~2x cheaper than "null" (docs/joyvasa.md)
    cfg_scale: float = DEFAULT_CFG_SCALE
    seed: int = 0
    smooth: bool = True
    cuda_graphs: bool = False  # replay the denoising step as a CUDA graph (model on CUDA)

    @property
    def lookahead_audio_frames(self) -> int:
        return math.ceil(self.lookahead_ms / FRAME_MS - 1e-9)

    @property
    def context_frames(self) -> int:
        return math.ceil(self.audio_context_ms / FRAME_MS - 1e-9)

    def validate(self, n_motions: int) -> None:
        if not 1 <= self.chunk_frames <= n_motions:
            raise EngineError(f"chunk_frames must be in 1..{n_motions}, got {self.chunk_frames}")
        if self.lookahead_ms < 0 or self.audio_context_ms < 0:
            raise EngineError("lookahead_ms and audio_context_ms must be >= 0")
        if self.chunk_frames + self.lookahead_audio_frames > n_motions:
            raise EngineError(f"chunk ({self.chunk_frames}) + lookahead ({self.lookahead_audio_frames} frames) "
                              f"must fit in one {n_motions}-frame window")
        if self.future_fill not in FUTURE_FILLS:
            raise EngineError(f"future_fill must be one of {FUTURE_FILLS}, got {self.future_fill!r}")


@dataclass
class _Row:
    """One generated frame kept as context: stream index, normalised motion, audio feature, smoothed pose."""

    index: int
    motion: torch.Tensor  # (70,)
    audio: torch.Tensor  # (d,)
    pose: np.ndarray  # (7,)


class StreamingMotionGenerator:
    """JoyVASA as a ``MotionGenerator`` (see ``engines.joyvasa.generator``).

    ``worker``: a ``MotionWorker`` shared with other streams of the same model; each window's denoising is
    submitted to it (batched with theirs) instead of run here. Without one the stream samples on its own.
    """

    def __init__(self, model: DitTalkingHead, template: MotionTemplate | None = None,
                 config: StreamingConfig = StreamingConfig(), worker: MotionWorker | None = None) -> None:
        config.validate(model.cfg.n_motions)
        if worker is not None and (worker.model is not model or config.cuda_graphs):
            raise EngineError("a shared motion worker needs the stream's own model and no cuda_graphs "
                              "(the worker runs the denoiser for every stream)")
        self.model = model
        self.worker = worker
        self.template = template or MotionTemplate.synthetic()
        self.config = config
        self.lookahead_frames = config.chunk_frames - 1 + config.lookahead_audio_frames
        self.times = StageTimes()
        self.chunk_ms: list[float] = []  # wall time of each generated chunk
        self._smoother = PoseSmoother(enabled=config.smooth)
        # the learned start context, read once per stream: motion on the host; audio features (and the null fill)
        # on the model's device with a shared worker (the encoder's output stays there), else on the host
        on_device = worker is not None
        with torch.no_grad():
            self._start_motion = model.start_motion_feat.detach().float().cpu()
            self._start_audio = model.start_audio_feat.detach().float()
            self._null_audio = model.null_audio_feat.detach().float()
            if not on_device:
                self._start_audio, self._null_audio = self._start_audio.cpu(), self._null_audio.cpu()
        self._graphed = None
        if config.cuda_graphs:
            if model.device.type != "cuda":
                raise EngineError("cuda_graphs needs the model on a CUDA device")
            from avatarstream.engines.joyvasa.cuda_graphs import GraphedDenoiser

            window = model.cfg.n_motions if config.future_fill == "null" else config.chunk_frames + config.lookahead_audio_frames
            self._graphed = GraphedDenoiser(model, window)
        self.reset()

    # -- MotionGenerator -------------------------------------------------------------------------

    @property
    def reference_frame(self) -> MotionFrame | None:
        return self._reference

    def reset(self) -> None:
        self._audio = np.zeros(PREROLL_SAMPLES, np.float32)
        self._audio_frame0 = -PREROLL_FRAMES  # stream index of self._audio[0]
        self._next = -PREROLL_FRAMES  # first frame not generated yet
        self._pushed = 0  # samples pushed since the last reset / flush / interrupt
        self._utterance_start = 0  # stream index of the first frame of the audio pushed since then
        self._pending: list[MotionFrame] = []
        self._last_out = -1  # last frame handed out
        self._rows: list[_Row] = []
        self._smoother.reset()
        self._reference: MotionFrame | None = None
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._x_T = initial_noise(self.model, self.model.cfg.n_motions, self._generator)

    def push_audio(self, pcm16k: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        a = check_audio(pcm16k, sample_rate)
        if a.size == 0:
            return
        self._audio = np.concatenate([self._audio, a])
        self._pushed += a.size
        while self._available_frames() >= self._next + self.config.chunk_frames + self.config.lookahead_audio_frames:
            self._generate_chunk(end=None)

    def pull_motion(self) -> list[MotionFrame]:
        out, self._pending = self._pending, []
        if out:
            self._last_out = out[-1].index
        return out

    def flush(self) -> list[MotionFrame]:
        if self._pushed:
            self._audio = np.concatenate([self._audio, np.zeros(TAIL_SAMPLES, np.float32)])
            # every frame the pushed audio touches (a partial last frame included), none for the tail
            end = self._utterance_start + -(-self._pushed // SAMPLES_PER_FRAME)
            while self._next < end:
                need = (self._next + self.config.chunk_frames + self.config.lookahead_audio_frames
                        - self._audio_frame0) * SAMPLES_PER_FRAME
                if self._audio.size < need:
                    self._audio = np.concatenate([self._audio, np.zeros(need - self._audio.size, np.float32)])
                self._generate_chunk(end=end)
        out = self.pull_motion()
        self._restart_after(self._last_out)
        return out

    def interrupt(self) -> None:
        self._pending = []
        self._restart_after(self._last_out)

    def close(self) -> None:
        """Withdraw this stream's windows from the shared motion worker (a stream leaving mid-window)."""
        if self.worker is not None:
            self.worker.cancel(self)

    # -- internals -------------------------------------------------------------------------------

    def _available_frames(self) -> int:
        return self._audio_frame0 + self._audio.size // SAMPLES_PER_FRAME

    def _restart_after(self, last: int) -> None:
        """Forget audio and every generated frame after ``last``; the next pushed sample starts frame last + 1."""
        self._rows = [r for r in self._rows if r.index <= last]
        self._smoother._state = self._rows[-1].pose.copy() if self._rows else None
        self._next = self._audio_frame0 = self._utterance_start = last + 1
        self._audio = np.zeros(0, np.float32)
        self._pushed = 0

    def _context(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev_motion, prev_audio): the motion on the host (it came back from the denoiser), the audio features
        where the encoder left them (on the model's device with a shared worker)."""
        p = self.model.cfg.n_prev_motions
        rows = self._rows[-p:]
        start_m, start_a = self._start_motion, self._start_audio
        if not rows:
            return start_m, start_a
        m = torch.stack([r.motion for r in rows]).unsqueeze(0)
        a = torch.stack([r.audio for r in rows]).unsqueeze(0)
        if len(rows) < p:
            m = torch.cat([start_m[:, len(rows):], m], 1)
            a = torch.cat([start_a[:, len(rows):], a], 1)
        return m, a

    def _noise(self, start: int, length: int) -> torch.Tensor:
        """x_T for the window whose first frame is ``start``: offline's slice for those frames (x_T[k mod M])."""
        window = self.model.cfg.n_motions
        offset = (start + PREROLL_FRAMES) % window
        return torch.roll(self._x_T, -offset, dims=1)[:, :length]

    def _await(self, future) -> torch.Tensor:
        try:
            return future.result(WINDOW_TIMEOUT_S)
        except CancelledError:
            raise EngineError("the stream's motion window was cancelled (the stream closed)") from None
        except FutureTimeout:
            future.cancel()
            raise EngineError(f"the shared motion worker gave no result in {WINDOW_TIMEOUT_S:.0f} s") from None

    @torch.no_grad()
    def _generate_chunk(self, end: int | None) -> None:
        cfg, model = self.config, self.model
        n, la = cfg.chunk_frames, cfg.lookahead_audio_frames
        start = self._next
        seg0 = max(self._audio_frame0, start - cfg.context_frames)
        seg1 = start + n + la
        i0, i1 = (seg0 - self._audio_frame0) * SAMPLES_PER_FRAME, (seg1 - self._audio_frame0) * SAMPLES_PER_FRAME
        t0 = time.perf_counter()
        feats = model.audio_features(torch.from_numpy(self._audio[i0:i1]).unsqueeze(0))[:, start - seg0:]
        if self.worker is None:
            feats = feats.cpu()  # sample_window's path runs on the host's copies
        t1 = time.perf_counter()
        self.times.add("audio_features", 1000 * (t1 - t0))
        window = model.cfg.n_motions
        if cfg.future_fill == "null" and n + la < window:
            null = self._null_audio.expand(1, window - n - la, -1)
            audio_in, x_T = torch.cat([feats, null], 1), self._noise(start, window)
        elif cfg.future_fill == "null":
            audio_in, x_T = feats, self._noise(start, window)
        else:
            audio_in, x_T = feats, self._noise(start, n + la)
        prev_motion, prev_audio = self._context()
        if self.worker is not None:
            noise = step_noise(tuple(x_T.shape), self.worker.num_steps, self._generator)  # sample()'s draws
            job = MotionWindow(audio_in, prev_motion, prev_audio, x_T, noise, cfg.cfg_scale)
            motion = self._await(self.worker.submit(self, job))[0, :n]
        else:
            motion = sample_window(model, audio_in, prev_motion, prev_audio, x_T, cfg_scale=cfg.cfg_scale,
                                   generator=self._generator, graphed=self._graphed)[0, :n]
        t2 = time.perf_counter()
        self.times.add("diffusion", 1000 * (t2 - t1))
        self.chunk_ms.append(1000 * (t2 - t0))

        smoothed = self._smoother(self.template.denormalize(motion.numpy()))
        pose_idx = list(POSE_TERMS)
        for k in range(n):
            index = start + k
            self._rows.append(_Row(index, motion[k], feats[0, k], smoothed[k, pose_idx].copy()))
            frame = MotionFrame.from_vector(index, smoothed[k])
            if self._reference is None:
                self._reference = frame
            if index >= 0 and (end is None or index < end):
                self._pending.append(frame)
        self._next = start + n
        keep_from = self._last_out - model.cfg.n_prev_motions
        self._rows = [r for r in self._rows if r.index > keep_from] if len(self._rows) > 4 * window else self._rows
        drop = max(0, self._next - cfg.context_frames - self._audio_frame0)
        if drop:
            self._audio = self._audio[drop * SAMPLES_PER_FRAME:]
            self._audio_frame0 += drop

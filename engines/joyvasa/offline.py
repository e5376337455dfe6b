"""Whole audio -> motion, window by window: the reference algorithm (ARCHITECTURE.md 2.4).

1. Prepend 1280 and append 640 zero samples (2 frames and 1 frame of silence).
2. Non-overlapping windows of n_motions = 100 frames (64,000 samples); the tail is zero-padded and
   the padded frames are dropped, leaving floor(L / 640) frames.
3. Window 0 is conditioned on the learned ``start_motion_feat`` / ``start_audio_feat``; window i > 0
   on the last 25 generated (normalised) frames of window i - 1 and their conditional audio features.
4. Each window's audio is encoded on its own; one x_T is drawn for window 0 and reused for every window.
5. De-normalise with the motion template, then EMA-smooth the pose terms.

Generated frame k belongs to original-audio time (k - 2) * 40 ms: on the stream clock its index is
k - 2, so the first two (pre-roll) frames have negative indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, check_audio
from avatarstream.engines.joyvasa.motion import MotionFrame, MotionTemplate, PoseSmoother
from avatarstream.engines.joyvasa.network import DitTalkingHead
from avatarstream.engines.joyvasa.sampler import DEFAULT_CFG_SCALE, sample

PREROLL_SAMPLES = 1280
TAIL_SAMPLES = 640
PREROLL_FRAMES = PREROLL_SAMPLES // SAMPLES_PER_FRAME


@dataclass(frozen=True)
class MotionSequence:
    """Motion for a whole clip: row k is generated frame k (stream index ``first_index + k``)."""

    normalized: np.ndarray  # (K, 70) network output
    motion: np.ndarray  # (K, 70) de-normalised and smoothed
    first_index: int = -PREROLL_FRAMES

    def frames(self, include_preroll: bool = False) -> list[MotionFrame]:
        out = [MotionFrame.from_vector(self.first_index + k, v) for k, v in enumerate(self.motion)]
        return out if include_preroll else [f for f in out if f.index >= 0]


def window_layout(n_samples: int, n_motions: int) -> tuple[int, int]:
    """(frames kept, windows run) for ``n_samples`` of padded audio: floor(n / 640) frames in
    ceil(frames / n_motions) windows (at least one)."""
    n_frames = n_samples // SAMPLES_PER_FRAME
    return n_frames, max(1, -(-n_frames // n_motions))


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad or cut ``audio`` to ``length`` samples. A cut only drops the samples of a partial last
    frame (fewer than 640), which no kept frame uses."""
    if audio.size >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - audio.size, audio.dtype)])


def initial_noise(model: DitTalkingHead, length: int, generator: torch.Generator) -> torch.Tensor:
    """x_T (1, length, motion_feat_dim), float32, drawn on the generator's device."""
    return torch.randn((1, length, model.cfg.motion_feat_dim), generator=generator, device=generator.device)


@torch.no_grad()
def sample_window(model: DitTalkingHead, audio_feat: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor,
                  x_T: torch.Tensor, *, cfg_scale: float, generator: torch.Generator, graphed=None) -> torch.Tensor:
    """One motion window: (1, M, d) audio features + (1, P, .) context -> (1, M, 70) normalised motion.

    ``graphed``: an optional ``cuda_graphs.GraphedDenoiser`` for windows of this length.
    """
    source = graphed if graphed is not None else model
    denoise = source.guided_denoiser(audio_feat, prev_motion, prev_audio)
    return sample(denoise, x_T.to(model.device), model.schedule(), cfg_scale=cfg_scale, generator=generator).cpu()


def validate_clip(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    a = check_audio(audio, sample_rate)
    if a.size == 0:
        raise EngineError("audio is empty: JoyVASA needs at least one sample of 16 kHz mono speech")
    return a


@torch.no_grad()
def generate_offline(model: DitTalkingHead, audio: np.ndarray, *, sample_rate: int = SAMPLE_RATE,
                     template: MotionTemplate | None = None, cfg_scale: float = DEFAULT_CFG_SCALE, seed: int = 0,
                     smooth: bool = True, progress: bool = False) -> MotionSequence:
    """The reference long-audio algorithm on mono 16 kHz audio (float32 in [-1, 1] or int16)."""
    a = validate_clip(audio, sample_rate)
    template = template or MotionTemplate.synthetic()
    n_motions = model.cfg.n_motions
    window = n_motions * SAMPLES_PER_FRAME
    padded = np.concatenate([np.zeros(PREROLL_SAMPLES, np.float32), a, np.zeros(TAIL_SAMPLES, np.float32)])
    n_frames, n_windows = window_layout(padded.size, n_motions)
    padded = fit_length(padded, n_windows * window)

    generator = torch.Generator().manual_seed(seed)
    x_T = initial_noise(model, n_motions, generator)
    prev_motion, prev_audio = model.start_motion_feat.float().cpu(), model.start_audio_feat.float().cpu()
    p = model.cfg.n_prev_motions
    out = []
    for i in tqdm(range(n_windows), desc="joyvasa windows", disable=not progress):
        chunk = torch.from_numpy(padded[i * window:(i + 1) * window]).unsqueeze(0)
        feat = model.audio_features(chunk).cpu()
        motion = sample_window(model, feat, prev_motion, prev_audio, x_T, cfg_scale=cfg_scale, generator=generator)
        out.append(motion[0])
        prev_motion, prev_audio = motion[:, -p:], feat[:, -p:]
    normalized = torch.cat(out, 0)[:n_frames].numpy()
    motion = PoseSmoother(enabled=smooth)(template.denormalize(normalized))
    return MotionSequence(normalized=normalized, motion=motion)

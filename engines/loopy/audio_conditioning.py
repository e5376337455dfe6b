"""Audio conditioning: multi-layer wav2vec2 features at the video frame rate, 5-frame windows,
and their projection into audio cross-attention tokens.

* ``AudioFeatureExtractor`` runs ``transformers.Wav2Vec2Model`` with
  ``output_hidden_states=True`` and concatenates the hidden states of all layers
  (embedding output + every transformer layer: 13 x 768 = 9984 channels for wav2vec2-base),
  resampled from ~50 Hz to 25 fps. Long audio is processed in chunks with context on both sides.
* ``audio_windows`` gives every frame the features of the 5 frames centred on it.
* ``AudioProjection`` maps each window position to a cross-attention token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatarstream.engines.base import SAMPLES_PER_FRAME


def audio_feature_dim(wav2vec2_config) -> int:
    return (wav2vec2_config.num_hidden_layers + 1) * wav2vec2_config.hidden_size


class AudioFeatureExtractor:
    """Frozen wav2vec2 -> ``(num_frames, (layers + 1) * hidden)`` features at 25 fps."""

    def __init__(self, model, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 chunk_frames: int = 500, context_frames: int = 25) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.feature_dim = audio_feature_dim(model.config)

    @staticmethod
    def prepare(audio: np.ndarray, num_frames: int) -> np.ndarray:
        """Pad/trim to ``num_frames`` video frames of samples and normalise (wav2vec2 input convention)."""
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        total = num_frames * SAMPLES_PER_FRAME
        padded = np.zeros(total, np.float32)
        padded[: min(total, audio.size)] = audio[:total]
        std = float(padded.std())
        return (padded - padded.mean()) / (std + 1e-7) if std > 0 else padded

    @torch.no_grad()
    def features(self, prepared: np.ndarray, f0: int, f1: int) -> torch.Tensor:
        """Features of video frames ``[f0, f1)`` of prepared audio, computed with context on both sides."""
        num_frames = prepared.size // SAMPLES_PER_FRAME
        if not 0 <= f0 < f1 <= num_frames:
            raise ValueError(f"frame range [{f0}, {f1}) outside the {num_frames} frames of audio")
        out = []
        for c0 in range(f0, f1, self.chunk_frames):
            c1 = min(f1, c0 + self.chunk_frames)
            a0, a1 = max(0, c0 - self.context_frames), min(num_frames, c1 + self.context_frames)
            x = torch.from_numpy(prepared[a0 * SAMPLES_PER_FRAME: a1 * SAMPLES_PER_FRAME])[None]
            hidden = self.model(x.to(self.device, self.dtype), output_hidden_states=True).hidden_states
            feats = torch.cat(hidden, dim=-1)  # (1, ~50 Hz, (layers + 1) * hidden)
            feats = F.interpolate(feats.transpose(1, 2).float(), size=a1 - a0, mode="linear", align_corners=False)
            out.append(feats[0].transpose(0, 1)[c0 - a0: c1 - a0])
        return torch.cat(out, dim=0)

    def __call__(self, audio: np.ndarray, num_frames: int) -> torch.Tensor:
        """All ``num_frames`` frames of features for ``audio`` (16 kHz mono float)."""
        return self.features(self.prepare(audio, num_frames), 0, num_frames)


class ChunkedAudioFeatures:
    """Features of one audio track computed exactly as ``AudioFeatureExtractor(audio, num_frames)``
    computes them for training (same normalisation, chunks and context), but chunk by chunk on
    demand so a long render never holds all of them. Windows replicate the first/last frame
    beyond the audio's ends, as ``audio_windows`` does at a training clip's ends."""

    def __init__(self, extractor: AudioFeatureExtractor, audio: np.ndarray, num_frames: int, keep_chunks: int = 2) -> None:
        self.extractor = extractor
        self.prepared = extractor.prepare(audio, num_frames)
        self.num_frames = num_frames
        self.keep_chunks = keep_chunks
        self._chunks: dict[int, torch.Tensor] = {}

    def _chunk(self, k: int) -> torch.Tensor:
        if k not in self._chunks:
            size = self.extractor.chunk_frames
            self._chunks[k] = self.extractor.features(self.prepared, k * size, min(self.num_frames, (k + 1) * size))
            while len(self._chunks) > self.keep_chunks:
                self._chunks.pop(next(iter(self._chunks)))
        return self._chunks[k]

    def frames(self, f0: int, f1: int) -> torch.Tensor:
        """Features of frames ``[f0, f1)``, indices clamped to the audio (edge replication)."""
        size = self.extractor.chunk_frames
        idx = np.clip(np.arange(f0, f1), 0, self.num_frames - 1)
        return torch.stack([self._chunk(int(i) // size)[int(i) % size] for i in idx])

    def windows(self, start: int, length: int, window: int = 5) -> torch.Tensor:
        """Audio windows ``(length, window, D)`` for frames ``[start, start + length)``."""
        half = window // 2
        feats = self.frames(start - half, start + length + half)
        return feats.unfold(0, window, 1).permute(0, 2, 1).contiguous()


def audio_windows(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """``(T, D)`` -> ``(T, window, D)``: each frame with its neighbours, edges replicated."""
    if window % 2 != 1:
        raise ValueError("audio window must be odd (centred on the frame)")
    half = window // 2
    padded = torch.cat([features[:1].expand(half, -1), features, features[-1:].expand(half, -1)], dim=0)
    return padded.unfold(0, window, 1).permute(0, 2, 1).contiguous()


class AudioProjection(nn.Module):
    """Window of multi-layer audio features ``(N, W, D)`` -> audio cross-attention tokens ``(N, W, cross_dim)``."""

    def __init__(self, feature_dim: int, cross_attention_dim: int, window: int = 5) -> None:
        super().__init__()
        hidden = 2 * cross_attention_dim
        self.window = window
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, cross_attention_dim),
        )
        self.position = nn.Parameter(torch.zeros(window, cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(windows) + self.position.to(windows.dtype))

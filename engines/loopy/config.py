"""Typed configuration for Loopy: the full SD-1.5-sized model and a tiny one for tests.

A ``LoopyConfig`` round-trips through JSON (``loopy.json`` in a weights directory) so a
checkpoint always carries the exact architecture it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from avatarstream.engines.base import EngineError


@dataclass(frozen=True)
class TemporalSegmentConfig:
    """Temporal segment module (TSM): segment k (1 = nearest the clip) covers
    ``stride * expand_ratio**(k-1)`` past frames and yields ``stride`` motion latents."""

    stride: int = 4
    expand_ratio: int = 2
    num_segments: int = 5
    sampling: str = "uniform"  # "uniform", "average" or "random"

    @property
    def total_frames(self) -> int:
        return sum(self.stride * self.expand_ratio**k for k in range(self.num_segments))

    @property
    def num_latents(self) -> int:
        return self.stride * self.num_segments


@dataclass(frozen=True)
class GuidanceConfig:
    """Three-pass classifier-free guidance ratios (paper: audio 5, reference 3)."""

    audio_ratio: float = 5.0
    reference_ratio: float = 3.0


@dataclass(frozen=True)
class SamplingConfig:
    num_steps: int = 25  # DDIM steps
    eta: float = 0.0


@dataclass(frozen=True)
class ConditionDropout:
    """Training-time condition masking (paper): audio + audio motion latents 10 %,
    reference image together with its motion frames 15 %, motion frames alone 40 %."""

    audio: float = 0.10
    reference: float = 0.15
    motion_frames: float = 0.40


SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

WAV2VEC2_BASE: dict[str, Any] = {}  # transformers' Wav2Vec2Config defaults = wav2vec2-base (12 layers, 768)

TINY_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_WAV2VEC2: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32, 32, 32, 32, 32, 32],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


@dataclass(frozen=True)
class LoopyConfig:
    name: str
    resolution: int  # square crop size in pixels (512 for SD-1.5)
    unet: dict[str, Any]  # UNet2DConditionModel kwargs shared by the reference and denoising U-Nets
    vae: dict[str, Any]  # AutoencoderKL kwargs (used when no VAE directory is given)
    wav2vec2: dict[str, Any]  # Wav2Vec2Config kwargs (used when no wav2vec2 directory is given)
    clip_frames: int = 12
    fps: int = 25
    audio_window: int = 5  # frames of wav2vec2 features per audio cross-attention token set
    temporal_heads: int = 8
    audio_latent_embeddings: int = 128
    audio_latent_dim: int = 256
    audio_latent_heads: int = 4
    tsm: TemporalSegmentConfig = field(default_factory=TemporalSegmentConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dropout: ConditionDropout = field(default_factory=ConditionDropout)

    @property
    def latent_size(self) -> int:
        return self.resolution // 8

    @property
    def time_embed_dim(self) -> int:
        return int(self.unet["block_out_channels"][0]) * 4  # 1280 for SD-1.5

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoopyConfig":
        nested = {"tsm": TemporalSegmentConfig, "guidance": GuidanceConfig, "sampling": SamplingConfig,
                  "dropout": ConditionDropout}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EngineError(f"unknown Loopy config fields: {sorted(unknown)}")
        kwargs = dict(data)
        for key, typ in nested.items():
            if key in kwargs and isinstance(kwargs[key], dict):
                kwargs[key] = typ(**kwargs[key])
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> "LoopyConfig":
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"Loopy config not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise EngineError(f"invalid Loopy config {path}: {exc}") from exc


def full_config() -> LoopyConfig:
    """The paper's model: SD-1.5 U-Nets at 512x512, wav2vec2-base audio features."""
    return LoopyConfig(name="full", resolution=512, unet=dict(SD15_UNET), vae=dict(SD15_VAE),
                       wav2vec2=dict(WAV2VEC2_BASE))


def tiny_config() -> LoopyConfig:
    """Same architecture with tiny channels at 64x64: runs end to end on a CPU in seconds."""
    return LoopyConfig(name="tiny", resolution=64, unet=dict(TINY_UNET), vae=dict(TINY_VAE),
                       wav2vec2=dict(TINY_WAV2VEC2), temporal_heads=2, audio_latent_embeddings=128,
                       audio_latent_dim=32, audio_latent_heads=2)


CONFIGS = {"full": full_config, "tiny": tiny_config}


def get_config(name: str, **overrides: Any) -> LoopyConfig:
    if name not in CONFIGS:
        raise EngineError(f"unknown Loopy config {name!r}; choose one of: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name](), **overrides)

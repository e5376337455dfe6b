"""Loopy's audio-to-latents module.

A bank of 128 learnable embeddings serves as keys and values of one attention layer
(256 channels). One query token (the paper's token count) comes from fully connected layers
applied to the condition: the frame's whole audio feature window (flattened) at inference;
during training, with equal probability, the audio, the clip's head-motion variance or its
expression variance. The attended token is projected to the U-Net's time-embedding width (1280 for SD-1.5) and added to the timestep
embedding of every frame, so audio and motion-related signals share one latent space.
The output projection starts at zero (a new module does not disturb a trained U-Net).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

QUERY_SOURCES = ("audio", "head_motion_variance", "expression_variance")


class AudioToLatents(nn.Module):
    def __init__(self, audio_feature_dim: int, out_dim: int, num_embeddings: int = 128, dim: int = 256,
                 heads: int = 4, window: int = 5) -> None:
        super().__init__()
        self.window = window
        self.embeddings = nn.Parameter(torch.randn(num_embeddings, dim) * dim**-0.5)
        self.audio_query = nn.Sequential(nn.Linear(window * audio_feature_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.head_motion_query = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.expression_query = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, out_bias=True)
        self.proj_out = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def attend(self, query: torch.Tensor) -> torch.Tensor:
        """``(N, 1, dim)`` query tokens -> ``(N, out_dim)`` motion latents."""
        if query.shape[1] != 1:
            raise ValueError(f"audio-to-latents takes one query token per item, got {query.shape[1]}")
        kv = self.embeddings.to(query.dtype)[None].expand(query.shape[0], -1, -1)
        out = self.attn(self.norm(query), encoder_hidden_states=kv)
        return self.proj_out(out[:, 0])

    def forward(self, audio_windows: torch.Tensor | None = None, *, variance: torch.Tensor | None = None,
                source: str = "audio") -> torch.Tensor:
        """Audio ``(N, W, D)`` or a variance ``(N,)`` (log-scaled) -> ``(N, out_dim)``."""
        if source == "audio":
            if audio_windows is None:
                raise ValueError("audio windows are required for source='audio'")
            if audio_windows.shape[1] != self.window:
                raise ValueError(f"audio windows of {audio_windows.shape[1]} frames; expected {self.window}")
            return self.attend(self.audio_query(audio_windows.flatten(1)[:, None]))
        if source not in QUERY_SOURCES:
            raise ValueError(f"unknown audio-to-latents source {source!r}; choose one of {QUERY_SOURCES}")
        if variance is None:
            raise ValueError(f"a variance value is required for source={source!r}")
        mlp = self.head_motion_query if source == "head_motion_variance" else self.expression_query
        dtype = self.embeddings.dtype
        return self.attend(mlp(variance.reshape(-1, 1, 1).to(dtype)))

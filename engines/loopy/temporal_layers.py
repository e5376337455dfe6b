"""Loopy's inter-clip and intra-clip temporal layers.

Both attend along time at every spatial location of a U-Net feature map.

* ``InterClipTemporalLayer``: the motion-frame features (from the reference net, same layer)
  are concatenated with the noisy-latent features along time; a learnable type embedding
  (motion frame vs. noisy latent) is added to every token, then self-attention runs over the
  joint sequence. Only the noisy-latent part is returned.
* ``IntraClipTemporalLayer``: self-attention over the current clip's frames only.

Output projections start at zero, so a freshly added layer is the identity and does not
disturb the (stage-1) spatial network.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

MAX_TEMPORAL_TOKENS = 256


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


def _num_groups(channels: int, preferred: int = 32) -> int:
    g = min(preferred, channels)
    while channels % g:
        g -= 1
    return g


class _TemporalAttentionBlock(nn.Module):
    """norm -> proj_in -> (+pos) -> self-attention -> feed-forward -> zero-init proj_out."""

    def __init__(self, channels: int, heads: int, norm_groups: int = 32) -> None:
        super().__init__()
        heads = max(1, min(heads, channels))
        while channels % heads:
            heads -= 1
        self.norm = nn.GroupNorm(_num_groups(channels, norm_groups), channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.attn_norm = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False)
        self.ff_norm = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.register_buffer("positions", sinusoidal_positions(MAX_TEMPORAL_TOKENS, channels), persistent=False)

    def tokens(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*H*W, T, C) after norm + proj_in."""
        bt, c, h, w = x.shape
        x = self.norm(x)
        x = x.reshape(bt // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)
        return self.proj_in(x)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > MAX_TEMPORAL_TOKENS:
            raise ValueError(f"temporal sequence of {t} tokens exceeds {MAX_TEMPORAL_TOKENS}")
        tokens = tokens + self.positions[:t].to(tokens.dtype)
        tokens = tokens + self.attn(self.attn_norm(tokens))
        tokens = tokens + self.ff(self.ff_norm(tokens))
        return self.proj_out(tokens)

    @staticmethod
    def to_maps(tokens: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
        """(B*H*W, T, C) -> (B*T, C, H, W)."""
        t, c = tokens.shape[1], tokens.shape[2]
        return tokens.reshape(batch, h * w, t, c).permute(0, 2, 3, 1).reshape(batch * t, c, h, w)


class IntraClipTemporalLayer(_TemporalAttentionBlock):
    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, _, h, w = x.shape
        out = self.attend(self.tokens(x, num_frames))
        return x + self.to_maps(out, bt // num_frames, h, w)


class InterClipTemporalLayer(_TemporalAttentionBlock):
    MOTION, NOISY = 0, 1

    def __init__(self, channels: int, heads: int, norm_groups: int = 32) -> None:
        super().__init__(channels, heads, norm_groups)
        self.type_embedding = nn.Parameter(torch.zeros(2, channels))
        nn.init.normal_(self.type_embedding, std=0.02)

    def forward(self, x: torch.Tensor, num_frames: int, motion: torch.Tensor | None,
                num_motion: int) -> torch.Tensor:
        """``x``: (B*F, C, H, W) noisy-latent features; ``motion``: (B*M, C, H, W) or None."""
        bt, _, h, w = x.shape
        batch = bt // num_frames
        noisy = self.tokens(x, num_frames) + self.type_embedding[self.NOISY].to(x.dtype)
        if motion is not None and num_motion > 0:
            if motion.shape[0] != batch * num_motion or motion.shape[2:] != x.shape[2:]:
                raise ValueError(f"motion features {tuple(motion.shape)} do not match {batch}x{num_motion} "
                                 f"frames of {tuple(x.shape[1:])}")
            mot = self.tokens(motion.to(x.dtype), num_motion) + self.type_embedding[self.MOTION].to(x.dtype)
            seq = torch.cat([mot, noisy], dim=1)
        else:
            num_motion, seq = 0, noisy
        out = self.attend(seq)[:, num_motion:]
        return x + self.to_maps(out, batch, h, w)

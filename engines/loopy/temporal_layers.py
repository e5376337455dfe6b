"""Loopy's inter-clip and intra-clip temporal layers.

Both attend along time at every spatial location of a U-Net feature map.

* ``InterClipTemporalLayer``: the motion-frame features (from the reference net, same layer)
  are concatenated with the noisy-latent features along time; a learnable type embedding
  (motion frame vs. noisy latent) is added to every token, then self-attention runs over the
  joint sequence. Only the noisy-latent part is returned. A motion latent that is dropped
  (condition dropout, the no-reference guidance pass) or does not exist (before the start of
  the video) is not concatenated: an item without any motion latent attends over its own
  clip only; an item with some is attended with the missing ones' keys removed (key mask).
  The noisy tokens keep the same positions either way.
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

from avatarstream.engines.loopy.reference_net import self_attention

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

    def attend(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """Self-attention over ``tokens`` (N, T, C); ``key_mask`` (N, T) bool removes keys where False;
        ``offset``: position index of the first token."""
        t = tokens.shape[1]
        if offset + t > MAX_TEMPORAL_TOKENS:
            raise ValueError(f"temporal sequence of {offset + t} tokens exceeds {MAX_TEMPORAL_TOKENS}")
        tokens = tokens + self.positions[offset: offset + t].to(tokens.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        tokens = tokens + self_attention(self.attn, self.attn_norm(tokens), attention_mask=mask)
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
                num_motion: int, motion_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B*F, C, H, W) noisy-latent features; ``motion``: (B*M, C, H, W) or None;
        ``motion_keep``: (B, M) bool, False where a motion latent is dropped or missing (None: all kept)."""
        bt, _, h, w = x.shape
        batch = bt // num_frames
        noisy = self.tokens(x, num_frames) + self.type_embedding[self.NOISY].to(x.dtype)
        if motion is None or num_motion == 0:
            return x + self.to_maps(self.attend(noisy, offset=num_motion), batch, h, w)
        if motion.shape[0] != batch * num_motion or motion.shape[2:] != x.shape[2:]:
            raise ValueError(f"motion features {tuple(motion.shape)} do not match {batch}x{num_motion} "
                             f"frames of {tuple(x.shape[1:])}")
        keep = (torch.ones(batch, num_motion, dtype=torch.bool, device=x.device) if motion_keep is None
                else motion_keep.to(x.device, torch.bool).reshape(batch, num_motion))
        hw = h * w
        out = torch.empty_like(noisy)
        with_motion = keep.any(dim=1)
        # items without any motion latent: attention over the clip only (nothing concatenated)
        alone = (~with_motion).nonzero().flatten()
        if alone.numel():
            rows = (alone[:, None] * hw + torch.arange(hw, device=x.device)).flatten()
            out[rows] = self.attend(noisy[rows], offset=num_motion)
        items = with_motion.nonzero().flatten()
        if items.numel():
            rows = (items[:, None] * hw + torch.arange(hw, device=x.device)).flatten()
            m_items = motion.reshape(batch, num_motion, *motion.shape[1:])[items].flatten(0, 1)
            mot = self.tokens(m_items.to(x.dtype), num_motion) + self.type_embedding[self.MOTION].to(x.dtype)
            seq = torch.cat([mot, noisy[rows]], dim=1)
            k = keep[items]
            key_mask = None
            if not bool(k.all()):
                frames = torch.ones(k.shape[0], num_frames, dtype=torch.bool, device=x.device)
                key_mask = torch.cat([k, frames], dim=1).repeat_interleave(hw, dim=0)
            out[rows] = self.attend(seq, key_mask)[:, num_motion:]
        return x + self.to_maps(out, batch, h, w)

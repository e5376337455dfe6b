"""The denoising U-Net: SD's ``UNet2DConditionModel`` with Loopy's additions per spatial transformer.

For a video batch laid out as ``(B * F, C, h, w)`` every spatial transformer becomes (paper,
Sec. 3: the audio feature is attended and added to the latents after the inter-clip layer)

    spatial transformer  (self-attention with reference-net keys/values appended; SD's text
                          cross-attention is removed)
    -> inter-clip temporal layer (motion-frame features + noisy features along time)
    -> audio attention (cross-attention to the frame's audio tokens, added to the latents)
    -> intra-clip temporal layer (current clip only)

A dropped reference contributes no keys/values at all: items whose reference is dropped run
plain self-attention (no reference tokens concatenated), and their motion frames are not
concatenated in the inter-clip layer either.

The U-Net's timestep embedding receives the audio-to-latents output through diffusers'
``class_embed_type="identity"`` (``emb = emb + class_labels``).
Per-call conditions travel in ``FrameConditions``; attention processors read them from the
U-Net's shared state during one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from avatarstream.engines.loopy.reference_net import self_attention, spatial_transformers, transformer_blocks
from avatarstream.engines.loopy.temporal_layers import InterClipTemporalLayer, IntraClipTemporalLayer


@dataclass
class FrameConditions:
    num_frames: int  # F: frames per batch item
    reference_spatial: dict[str, torch.Tensor] | None  # key -> (B, L, C) reference-image self-attention inputs
    motion: dict[str, torch.Tensor] | None  # key -> (B * M, C, H, W) motion-frame features
    num_motion: int
    audio_tokens: torch.Tensor | None  # (B * F, W, cross_dim)
    audio_keep: torch.Tensor | None  # (B * F,) 1 = audio used, 0 = dropped
    temporal: bool  # run the temporal layers (stage 2 / inference)
    reference_keep: torch.Tensor | None = None  # (B,) bool, False = reference dropped (None: all kept)
    motion_keep: torch.Tensor | None = None  # (B, M) bool, False = motion latent dropped or missing


class _ConditionState:
    conditions: FrameConditions | None = None


class ReferenceAttentionProcessor:
    """Self-attention whose keys/values are the frame's own tokens plus the reference tokens.

    Items whose reference is dropped get plain self-attention: no reference keys/values."""

    def __init__(self, key: str, state: _ConditionState) -> None:
        self.key = key
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        c = self.state.conditions
        ref = c.reference_spatial.get(self.key) if c is not None and c.reference_spatial is not None else None
        if ref is None:
            return self_attention(attn, hidden_states)
        f = c.num_frames
        ref = ref.to(hidden_states.dtype).repeat_interleave(f, dim=0)
        if ref.shape[0] != hidden_states.shape[0] or ref.shape[2] != hidden_states.shape[2]:
            raise ValueError(f"reference features {tuple(ref.shape)} do not match {tuple(hidden_states.shape)} at {self.key}")
        if c.reference_keep is None or bool(c.reference_keep.all()):
            return self_attention(attn, hidden_states, torch.cat([hidden_states, ref], dim=1))
        keep = c.reference_keep.to(hidden_states.device, torch.bool).repeat_interleave(f)
        out = torch.empty_like(hidden_states)
        kept, dropped = keep.nonzero().flatten(), (~keep).nonzero().flatten()
        if kept.numel():
            h = hidden_states[kept]
            out[kept] = self_attention(attn, h, torch.cat([h, ref[kept]], dim=1)).to(out.dtype)
        out[dropped] = self_attention(attn, hidden_states[dropped]).to(out.dtype)
        return out


class AudioAttention(nn.Module):
    """Cross-attention from the latents to the frame's audio tokens, added to the latents.

    ``norm -> attention (queries: latents, keys/values: audio tokens) -> zero-init projection``;
    zero where the frame's audio is dropped or absent."""

    def __init__(self, channels: int, cross_attention_dim: int, heads: int, norm_groups: int) -> None:
        super().__init__()
        heads = max(1, min(heads, channels))
        while channels % heads:
            heads -= 1
        groups = min(norm_groups, channels)
        while channels % groups:
            groups -= 1
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.attn = Attention(query_dim=channels, cross_attention_dim=cross_attention_dim, heads=heads,
                              dim_head=channels // heads, bias=False)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``x`` (N, C, H, W), ``tokens`` (N, W, cross_dim), ``keep`` (N,) or None."""
        n, c, h, w = x.shape
        q = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
        out = self.proj_out(self_attention(self.attn, q, tokens.to(x.dtype)))
        if keep is not None:
            out = out * keep.to(out.dtype)[:, None, None]
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class LoopyTransformer(nn.Module):
    """A spatial transformer, then the inter-clip temporal layer, the audio attention and the
    intra-clip temporal layer (the paper's order)."""

    def __init__(self, spatial: nn.Module, key: str, heads: int, norm_groups: int, state: _ConditionState,
                 cross_attention_dim: int, audio_heads: int) -> None:
        super().__init__()
        channels = spatial.config.in_channels
        self.spatial = spatial
        self.inter_clip = InterClipTemporalLayer(channels, heads, norm_groups)
        self.audio_attention = AudioAttention(channels, cross_attention_dim, audio_heads, norm_groups)
        self.intra_clip = IntraClipTemporalLayer(channels, heads, norm_groups)
        self.key = key
        self._state = state

    def forward(self, hidden_states, encoder_hidden_states=None, cross_attention_kwargs=None, attention_mask=None,
                encoder_attention_mask=None, return_dict: bool = False, **kwargs):
        h = self.spatial(hidden_states, encoder_hidden_states=encoder_hidden_states,
                         cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                         encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        c = self._state.conditions
        if c is None:
            return (h,)
        if c.temporal:
            motion = c.motion.get(self.key) if c.motion is not None else None
            h = self.inter_clip(h, c.num_frames, motion, c.num_motion, c.motion_keep)
        if c.audio_tokens is not None:
            h = self.audio_attention(h, c.audio_tokens, c.audio_keep)
        if c.temporal:
            h = self.intra_clip(h, c.num_frames)
        return (h,)


def _replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


class DenoisingUNet(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, temporal_heads: int = 8) -> None:
        super().__init__()
        if unet.config.class_embed_type != "identity":
            raise ValueError("the denoising U-Net needs class_embed_type='identity' (audio-to-latents input)")
        self.unet = unet
        self._state = _ConditionState()
        self.temporal_keys: list[str] = []
        groups = unet.config.norm_num_groups
        for name, transformer in spatial_transformers(unet):
            for block_name, block in transformer_blocks(name, transformer):
                block.attn1.set_processor(ReferenceAttentionProcessor(f"{block_name}.attn1", self._state))
                block.attn2 = None  # SD's text cross-attention: Loopy has no text; audio attends later
                block.norm2 = None
            self.temporal_keys.append(name)
            heads = transformer.config.num_attention_heads
            _replace_module(unet, name, LoopyTransformer(transformer, name, temporal_heads, groups, self._state,
                                                         unet.config.cross_attention_dim, heads))

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, conditions: FrameConditions,
                class_labels: torch.Tensor) -> torch.Tensor:
        """``sample`` (B*F, 4, h, w), ``timesteps`` (B*F,), ``class_labels`` (B*F, time_embed_dim)."""
        cfg = self.unet.config
        dummy_context = torch.zeros(sample.shape[0], 1, cfg.cross_attention_dim, device=sample.device, dtype=sample.dtype)
        self._state.conditions = conditions
        try:
            return self.unet(sample, timesteps, encoder_hidden_states=dummy_context,
                             class_labels=class_labels.to(sample.dtype)).sample
        finally:
            self._state.conditions = None

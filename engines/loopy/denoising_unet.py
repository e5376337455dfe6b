"""The denoising U-Net: SD's ``UNet2DConditionModel`` with Loopy's additions per spatial transformer.

For a video batch laid out as ``(B * F, C, h, w)`` every spatial transformer becomes

    spatial transformer  (self-attention with reference-net keys/values appended,
                          cross-attention to the frame's audio tokens)
    -> inter-clip temporal layer (motion-frame features + noisy features along time)
    -> intra-clip temporal layer (current clip only)

The U-Net's timestep embedding receives the audio-to-latents output through diffusers'
``class_embed_type="identity"`` (``emb = emb + class_labels``).
Per-call conditions travel in ``FrameConditions``; attention processors read them from the
U-Net's shared state during one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
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


class _ConditionState:
    conditions: FrameConditions | None = None


class ReferenceAttentionProcessor:
    """Self-attention whose keys/values are the frame's own tokens plus the reference tokens."""

    def __init__(self, key: str, state: _ConditionState) -> None:
        self.key = key
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        c = self.state.conditions
        ref = c.reference_spatial.get(self.key) if c is not None and c.reference_spatial is not None else None
        if ref is None:
            return self_attention(attn, hidden_states)
        ref = ref.to(hidden_states.dtype).repeat_interleave(c.num_frames, dim=0)
        if ref.shape[0] != hidden_states.shape[0] or ref.shape[2] != hidden_states.shape[2]:
            raise ValueError(f"reference features {tuple(ref.shape)} do not match {tuple(hidden_states.shape)} at {self.key}")
        return self_attention(attn, hidden_states, torch.cat([hidden_states, ref], dim=1))


class AudioCrossAttentionProcessor:
    """Cross-attention to the frame's audio tokens, zero where audio is dropped or absent."""

    def __init__(self, state: _ConditionState) -> None:
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        c = self.state.conditions
        if c is None or c.audio_tokens is None:
            return torch.zeros_like(hidden_states)
        out = self_attention(attn, hidden_states, c.audio_tokens.to(hidden_states.dtype))
        if c.audio_keep is not None:
            out = out * c.audio_keep.to(out.dtype)[:, None, None]
        return out


class LoopyTransformer(nn.Module):
    """A spatial transformer followed by the inter-clip and intra-clip temporal layers."""

    def __init__(self, spatial: nn.Module, key: str, heads: int, norm_groups: int, state: _ConditionState) -> None:
        super().__init__()
        channels = spatial.config.in_channels
        self.spatial = spatial
        self.inter_clip = InterClipTemporalLayer(channels, heads, norm_groups)
        self.intra_clip = IntraClipTemporalLayer(channels, heads, norm_groups)
        self.key = key
        self._state = state

    def forward(self, hidden_states, encoder_hidden_states=None, cross_attention_kwargs=None, attention_mask=None,
                encoder_attention_mask=None, return_dict: bool = False, **kwargs):
        h = self.spatial(hidden_states, encoder_hidden_states=encoder_hidden_states,
                         cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                         encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        c = self._state.conditions
        if c is not None and c.temporal:
            motion = c.motion.get(self.key) if c.motion is not None else None
            h = self.inter_clip(h, c.num_frames, motion, c.num_motion)
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
                if block.attn2 is not None:
                    block.attn2.set_processor(AudioCrossAttentionProcessor(self._state))
            self.temporal_keys.append(name)
            _replace_module(unet, name, LoopyTransformer(transformer, name, temporal_heads, groups, self._state))

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

"""The reference net: an SD-structured U-Net run on the reference latents and the motion-frame
latents (timestep 0, no text). It records, per layer,

* the input of every spatial self-attention (``attn1``), whose keys/values the denoising
  U-Net appends to its own self-attention (reference attention), and
* the output of every spatial transformer, which the denoising U-Net's inter-clip temporal
  layers read as motion-frame features.

Records are keyed by module path inside the plain ``UNet2DConditionModel`` (identical in both
U-Nets), e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn


@dataclass
class ReferenceFeatures:
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (N, L, C)
    temporal: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (N, C, H, W)


def spatial_transformers(unet: nn.Module) -> list[tuple[str, Transformer2DModel]]:
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, Transformer2DModel)]


def transformer_blocks(name: str, transformer: nn.Module) -> list[tuple[str, BasicTransformerBlock]]:
    return [(f"{name}.{n}", m) for n, m in transformer.named_modules() if isinstance(m, BasicTransformerBlock)]


def self_attention(attn, hidden_states: torch.Tensor, context: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers ``Attention`` with keys/values from ``context`` (defaults to the queries' own tokens)."""
    context = hidden_states if context is None else context
    b = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        raise ValueError("reference attention expects attention layers without an internal residual")
    return out / attn.rescale_output_factor


class SkipCrossAttentionProcessor:
    """Cross-attention that contributes nothing (the reference net has no text/audio input)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return torch.zeros_like(hidden_states)


class RecordSelfAttentionProcessor:
    def __init__(self, key: str, sink: "ReferenceNet") -> None:
        self.key = key
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.sink.recording is not None:
            self.sink.recording.spatial[self.key] = hidden_states
        return self_attention(attn, hidden_states)


class ReferenceNet(nn.Module):
    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet
        self.recording: ReferenceFeatures | None = None
        self.spatial_keys: list[str] = []
        self.temporal_keys: list[str] = []
        for name, transformer in spatial_transformers(unet):
            self.temporal_keys.append(name)
            transformer.register_forward_hook(self._make_hook(name))
            for block_name, block in transformer_blocks(name, transformer):
                key = f"{block_name}.attn1"
                self.spatial_keys.append(key)
                block.attn1.set_processor(RecordSelfAttentionProcessor(key, self))
                if block.attn2 is not None:
                    block.attn2.set_processor(SkipCrossAttentionProcessor())

    def _make_hook(self, key: str):
        def hook(module, args, output):
            if self.recording is not None:
                self.recording.temporal[key] = output[0] if isinstance(output, tuple) else output.sample
        return hook

    def forward(self, latents: torch.Tensor) -> ReferenceFeatures:
        """``latents``: (N, 4, h, w) clean latents (reference images and motion frames)."""
        n = latents.shape[0]
        cfg = self.unet.config
        t = torch.zeros(n, device=latents.device, dtype=torch.long)
        context = torch.zeros(n, 1, cfg.cross_attention_dim, device=latents.device, dtype=latents.dtype)
        class_labels = None
        if cfg.class_embed_type == "identity":
            class_labels = torch.zeros(n, cfg.block_out_channels[0] * 4, device=latents.device, dtype=latents.dtype)
        self.recording = ReferenceFeatures()
        try:
            self.unet(latents, t, encoder_hidden_states=context, class_labels=class_labels)
            return self.recording
        finally:
            self.recording = None

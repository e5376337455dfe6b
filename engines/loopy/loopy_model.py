"""The complete Loopy network: reference net + denoising U-Net + audio projection + audio-to-latents.

Everything in this module's ``state_dict`` is what ``loopy.safetensors`` holds. The VAE and
the wav2vec2 audio encoder stay frozen and load from their own directories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from avatarstream.engines.loopy.audio_conditioning import AudioProjection
from avatarstream.engines.loopy.audio_to_latents import AudioToLatents
from avatarstream.engines.loopy.config import LoopyConfig
from avatarstream.engines.loopy.denoising_unet import DenoisingUNet, FrameConditions
from avatarstream.engines.loopy.reference_net import ReferenceNet


def build_unet(cfg: LoopyConfig) -> UNet2DConditionModel:
    kwargs = dict(cfg.unet)
    kwargs["class_embed_type"] = "identity"
    return UNet2DConditionModel(**kwargs)


@dataclass
class ReferenceConditioning:
    """Reference-net output for a batch of B items, computed once per clip."""

    spatial: dict[str, torch.Tensor]  # key -> (B, L, C)
    motion: dict[str, torch.Tensor] | None  # key -> (B * M, C, H, W)
    num_motion: int
    reference_keep: torch.Tensor | None = None  # (B,) bool: False = reference (and its motion frames) dropped
    motion_keep: torch.Tensor | None = None  # (B, M) bool: False = motion latent dropped or before the video

    @property
    def batch(self) -> int:
        return next(iter(self.spatial.values())).shape[0]

    def keep_masks(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``reference_keep`` (B,) and the effective ``motion_keep`` (B, M): a dropped reference drops
        its motion frames too (paper: the reference image together with its motion frames)."""
        device = next(iter(self.spatial.values())).device
        ref = (torch.ones(self.batch, dtype=torch.bool, device=device) if self.reference_keep is None
               else self.reference_keep.to(device, torch.bool))
        if self.motion is None or self.num_motion == 0:
            return ref, None
        mot = (torch.ones(self.batch, self.num_motion, dtype=torch.bool, device=device) if self.motion_keep is None
               else self.motion_keep.to(device, torch.bool).reshape(self.batch, self.num_motion))
        return ref, mot & ref[:, None]

    def select(self, items: list[int], reference_keep: list[bool] | None = None) -> "ReferenceConditioning":
        """A batch made of ``items`` (indices into this batch, repeats allowed), with the reference
        dropped where ``reference_keep`` is False (one item per guidance pass)."""
        idx = torch.tensor(items, device=next(iter(self.spatial.values())).device)
        spatial = {k: v.index_select(0, idx) for k, v in self.spatial.items()}
        motion = None
        m = self.num_motion
        if self.motion is not None:
            motion = {k: v.reshape(-1, m, *v.shape[1:]).index_select(0, idx).flatten(0, 1)
                      for k, v in self.motion.items()}
        ref, mot = self.keep_masks()
        ref = ref.index_select(0, idx)
        if reference_keep is not None:
            ref = ref & torch.tensor(reference_keep, dtype=torch.bool, device=ref.device)
        mot = None if mot is None else mot.index_select(0, idx)
        return ReferenceConditioning(spatial, motion, m, ref, mot)


class LoopyModel(nn.Module):
    def __init__(self, cfg: LoopyConfig, audio_feature_dim: int,
                 reference_unet: UNet2DConditionModel | None = None,
                 denoising_unet: UNet2DConditionModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_feature_dim = audio_feature_dim
        self.reference_net = ReferenceNet(reference_unet if reference_unet is not None else build_unet(cfg))
        self.denoising_unet = DenoisingUNet(denoising_unet if denoising_unet is not None else build_unet(cfg),
                                            cfg.temporal_heads)
        self.audio_projection = AudioProjection(audio_feature_dim, cfg.cross_attention_dim, cfg.audio_window)
        self.audio_to_latents = AudioToLatents(audio_feature_dim, cfg.time_embed_dim, cfg.audio_latent_embeddings,
                                               cfg.audio_latent_dim, cfg.audio_latent_heads, cfg.audio_window)

    def encode_reference(self, reference_latents: torch.Tensor, motion_latents: torch.Tensor | None = None,
                         reference_keep: torch.Tensor | None = None,
                         motion_keep: torch.Tensor | None = None) -> ReferenceConditioning:
        """``reference_latents`` (B, 4, h, w); ``motion_latents`` (B, M, 4, h, w).

        ``reference_keep`` (B,) bool: False drops the item's reference image together with its
        motion frames; ``motion_keep`` (B, M) bool: False drops a motion latent (condition dropout,
        or a frame before the start of the video). Dropped features are not concatenated
        anywhere in the denoising U-Net (their latents' content does not matter)."""
        b = reference_latents.shape[0]
        if motion_latents is None:
            feats = self.reference_net(reference_latents)
            return ReferenceConditioning(feats.spatial, None, 0, reference_keep, None)
        m = motion_latents.shape[1]
        images = torch.cat([reference_latents[:, None], motion_latents], dim=1).flatten(0, 1)
        feats = self.reference_net(images)
        spatial = {k: v.reshape(b, 1 + m, *v.shape[1:])[:, 0] for k, v in feats.spatial.items()}
        motion = {k: v.reshape(b, 1 + m, *v.shape[1:])[:, 1:].flatten(0, 1) for k, v in feats.temporal.items()}
        return ReferenceConditioning(spatial, motion, m, reference_keep, motion_keep)

    def motion_embedding(self, audio_windows: torch.Tensor | None, frames: int, source: str = "audio", variance: torch.Tensor | None = None) -> torch.Tensor | None:
        """Audio-to-latents output per frame ``(B * F, time_embed_dim)``."""
        if source == "audio":
            if audio_windows is None:
                return None
            return self.audio_to_latents(audio_windows.flatten(0, 1))
        return self.audio_to_latents(variance=variance, source=source).repeat_interleave(frames, dim=0)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference: ReferenceConditioning,
                audio_windows: torch.Tensor | None = None, audio_keep: torch.Tensor | None = None,
                temporal: bool = True, motion_source: str = "audio",
                variance: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction for ``noisy`` (B, F, 4, h, w).

        ``audio_windows`` (B, F, W, D) multi-layer wav2vec2 windows; ``audio_keep`` (B,) masks audio
        (and the audio-to-latents output) per item; ``temporal=False`` is the image-level stage 1.
        """
        b, f = noisy.shape[:2]
        dtype = noisy.dtype
        keep = None
        tokens = None
        if audio_keep is not None:
            keep = audio_keep.to(noisy.device, dtype).repeat_interleave(f)
        if audio_windows is not None:
            tokens = self.audio_projection(audio_windows.flatten(0, 1).to(dtype))
        emb = self.motion_embedding(None if audio_windows is None else audio_windows.to(dtype), f,
                                    motion_source, variance)
        if emb is None:
            emb = torch.zeros(b * f, self.cfg.time_embed_dim, device=noisy.device, dtype=dtype)
        elif keep is not None:
            emb = emb * keep[:, None]
        ref_keep, motion_keep = reference.keep_masks()
        conditions = FrameConditions(
            num_frames=f, reference_spatial=reference.spatial, motion=reference.motion if temporal else None,
            num_motion=reference.num_motion, audio_tokens=tokens, audio_keep=keep, temporal=temporal,
            reference_keep=ref_keep, motion_keep=motion_keep,
        )
        eps = self.denoising_unet(noisy.flatten(0, 1), timesteps.repeat_interleave(f), conditions, emb)
        return eps.reshape(b, f, *eps.shape[1:])

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference_latents: torch.Tensor,
                motion_latents: torch.Tensor | None = None, reference_keep: torch.Tensor | None = None,
                motion_keep: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        reference = self.encode_reference(reference_latents, motion_latents, reference_keep, motion_keep)
        return self.denoise(noisy, timesteps, reference, **kwargs)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names per training stage (paper: stage 1 image-level, stage 2 temporal + audio)."""
        stage1, stage2 = [], []
        for name, _ in self.named_parameters():
            temporal = ".inter_clip." in name or ".intra_clip." in name
            audio = name.startswith(("audio_projection.", "audio_to_latents.")) or ".audio_attention." in name
            (stage2 if temporal or audio else stage1).append(name)
        return {"1": stage1, "2": stage2}

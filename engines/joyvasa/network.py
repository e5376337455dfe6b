"""``DitTalkingHead``: JoyVASA's motion generator network (ARCHITECTURE.md 2.2).

The module tree reproduces the official state_dict key for key and shape for shape
(``/work/shared/reference/checkpoints/joyvasa_motion_generator.json``)::

    audio_encoder.*            HubertModel / Wav2Vec2Model (transformers)
    audio_feature_map          Linear(768 -> feature_dim)
    start_motion_feat          (1, n_prev_motions, motion_feat_dim)   learned context of window 0
    start_audio_feat           (1, n_prev_motions, feature_dim)
    null_audio_feat            (1, 1, feature_dim)                     unconditional audio for CFG
    denoising_net.*            DenoisingNetwork (below)
    diffusion_sched.*          betas, alphas, alpha_bars, sigmas_flex, sigmas_inflex (T + 1,)

``DenoisingNetwork`` (d = feature_dim): step embedding diff_step_map(TE.pe[t]); tokens
feature_proj(cat[prev_motion, x_t]) + positional encoding + step embedding; an 8-layer post-norm
``nn.TransformerDecoder`` whose cross-attention is masked to the aligned audio frame
(``alignment_mask``); ``motion_dec`` back to motion_feat_dim. It predicts x0.

Positional encoding, two variants (``pe_mode``):

* ``"constant"`` (default): the released code's ``pe[:, seq_len]`` adds one vector to every token.
  The weights were most likely trained so; for the shorter windows of truncated streaming the
  training vector ``pe[:, n_prev + n_motions]`` is kept.
* ``"per_position"``: JoyVASA HEAD's fix, ``pe[:, :seq_len]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from avatarstream.engines.runtimes.device_work import upload
from avatarstream.engines.joyvasa.audio_encoder import build_audio_encoder, encode_audio
from avatarstream.engines.joyvasa.options import PE_MODES
from avatarstream.engines.joyvasa.schedule import VarianceSchedule, cosine_schedule


@dataclass(frozen=True)
class DitConfig:
    """Hyperparameters: the first six come from the checkpoint's ``args``, the rest are constructor defaults."""

    motion_feat_dim: int = 70
    n_motions: int = 100
    n_prev_motions: int = 25
    feature_dim: int = 256
    audio_model: str = "hubert_zh"
    n_diff_steps: int = 50
    n_heads: int = 8
    n_layers: int = 8
    mlp_ratio: int = 4
    align_mask_width: int = 1
    te_max_len: int = 501
    pe_max_len: int = 600
    pe_mode: str = "constant"

    def __post_init__(self) -> None:
        if self.pe_mode not in PE_MODES:
            raise ValueError(f"pe_mode must be one of {PE_MODES}, got {self.pe_mode!r}")

    @property
    def window_len(self) -> int:
        return self.n_prev_motions + self.n_motions

    def with_(self, **changes) -> "DitConfig":
        return replace(self, **changes)


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim): pe[p, 2i] = sin(p 10000^(-2i/d)), pe[p, 2i+1] = cos(...)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe.unsqueeze(0)


class SinusoidalEncoding(nn.Module):
    """Holds the fixed table as buffer ``pe`` (state_dict key ``<name>.pe``)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, dim))


def alignment_mask(length: int, width: int = 1) -> torch.Tensor:
    """(L, L) bool, True = blocked: query frame i attends only to memory frames [i*w, (i+1)*w)."""
    mask = torch.ones(length, length, dtype=torch.bool)
    for i in range(length):
        mask[i, i * width:(i + 1) * width] = False
    return mask


class DenoisingNetwork(nn.Module):
    def __init__(self, cfg: DitConfig) -> None:
        super().__init__()
        d = cfg.feature_dim
        self.cfg = cfg
        self.TE = SinusoidalEncoding(d, cfg.te_max_len)
        self.diff_step_map = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.PE = SinusoidalEncoding(d, cfg.pe_max_len)
        self.feature_proj = nn.Linear(cfg.motion_feat_dim, d)
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, d * cfg.mlp_ratio, dropout=0.1, activation="gelu",
                                           batch_first=True)
        self.transformer = nn.TransformerDecoder(layer, cfg.n_layers)
        self.motion_dec = nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, cfg.motion_feat_dim))
        self.register_buffer("alignment_mask", alignment_mask(cfg.window_len, cfg.align_mask_width))

    def positional(self, length: int) -> torch.Tensor:
        if self.cfg.pe_mode == "constant":
            return self.PE.pe[:, self.cfg.window_len].unsqueeze(1)
        return self.PE.pe[:, :length]

    def cross_attention_terms(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the cross-attention output for memory (N, L, d), independent of the queries.

        With the alignment mask (width 1) query frame i sees only memory frame i, so the softmax is
        1 on that key and the attention reduces exactly to out_proj(W_v mem_i + b_v). The terms are
        constant over the diffusion steps of one window, so they are computed once per window.
        """
        d = self.cfg.feature_dim
        terms = []
        for layer in self.transformer.layers:
            attn = layer.multihead_attn
            v = F.linear(memory, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
            terms.append(attn.out_proj(v))
        return terms

    def _embed(self, motion, prev_motion, step) -> torch.Tensor:
        step_emb = self.diff_step_map(self.TE.pe[0, step]).unsqueeze(1)  # (N, 1, d)
        tokens = self.feature_proj(torch.cat([prev_motion, motion], 1))
        return tokens + self.positional(tokens.shape[1]) + step_emb

    def forward(self, motion: torch.Tensor, audio: torch.Tensor, prev_motion: torch.Tensor,
                prev_audio: torch.Tensor, step: torch.Tensor, cross: list[torch.Tensor] | None = None) -> torch.Tensor:
        """motion (N, M, 70) noisy, audio (N, M, d), prev_* (N, P, .), step (N,) int -> (N, M, 70) x0.

        ``cross``: precomputed ``cross_attention_terms`` of cat[prev_audio, audio] (optional).
        """
        if self.cfg.align_mask_width != 1:
            return self.reference_forward(motion, audio, prev_motion, prev_audio, step)
        if cross is None:
            cross = self.cross_attention_terms(torch.cat([prev_audio, audio], 1))
        x = self._embed(motion, prev_motion, step)
        for layer, c in zip(self.transformer.layers, cross):
            x = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
            x = layer.norm2(x + c)
            x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        return self.motion_dec(x)[:, -motion.shape[1]:]

    def reference_forward(self, motion: torch.Tensor, audio: torch.Tensor, prev_motion: torch.Tensor,
                          prev_audio: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The literal reference: ``nn.TransformerDecoder`` with ``alignment_mask`` as memory mask."""
        tokens = self._embed(motion, prev_motion, step)
        length = tokens.shape[1]
        memory = torch.cat([prev_audio, audio], 1)
        out = self.transformer(tokens, memory, memory_mask=self.alignment_mask[:length, :length])
        return self.motion_dec(out)[:, -motion.shape[1]:]


class DiffusionScheduleBuffers(nn.Module):
    """The schedule tensors as buffers (they are part of the official state_dict)."""

    def __init__(self, schedule: VarianceSchedule) -> None:
        super().__init__()
        for name in ("betas", "alphas", "alpha_bars", "sigmas_flex", "sigmas_inflex"):
            self.register_buffer(name, getattr(schedule, name).clone())

    def _apply(self, fn, recurse=True):
        """Device moves apply, dtype casts do not: the schedule stays float32 under ``model.half()``."""
        saved = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, original in saved.items():
            self._buffers[name] = original.to(self._buffers[name].device)
        return self

    def schedule(self) -> VarianceSchedule:
        return VarianceSchedule(self.betas.float().cpu(), self.alphas.float().cpu(), self.alpha_bars.float().cpu(),
                                self.sigmas_flex.float().cpu(), self.sigmas_inflex.float().cpu())


class DitTalkingHead(nn.Module):
    def __init__(self, cfg: DitConfig = DitConfig(), audio_config=None) -> None:
        """``audio_config``: a local encoder directory, a transformers config, or None (base-model config)."""
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_dim
        self.audio_encoder = build_audio_encoder(cfg.audio_model, audio_config)
        self.audio_feature_map = nn.Linear(self.audio_encoder.config.hidden_size, d)
        self.start_motion_feat = nn.Parameter(torch.randn(1, cfg.n_prev_motions, cfg.motion_feat_dim))
        self.start_audio_feat = nn.Parameter(torch.randn(1, cfg.n_prev_motions, d))
        self.null_audio_feat = nn.Parameter(torch.randn(1, 1, d))
        self.denoising_net = DenoisingNetwork(cfg)
        self.diffusion_sched = DiffusionScheduleBuffers(cosine_schedule(cfg.n_diff_steps))
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.audio_feature_map.weight.device

    def schedule(self) -> VarianceSchedule:
        return self.diffusion_sched.schedule()

    def audio_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, L) 16 kHz audio, L a multiple of 640 -> (B, L / 640, feature_dim)."""
        # one pinned, asynchronous upload (engines.runtimes.device_work): the host does not wait for it
        hidden = encode_audio(self.audio_encoder, upload(audio, self.device, self.audio_feature_map.weight.dtype))
        return self.audio_feature_map(hidden).float()

    def guided_denoiser(self, audio: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor):
        """The sampler callback for one window: batch [unconditional (null audio), conditional (audio)].

        audio (1, M, d); prev_motion (1, P, 70) and prev_audio (1, P, d) are real in both halves.
        """
        dtype, device = self.audio_feature_map.weight.dtype, self.device
        audio = audio.to(device, dtype)
        null = self.null_audio_feat.expand(audio.shape[0], audio.shape[1], -1)
        audio_in = torch.cat([null, audio], 0)
        prev_motion_in = torch.cat([prev_motion, prev_motion], 0).to(device, dtype)
        prev_audio_in = torch.cat([prev_audio, prev_audio], 0).to(device, dtype)
        net = self.denoising_net
        cross = net.cross_attention_terms(torch.cat([prev_audio_in, audio_in], 1)) if net.cfg.align_mask_width == 1 else None

        def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
            """Float32 in and out, whatever the network's dtype (the sampler's arithmetic stays fp32)."""
            step = torch.full((x_t.shape[0],), t, dtype=torch.long, device=device)
            return net(x_t.to(device, dtype), audio_in, prev_motion_in, prev_audio_in, step, cross).float()

        return denoise

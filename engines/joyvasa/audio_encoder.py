"""Speech features for JoyVASA: HuBERT / wav2vec2 (transformers) and the reference front end.

Front end (ARCHITECTURE.md 2.2, ``extract_audio_feature``), for L samples of 16 kHz mono audio
covering F = L / 640 video frames:

1. ``pad_audio``: side = ceil((320 * floor(L / 320) + 80 - L) / 2); two successive reflect pads of
   side // 2 per side (40 samples per side for L = 64000).
2. The encoder (conv feature extractor -> feature projection -> transformer) gives 2F frames at 50 Hz
   (truncated to 2F if it gives more; linearly resampled if the count differs).
3. Linear interpolation to F frames (``align_corners=False``), i.e. the mean of each pair of 50 Hz
   frames; the 768 -> 256 projection (``audio_feature_map``) lives in the network.

No waveform normalisation and no HF feature extractor, as in the reference.

Encoder configs: the checkpoint holds the encoder *weights*; only the architecture comes from a
config. ``audio_encoder_config`` reads ``config.json`` from a local directory when given, else it
builds the published base-model hyperparameters (identical for TencentGameMate/chinese-hubert-base,
facebook/hubert-base-ls960 and facebook/wav2vec2-base-960h): 7 conv layers of 512 channels (kernels
10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2; no bias; GroupNorm after the first), feature projection
LayerNorm(512) + Linear(512 -> 768), positional conv 128 taps / 16 groups with weight norm, 12
post-norm transformer layers (hidden 768, 12 heads, FFN 3072, GELU, LayerNorm eps 1e-5).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avatarstream.engines.base import EngineError, SAMPLES_PER_FRAME

# JoyVASA ``audio_model`` argument -> encoder family
AUDIO_MODELS: dict[str, str] = {
    "hubert_zh": "hubert",  # TencentGameMate/chinese-hubert-base (the released generator)
    "hubert_zh_ori": "hubert",
    "hubert": "hubert",  # facebook/hubert-base-ls960
    "wav2vec2": "wav2vec2",  # facebook/wav2vec2-base-960h
}
HIDDEN_SIZE = 768
CONV_STRIDE = 320  # samples per 50 Hz encoder frame


def _base_kwargs() -> dict:
    return dict(
        hidden_size=HIDDEN_SIZE, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="group", feat_extract_activation="gelu",
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, do_stable_layer_norm=False,
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.0,
        mask_time_prob=0.05,  # keeps ``masked_spec_embed`` in the module tree, as in the checkpoint
    )


def encoder_family(audio_model: str) -> str:
    if audio_model not in AUDIO_MODELS:
        raise EngineError(f"unknown JoyVASA audio_model {audio_model!r}; known: {', '.join(AUDIO_MODELS)}")
    return AUDIO_MODELS[audio_model]


def audio_encoder_config(audio_model: str, config_dir: str | Path | None = None):
    """A ``HubertConfig`` / ``Wav2Vec2Config`` from ``config_dir/config.json``, or the base-model one (no network)."""
    from transformers import HubertConfig, Wav2Vec2Config

    cls = HubertConfig if encoder_family(audio_model) == "hubert" else Wav2Vec2Config
    if config_dir is not None:
        path = Path(config_dir)
        if not (path / "config.json").is_file():
            raise EngineError(f"audio encoder directory {path} has no config.json")
        return cls.from_pretrained(str(path), local_files_only=True)
    kwargs = _base_kwargs()
    if cls is HubertConfig:
        kwargs["feat_proj_layer_norm"] = True
    else:
        kwargs["vocab_size"] = 32
    return cls(**kwargs)


def build_audio_encoder(audio_model: str, config=None) -> nn.Module:
    """A randomly initialised ``HubertModel`` / ``Wav2Vec2Model``; weights come from the JoyVASA checkpoint.

    ``config``: a local model directory (its config.json), a transformers config object, or None.
    """
    from transformers import HubertModel, PretrainedConfig, Wav2Vec2Model

    if not isinstance(config, PretrainedConfig):
        config = audio_encoder_config(audio_model, config)
    cls = HubertModel if encoder_family(audio_model) == "hubert" else Wav2Vec2Model
    return cls(config).eval()


def pad_audio(audio: torch.Tensor) -> torch.Tensor:
    """The reference reflect padding of (B, L) audio so that the encoder yields exactly 2F frames."""
    length = audio.shape[-1]
    side = math.ceil((CONV_STRIDE * (length // CONV_STRIDE) + 80 - length) / 2)
    reflect = side // 2
    if reflect <= 0:
        return audio
    x = audio.unsqueeze(1)
    for _ in range(2):
        x = F.pad(x, (reflect, reflect), mode="reflect")
    return x.squeeze(1)


def encode_audio(encoder: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    """(B, L) 16 kHz audio, L a multiple of 640 -> (B, L / 640, 768) 25 fps encoder features."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
    length = audio.shape[-1]
    if length == 0 or length % SAMPLES_PER_FRAME:
        raise ValueError(f"audio length must be a positive multiple of {SAMPLES_PER_FRAME} samples, got {length}")
    frames = length // SAMPLES_PER_FRAME
    hidden = encoder(pad_audio(audio)).last_hidden_state  # (B, ~2F, 768)
    if hidden.shape[1] > 2 * frames:
        hidden = hidden[:, : 2 * frames]
    hidden = hidden.transpose(1, 2)
    if hidden.shape[2] != 2 * frames:
        hidden = F.interpolate(hidden, size=2 * frames, mode="linear", align_corners=False)
    return F.interpolate(hidden, size=frames, mode="linear", align_corners=False).transpose(1, 2)

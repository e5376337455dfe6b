"""Strict weight loading with errors that name what is missing or unexpected."""

import json

import pytest
import torch

from avatarstream.engines.base import MissingWeightsError
from avatarstream.engines.loopy.checkpoint import (
    WEIGHTS_FILE, load_loopy_weights, load_weights_dir, random_weights, save_loopy_weights, save_weights_dir,
)
from avatarstream.engines.loopy.config import tiny_config
from avatarstream.engines.loopy.train import TrainOptions, build_weights


def test_round_trip_is_exact(tiny_weights, tmp_path):
    d = save_weights_dir(tmp_path / "w", tiny_weights)
    loaded = load_weights_dir(d)
    assert loaded.config == tiny_weights.config
    a, b = tiny_weights.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_unexpected_and_mismatched_keys_fail_clearly(tiny_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_loopy_weights(tiny_weights.model, tmp_path / WEIGHTS_FILE)
    state = load_file(str(path))
    key = "denoising_unet.unet.down_blocks.0.attentions.0.inter_clip.type_embedding"
    assert key in state
    fresh = random_weights(tiny_config(), seed=1).model

    missing = dict(state)
    del missing[key]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(MissingWeightsError, match=r"1 missing tensors: .*inter_clip\.type_embedding"):
        load_loopy_weights(fresh, tmp_path / "missing.safetensors")

    extra = dict(state, **{"audio_to_latents.bogus": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(MissingWeightsError, match=r"unexpected tensors: audio_to_latents\.bogus"):
        load_loopy_weights(fresh, tmp_path / "extra.safetensors")

    bad = dict(state, **{key: torch.zeros(3, 32)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MissingWeightsError, match=r"shape mismatches: .*type_embedding \(3, 32\) != \(2, 32\)"):
        load_loopy_weights(fresh, tmp_path / "bad.safetensors")

    with pytest.raises(MissingWeightsError, match="not found"):
        load_loopy_weights(fresh, tmp_path / "nope.safetensors")


def test_incomplete_weights_dir_names_the_missing_files(tiny_weights, tmp_path):
    d = save_weights_dir(tmp_path / "w", tiny_weights)
    (d / WEIGHTS_FILE).unlink()
    for f in (d / "vae").iterdir():
        if f.name != "config.json":
            f.unlink()
    with pytest.raises(MissingWeightsError) as err:
        load_weights_dir(d)
    assert WEIGHTS_FILE in str(err.value) and "VAE weights" in str(err.value)
    with pytest.raises(MissingWeightsError, match="not found"):
        load_weights_dir(tmp_path / "absent")


def test_init_from_a_diffusers_base_directory(tmp_path, clip_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = tiny_config()
    torch.manual_seed(3)
    base = tmp_path / "sd"
    UNet2DConditionModel(**cfg.unet).save_pretrained(str(base / "unet"))
    AutoencoderKL(**cfg.vae).save_pretrained(str(base / "vae"))
    Wav2Vec2Model(Wav2Vec2Config(**cfg.wav2vec2)).save_pretrained(str(tmp_path / "w2v"))
    weights = build_weights(TrainOptions(data=clip_dir, out=tmp_path / "o", config="tiny", base=base,
                                         wav2vec2=tmp_path / "w2v"))
    sd = UNet2DConditionModel.from_pretrained(str(base / "unet")).state_dict()
    ref = weights.model.reference_net.unet.state_dict()
    den = weights.model.denoising_unet.unet.state_dict()
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(ref[k], sd[k])
    assert torch.equal(den["down_blocks.0.attentions.0.spatial.transformer_blocks.0.attn1.to_q.weight"], sd[k])
    assert torch.equal(den["conv_in.weight"], sd["conv_in.weight"])
    # no text cross-attention in the denoising U-Net; the audio attention (after the inter-clip
    # layer) starts as a no-op
    assert not any(".transformer_blocks.0.attn2." in k for k in den)
    assert not den["down_blocks.0.attentions.0.audio_attention.proj_out.weight"].any()
    (base / "unet" / "config.json").unlink()
    with pytest.raises(MissingWeightsError, match=r"unet/config\.json"):
        build_weights(TrainOptions(data=clip_dir, out=tmp_path / "o", config="tiny", base=base))
    assert json.loads((tmp_path / "w2v" / "config.json").read_text())["hidden_size"] == 32

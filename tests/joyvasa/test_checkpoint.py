"""Official checkpoint format: strict loading, the real key/shape layout, clear errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from avatarstream.engines.base import EngineError, MissingWeightsError
from avatarstream.engines.joyvasa.checkpoint import (SMALL_CONFIG, load_motion_generator, load_state_dict_strict,
                                        small_audio_config, small_motion_generator, write_random_checkpoint)
from avatarstream.engines.joyvasa.network import DitTalkingHead

MANIFEST = json.loads((Path(__file__).parent / "joyvasa_motion_generator_keys.json").read_text())


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("jv") / "motion_generator_hubert_chinese.pt", seed=7)


def test_random_checkpoint_has_official_layout_and_loads_strictly(real_checkpoint):
    with torch.serialization.safe_globals([argparse.Namespace, type(Path())]):
        raw = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) == {"args", "model", "iter"} and isinstance(raw["args"], argparse.Namespace)
    sd = raw["model"]
    assert {k: list(v.shape) for k, v in sd.items()} == MANIFEST["keys"]
    assert sd["denoising_net.alignment_mask"].dtype == torch.bool
    assert sum(v.numel() for k, v in sd.items() if not k.startswith(("denoising_net.TE", "denoising_net.PE",
                                                                           "denoising_net.alignment", "diffusion_sched"))) \
        == 103_196_188

    model, info = load_motion_generator(real_checkpoint)
    assert info.iteration == 20000 and info.config.n_diff_steps == len(sd["diffusion_sched.betas"]) - 1 == 50
    assert info.config.n_layers == 8 and info.config.feature_dim == 256
    loaded = model.state_dict()
    for key in ("start_motion_feat", "null_audio_feat", "audio_feature_map.weight",
                "audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original1",
                "denoising_net.transformer.layers.7.linear2.weight", "diffusion_sched.sigmas_inflex"):
        assert torch.equal(loaded[key], sd[key]), key
    assert not model.training


def _small_ckpt(tmp_path: Path, mutate=None) -> Path:
    model = small_motion_generator(seed=1)
    sd = dict(model.state_dict())
    if mutate:
        mutate(sd)
    args = argparse.Namespace(**{k: getattr(SMALL_CONFIG, k) for k in
                                 ("motion_feat_dim", "n_motions", "n_prev_motions", "feature_dim", "audio_model",
                                  "n_diff_steps")})
    path = tmp_path / "ckpt.pt"
    torch.save({"args": args, "model": sd, "iter": 3}, path)
    return path


def _load_small(path: Path):
    from avatarstream.engines.joyvasa.checkpoint import config_from_checkpoint, read_checkpoint_file

    ckpt = read_checkpoint_file(path)
    model = DitTalkingHead(config_from_checkpoint(ckpt), small_audio_config())
    load_state_dict_strict(model, ckpt["model"], str(path))
    return model


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    def mutate(sd):
        del sd["null_audio_feat"]
        sd["denoising_net.extra.weight"] = torch.zeros(3)
        sd["start_motion_feat"] = torch.zeros(1, 24, 70)
    with pytest.raises(EngineError) as err:
        _load_small(_small_ckpt(tmp_path, mutate))
    msg = str(err.value)
    assert "missing keys: null_audio_feat" in msg
    assert "unexpected keys: denoising_net.extra.weight" in msg
    assert "start_motion_feat: file (1, 24, 70) vs model (1, 25, 70)" in msg


def test_legacy_weight_norm_names_and_dropped_time_table_load(tmp_path):
    original = small_motion_generator(seed=1).state_dict()

    def mutate(sd):
        p = "audio_encoder.encoder.pos_conv_embed.conv."
        sd[p + "weight_g"] = sd.pop(p + "parametrizations.weight.original0")
        sd[p + "weight_v"] = sd.pop(p + "parametrizations.weight.original1")
        sd["denoising_net.TE.pe"] = torch.full_like(sd["denoising_net.TE.pe"], 9.0)  # ignored like the official loader
    model = _load_small(_small_ckpt(tmp_path, mutate))
    loaded = model.state_dict()
    for k, v in original.items():
        assert torch.equal(loaded[k], v), k


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="motion generator not found"):
        load_motion_generator(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="cannot read"):
        load_motion_generator(junk)
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(EngineError, match="expected a dict with 'args' and 'model'"):
        load_motion_generator(bare)


def test_step_count_must_agree_with_schedule(tmp_path):
    def mutate(sd):
        sd["diffusion_sched.betas"] = torch.zeros(11)
    with pytest.raises(EngineError, match="n_diff_steps=4 but diffusion_sched.betas has 11 entries"):
        _load_small(_small_ckpt(tmp_path, mutate))


def test_wav2vec2_generator_has_the_same_layout_and_loads(tmp_path):
    import pathlib

    from avatarstream.engines.joyvasa.checkpoint import config_from_checkpoint, read_checkpoint_file

    cfg = SMALL_CONFIG.with_(audio_model="wav2vec2")
    model = small_motion_generator(seed=2, config=cfg)
    assert type(model.audio_encoder).__name__ == "Wav2Vec2Model"
    assert set(model.state_dict()) == set(small_motion_generator(seed=2).state_dict())
    args = argparse.Namespace(motion_feat_dim=70, n_motions=100, n_prev_motions=25, feature_dim=64,
                              audio_model="wav2vec2", n_diff_steps=4, save_dir=pathlib.Path("x"))
    torch.save({"args": args, "model": model.state_dict(), "iter": 1}, tmp_path / "w2v.pt")
    ckpt = read_checkpoint_file(tmp_path / "w2v.pt")
    loaded = DitTalkingHead(config_from_checkpoint(ckpt), small_audio_config("wav2vec2"))
    load_state_dict_strict(loaded, ckpt["model"])
    assert torch.equal(loaded.audio_feature_map.weight, model.audio_feature_map.weight)

"""A random VAE (the tiny config, training from scratch) is calibrated like a trained one: its
posterior is narrow (``sample()``-encoded targets are the frame's latents, not noise), and the
trainer sets the latent scaling factor to 1 / std of the training latents (SD's 0.18215 belongs
to SD's trained VAE and leaves a random VAE's latents at std ~0.06); the factor is saved with
the checkpoint and used by inference; a VAE with a published factor keeps it."""

import json

import numpy as np
import pytest
import torch

from avatarstream.engines.loopy.checkpoint import load_weights_dir, random_weights, save_weights_dir
from avatarstream.engines.loopy.config import tiny_config
from avatarstream.engines.loopy.dataset import LoopyVideoDataset
from avatarstream.engines.loopy.pipeline import LoopyPipeline
from avatarstream.engines.loopy.train import LoopyTrainer, TrainOptions, build_weights, train
from avatarstream.engines.loopy.vae_calibration import encode_means, narrow_posterior

SD_FACTOR = 0.18215


def _frames(clip_dir, resolution):
    return LoopyVideoDataset(clip_dir, resolution)[0].frames


def _all_latents(trainer, dataset):
    """Every training frame encoded as the trainer encodes targets (``sample()``, scaled)."""
    torch.manual_seed(0)
    return torch.cat([trainer._encode(dataset[i].frames) for i in range(len(dataset))])


@torch.no_grad()
def test_random_vae_posterior_is_narrow(clip_dir):
    weights = random_weights(tiny_config(), seed=0)
    frames = _frames(clip_dir, weights.config.resolution)
    x = torch.from_numpy(frames[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    dist = weights.vae.encode(x).latent_dist
    spread = float(dist.mean.std())
    assert float(dist.std.max()) < 1e-3 * spread, (float(dist.std.max()), spread)
    torch.manual_seed(0)
    assert torch.allclose(dist.sample(), dist.mode(), atol=1e-4 * spread)
    # without the calibration the random posterior is wide (std ~1, about 3 x the means' spread)
    wide = random_weights(tiny_config(), seed=0, narrow_vae=False)
    before = narrow_posterior(wide.vae)
    assert before > 0.5 and before > 2 * spread, (before, spread)
    # narrowing touches only the log-variance: the means are the same
    assert torch.allclose(encode_means(wide.vae, frames[:16]), dist.mode(), atol=1e-6)


def test_trainer_scales_a_random_vaes_latents_to_unit_std(clip_dir):
    weights = random_weights(tiny_config(), seed=0)
    assert not weights.scaling_factor_known and weights.scaling_factor == SD_FACTOR
    dataset = LoopyVideoDataset(clip_dir, weights.config.resolution)
    trainer = LoopyTrainer(weights, dataset, 1, seed=0)
    factor = weights.scaling_factor
    assert weights.scaling_factor_known and factor != SD_FACTOR
    assert f"{factor:.6g}" in trainer.scaling_note and "no published factor" in trainer.scaling_note
    std = float(_all_latents(trainer, dataset).std())
    assert 0.85 < std < 1.15, (factor, std)
    # a second trainer (stage 2 on the same weights) keeps the computed factor
    assert LoopyTrainer(weights, dataset, 2, seed=5).vae.config.scaling_factor == factor


def test_computed_factor_round_trips_through_save_and_load(clip_dir, tmp_path):
    weights = random_weights(tiny_config(), seed=0)
    dataset = LoopyVideoDataset(clip_dir, weights.config.resolution)
    # a directory that already holds this VAE with SD's factor (saved before calibration) gets the new one
    save_weights_dir(tmp_path / "w", weights)
    factor = LoopyTrainer(weights, dataset, 1, seed=0).vae.config.scaling_factor
    save_weights_dir(tmp_path / "w", weights)
    assert json.loads((tmp_path / "w" / "vae" / "config.json").read_text())["scaling_factor"] == factor
    loaded = load_weights_dir(tmp_path / "w")
    assert loaded.scaling_factor_known and loaded.scaling_factor == factor
    # the narrow posterior is part of the saved VAE
    q, q2 = weights.vae.quant_conv, loaded.vae.quant_conv
    assert torch.equal(q.weight, q2.weight) and torch.equal(q.bias, q2.bias)
    # inference scales by the same factor, and training from the checkpoint keeps it
    frame = dataset[0].frames[0]
    pipe = LoopyPipeline(loaded, "cpu")
    assert torch.allclose(pipe.encode_images(frame[None]).cpu(), encode_means(weights.vae, frame[None]) * factor, atol=1e-5)
    trainer = LoopyTrainer(loaded, dataset, 2, seed=0)
    assert trainer.vae.config.scaling_factor == factor and "VAE's own" in trainer.scaling_note


def test_train_command_computes_and_saves_the_factor(clip_dir, tmp_path, capsys):
    out = tmp_path / "w"
    train(TrainOptions(data=clip_dir, out=out, config="tiny", steps=1, save_every=0), progress=False)
    printed = [line for line in capsys.readouterr().out.splitlines() if "latent scaling factor" in line]
    assert len(printed) == 1 and "no published factor" in printed[0], printed
    loaded = load_weights_dir(out)
    assert loaded.scaling_factor != SD_FACTOR
    dataset = LoopyVideoDataset(clip_dir, loaded.config.resolution)
    trainer = LoopyTrainer(loaded, dataset, 1, seed=0)
    assert 0.85 < float(_all_latents(trainer, dataset).std()) < 1.15


def test_a_published_factor_is_kept(clip_dir, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = tiny_config()
    torch.manual_seed(3)
    base = tmp_path / "sd"  # an SD-style base directory: its VAE publishes 0.18215
    UNet2DConditionModel(**cfg.unet).save_pretrained(str(base / "unet"))
    AutoencoderKL(**cfg.vae).save_pretrained(str(base / "vae"))
    weights = build_weights(TrainOptions(data=clip_dir, out=tmp_path / "o", config="tiny", base=base))
    assert weights.scaling_factor_known
    dataset = LoopyVideoDataset(clip_dir, cfg.resolution)
    trainer = LoopyTrainer(weights, dataset, 1, seed=0)
    assert trainer.vae.config.scaling_factor == SD_FACTOR and "VAE's own" in trainer.scaling_note


def test_a_checkpoint_saved_with_sds_factor_loads_with_it(tiny_weights_dir, clip_dir):
    # checkpoints written before the trainer computed factors store 0.18215 in vae/config.json
    assert json.loads((tiny_weights_dir / "vae" / "config.json").read_text())["scaling_factor"] == SD_FACTOR
    loaded = load_weights_dir(tiny_weights_dir)
    assert loaded.scaling_factor_known and loaded.scaling_factor == SD_FACTOR
    dataset = LoopyVideoDataset(clip_dir, loaded.config.resolution)
    assert LoopyTrainer(loaded, dataset, 1, seed=0).vae.config.scaling_factor == SD_FACTOR


@pytest.mark.parametrize("frames", [[], [np.zeros((0, 64, 64, 3), np.uint8)]])
def test_latent_std_needs_frames(frames):
    weights = random_weights(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="at least one frame"):
        weights.calibrate_scaling_factor(frames)

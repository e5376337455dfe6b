"""Loading and saving Loopy weights.

* Base Stable Diffusion 1.5 weights come from a local diffusers-format directory
  (``unet/`` and ``vae/`` sub-folders, as ``save_pretrained`` writes them); both Loopy U-Nets
  start from the base U-Net.
* A Loopy weights directory (what ``avatar train loopy`` writes and ``--weights`` reads)::

      DIR/loopy.json            LoopyConfig (architecture)
      DIR/loopy.safetensors     every LoopyModel parameter (reference net, denoising U-Net with
                                temporal layers, audio projection, audio-to-latents)
      DIR/vae/                  diffusers AutoencoderKL (config.json + weights)
      DIR/wav2vec2/             transformers Wav2Vec2Model (config.json + weights)

Loading is strict: missing, unexpected or mis-shaped tensors raise ``MissingWeightsError``
naming them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from avatarstream.engines.base import EngineError, MissingWeightsError
from avatarstream.engines.loopy.config import LoopyConfig
from avatarstream.engines.loopy.vae_calibration import latent_std, narrow_posterior

CONFIG_FILE = "loopy.json"
WEIGHTS_FILE = "loopy.safetensors"
VAE_DIR = "vae"
WAV2VEC2_DIR = "wav2vec2"
_MODEL_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                       "model.safetensors", "pytorch_model.bin")
_LIST_LIMIT = 8


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f" ... (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that names what is wrong."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_names(unexpected)}")
    if mismatched:
        problems.append("shape mismatches: " + _names(
            [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in mismatched]))
    if problems:
        raise MissingWeightsError(f"{source} does not match the Loopy model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def save_loopy_weights(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    tmp.replace(path)
    return path


def load_loopy_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"Loopy weights not found: {path} (train them with: avatar train loopy --data DIR)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise MissingWeightsError(f"cannot read Loopy weights {path}: {exc}") from exc
    load_state_strict(model, state, str(path))


def _check_model_dir(path: Path, what: str) -> list[str]:
    missing = []
    if not (path / "config.json").is_file():
        missing.append(str(path / "config.json"))
    if not any((path / n).is_file() for n in _MODEL_WEIGHT_NAMES):
        missing.append(f"{path}/{{{','.join(_MODEL_WEIGHT_NAMES)}}} ({what} weights)")
    return missing


def base_unet_config(base_dir: Path) -> dict:
    base_dir = Path(base_dir)
    missing = _check_model_dir(base_dir / "unet", "U-Net")
    if missing:
        raise MissingWeightsError(f"base Stable Diffusion directory {base_dir} is incomplete; missing: {', '.join(missing)}"
                                  " (expected a diffusers-format SD-1.5 folder with unet/ and vae/)")
    cfg = json.loads((base_dir / "unet" / "config.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def config_for_base(cfg: LoopyConfig, base_dir: Path) -> LoopyConfig:
    """``cfg`` with the U-Net architecture of the base model in ``base_dir``."""
    unet = base_unet_config(base_dir)
    unet.pop("class_embed_type", None)
    return replace(cfg, unet=unet, resolution=int(unet.get("sample_size", cfg.latent_size)) * 8)


def load_base_unet_state(base_dir: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    base_unet_config(base_dir)
    return UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet").state_dict()


def load_vae(path: Path, cfg: LoopyConfig | None = None):
    from diffusers import AutoencoderKL

    path = Path(path)
    missing = _check_model_dir(path, "VAE")
    if missing:
        raise MissingWeightsError(f"VAE not found; missing: {', '.join(missing)}")
    return AutoencoderKL.from_pretrained(str(path))


def load_wav2vec2(path: Path):
    from transformers import Wav2Vec2Model

    path = Path(path)
    missing = _check_model_dir(path, "wav2vec2")
    if missing:
        raise MissingWeightsError(f"wav2vec2 audio encoder not found; missing: {', '.join(missing)} "
                                  "(save one with Wav2Vec2Model.save_pretrained, e.g. facebook/wav2vec2-base-960h)")
    return Wav2Vec2Model.from_pretrained(str(path))


@dataclass
class LoopyWeights:
    """A Loopy model with its VAE and audio encoder.

    ``scaling_factor_known`` is False for a random VAE (``random_weights``): its config carries
    SD's 0.18215, which belongs to SD's trained VAE; the trainer replaces it by 1 / std of the
    training set's latents (``calibrate_scaling_factor``) before training. A loaded VAE (SD's,
    or a Loopy weights directory's ``vae/``, which stores the calibrated factor in its
    ``config.json``) keeps its own factor."""

    config: LoopyConfig
    model: nn.Module  # LoopyModel
    vae: nn.Module  # AutoencoderKL
    wav2vec2: nn.Module  # Wav2Vec2Model
    scaling_factor_known: bool = True

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def calibrate_scaling_factor(self, frames: Iterable[np.ndarray]) -> float:
        """Set the VAE's latent scaling factor to 1 / std of the latent means of ``frames``
        (batches of uint8 RGB frames), the latent-diffusion recipe; returns it."""
        factor = 1.0 / latent_std(self.vae, frames)
        self.vae.register_to_config(scaling_factor=factor)
        self.scaling_factor_known = True
        return factor


def check_weights_dir(weights_dir: Path) -> None:
    d = Path(weights_dir)
    if not d.is_dir():
        raise MissingWeightsError(f"Loopy weights directory not found: {d}")
    missing = [str(d / n) for n in (CONFIG_FILE, WEIGHTS_FILE) if not (d / n).is_file()]
    missing += _check_model_dir(d / VAE_DIR, "VAE") + _check_model_dir(d / WAV2VEC2_DIR, "wav2vec2")
    if missing:
        raise MissingWeightsError(
            f"Loopy weights directory {d} is incomplete; missing: {', '.join(missing)}. "
            f"Expected {CONFIG_FILE}, {WEIGHTS_FILE}, {VAE_DIR}/ and {WAV2VEC2_DIR}/ "
            "(written by: avatar train loopy --data DIR --out WEIGHTS)")


def load_weights_dir(weights_dir: Path) -> LoopyWeights:
    from avatarstream.engines.loopy.audio_conditioning import audio_feature_dim
    from avatarstream.engines.loopy.loopy_model import LoopyModel

    d = Path(weights_dir)
    check_weights_dir(d)
    cfg = LoopyConfig.load(d / CONFIG_FILE)
    wav2vec2 = load_wav2vec2(d / WAV2VEC2_DIR)
    vae = load_vae(d / VAE_DIR)
    model = LoopyModel(cfg, audio_feature_dim(wav2vec2.config))
    load_loopy_weights(model, d / WEIGHTS_FILE)
    return LoopyWeights(cfg, model, vae, wav2vec2)


def _saved_scaling_factor(vae_dir: Path) -> float | None:
    try:
        value = json.loads((vae_dir / "config.json").read_text()).get("scaling_factor")
    except (OSError, json.JSONDecodeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def save_weights_dir(out_dir: Path, weights: LoopyWeights) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    weights.config.save(d / CONFIG_FILE)
    save_loopy_weights(weights.model, d / WEIGHTS_FILE)
    if not (d / VAE_DIR / "config.json").is_file() or _saved_scaling_factor(d / VAE_DIR) != weights.scaling_factor:
        weights.vae.save_pretrained(str(d / VAE_DIR))
    if not (d / WAV2VEC2_DIR / "config.json").is_file():
        weights.wav2vec2.save_pretrained(str(d / WAV2VEC2_DIR))
    return d


def random_weights(cfg: LoopyConfig, seed: int = 0, narrow_vae: bool = True) -> LoopyWeights:
    """A model of ``cfg``'s shapes with random weights (benchmarks, smoke tests, training from scratch).

    The random VAE gets a trained VAE's narrow posterior (``narrow_vae``; see ``vae_calibration``)
    and is marked as having no published scaling factor (the trainer computes one)."""
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from avatarstream.engines.loopy.audio_conditioning import audio_feature_dim
    from avatarstream.engines.loopy.loopy_model import LoopyModel

    if not cfg.vae or cfg.wav2vec2 is None:
        raise EngineError("config has no VAE/wav2vec2 architecture for random weights")
    torch.manual_seed(seed)
    wav2vec2 = Wav2Vec2Model(Wav2Vec2Config(**cfg.wav2vec2))
    vae = AutoencoderKL(**cfg.vae)
    model = LoopyModel(cfg, audio_feature_dim(wav2vec2.config))
    if narrow_vae:
        narrow_posterior(vae)
    return LoopyWeights(cfg, model, vae, wav2vec2, scaling_factor_known=False)

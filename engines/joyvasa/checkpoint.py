"""The official JoyVASA motion-generator file: ``torch.save({'args': Namespace, 'model': state_dict, 'iter': int})``.

``load_motion_generator`` reads it without executing arbitrary pickles (``weights_only=True`` with
an allow-list for ``argparse.Namespace`` and ``pathlib`` paths), builds ``DitTalkingHead`` from
``ckpt['args']`` and the state_dict shapes, and loads **strictly**: any missing, unexpected or
mis-shaped key is an ``EngineError`` naming the keys. Two tolerated differences, both from the
reference loader: ``denoising_net.TE.pe`` is dropped and recomputed (the official loader pops it),
and the HuBERT positional-conv weight norm may be stored with the old ``weight_g`` / ``weight_v``
names (renamed to ``parametrizations.weight.original0/1``).

``write_random_checkpoint`` writes a file of the same format, keys and shapes with seeded random
values, for tests and benchmarks where the real weights are absent.

Positional-encoding mode (``network.PE_MODES``): the weights cannot tell which one the denoiser was
trained with (the sinusoidal table is not a parameter). ``resolve_pe_mode`` decides, in this order: the
caller's explicit choice (the engine's ``pe_mode`` option), ``ckpt['args'].pe_mode`` when a checkpoint
records it (``write_random_checkpoint(pe_mode=...)`` does; the official release does not), else
``"constant"``, the encoding of every JoyVASA commit before 74290f6, which the released file predates.
"""

from __future__ import annotations

import argparse
import pathlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from avatarstream.engines.base import EngineError, MissingWeightsError
from avatarstream.engines.joyvasa.network import PE_MODES, DitConfig, DitTalkingHead

TE_KEY = "denoising_net.TE.pe"
POS_CONV = "audio_encoder.encoder.pos_conv_embed.conv."
LEGACY_WEIGHT_NORM = {POS_CONV + "weight_g": POS_CONV + "parametrizations.weight.original0",
                      POS_CONV + "weight_v": POS_CONV + "parametrizations.weight.original1"}
ARG_NAMES = ("motion_feat_dim", "n_motions", "n_prev_motions", "feature_dim", "audio_model", "n_diff_steps")
DEFAULT_FILE_NAME = "motion_generator_hubert_chinese.pt"
PE_MODE_ARG = "pe_mode"  # optional entry of ckpt['args'] naming the positional encoding (absent in the release)
DEFAULT_PE_MODE = "constant"  # the released generator predates JoyVASA's per-position fix (commit 74290f6)


@dataclass(frozen=True)
class PeModeChoice:
    """Which positional encoding a motion generator is built with, and where that choice came from."""

    mode: str  # one of network.PE_MODES
    source: str  # "option" (the caller asked), "checkpoint" (ckpt['args'].pe_mode) or "default"

    def describe(self) -> str:
        why = {"option": "set by the pe_mode option",
               "checkpoint": f"recorded in the checkpoint's args.{PE_MODE_ARG}",
               "default": "not recorded in the checkpoint; default for the release, which predates JoyVASA's "
                          "per-position fix (74290f6)"}[self.source]
        return f"{self.mode} ({why})"


def _args_dict(args: Any) -> dict[str, Any]:
    return vars(args) if isinstance(args, argparse.Namespace) else dict(args)


def resolve_pe_mode(requested: str | None, ckpt_args: Any) -> PeModeChoice:
    """The positional encoding to build: ``requested`` if given, else the checkpoint's record, else the default."""
    recorded = _args_dict(ckpt_args).get(PE_MODE_ARG)
    for value, what in ((requested, "pe_mode"), (recorded, f"the checkpoint's args.{PE_MODE_ARG}")):
        if value is not None and value not in PE_MODES:
            raise EngineError(f"{what} must be one of {', '.join(PE_MODES)}, got {value!r}")
    if requested is not None:
        return PeModeChoice(requested, "option")
    if recorded is not None:
        return PeModeChoice(recorded, "checkpoint")
    return PeModeChoice(DEFAULT_PE_MODE, "default")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: DitConfig
    iteration: int | None
    args: dict[str, Any]
    pe_mode: PeModeChoice  # the positional encoding the model was built with (``config.pe_mode``) and why


def read_checkpoint_file(path: str | Path) -> dict:
    """``torch.load`` the official dict safely; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"JoyVASA motion generator not found: {path} "
                                  f"(expected motion_generator/{DEFAULT_FILE_NAME} from jdh-algo/JoyVASA)")
    safe = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not this format"
        raise EngineError(f"cannot read {path} as a JoyVASA checkpoint: {exc}") from exc
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "args" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise EngineError(f"{path} is not an official JoyVASA checkpoint: expected a dict with 'args' and 'model', got {keys}")
    return dict(ckpt)


def config_from_checkpoint(ckpt: Mapping, pe_mode: str | None = None) -> DitConfig:
    """``DitConfig`` from ``ckpt['args']``, cross-checked against the state_dict shapes (``pe_mode``: see
    ``resolve_pe_mode``)."""
    args = _args_dict(ckpt["args"])
    sd = ckpt["model"]
    missing = [k for k in ARG_NAMES if k not in args]
    if missing:
        raise EngineError(f"checkpoint args lack {missing}")
    layers = {int(k.split(".")[3]) for k in sd if k.startswith("denoising_net.transformer.layers.")}
    te = sd.get(TE_KEY)
    cfg = DitConfig(**{k: args[k] for k in ARG_NAMES}, n_layers=len(layers) or DitConfig.n_layers,
                    te_max_len=int(te.shape[1]) if te is not None else DitConfig.te_max_len,
                    pe_mode=resolve_pe_mode(pe_mode, args).mode)
    betas = sd.get("diffusion_sched.betas")
    if betas is not None and betas.shape[0] - 1 != cfg.n_diff_steps:
        raise EngineError(f"checkpoint args say n_diff_steps={cfg.n_diff_steps} but diffusion_sched.betas has "
                          f"{betas.shape[0]} entries ({betas.shape[0] - 1} steps)")
    return cfg


def _normalise_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {LEGACY_WEIGHT_NORM.get(k, k): v for k, v in sd.items()}
    out.pop(TE_KEY, None)
    return out


def load_state_dict_strict(model: DitTalkingHead, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every key; raise ``EngineError`` naming missing, unexpected and mis-shaped keys."""
    sd = _normalise_keys(state_dict)
    own = {k: v for k, v in model.state_dict().items() if k != TE_KEY}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def _list(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" ... (+{len(xs) - 8} more)" if len(xs) > 8 else "")
        parts = [f"{len(missing)} missing keys: {_list(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {_list(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatches: {_list(shapes)}" if shapes else ""]
        raise EngineError(f"{source} does not match the JoyVASA DitTalkingHead: " + "; ".join(p for p in parts if p))
    result = model.load_state_dict(sd, strict=False)
    leftover = [k for k in result.missing_keys if k != TE_KEY] + list(result.unexpected_keys)
    if leftover:
        raise EngineError(f"{source}: keys not loaded: {leftover}")


def load_motion_generator(path: str | Path, *, pe_mode: str | None = None,
                          audio_config_dir: str | Path | None = None,
                          device: str | torch.device = "cpu") -> tuple[DitTalkingHead, CheckpointInfo]:
    """Build ``DitTalkingHead`` from an official checkpoint file and load it strictly (eval mode).

    ``pe_mode``: None takes the checkpoint's record, else ``DEFAULT_PE_MODE`` (``resolve_pe_mode``)."""
    ckpt = read_checkpoint_file(path)
    args = _args_dict(ckpt["args"])
    choice = resolve_pe_mode(pe_mode, args)
    cfg = config_from_checkpoint(ckpt, choice.mode)
    model = DitTalkingHead(cfg, audio_config_dir)
    load_state_dict_strict(model, ckpt["model"], str(path))
    info = CheckpointInfo(Path(path), cfg, ckpt.get("iter"), args, choice)
    return model.to(device).eval(), info


def random_motion_generator(seed: int = 0, config: DitConfig = DitConfig(), audio_config=None) -> DitTalkingHead:
    """``DitTalkingHead`` (real shapes by default) with seeded random weights (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DitTalkingHead(config, audio_config).eval()


def write_random_checkpoint(path: str | Path, seed: int = 0, *, config: DitConfig = DitConfig(),
                            iteration: int = 20000, pe_mode: str | None = None, audio_config=None) -> Path:
    """Write a fake official checkpoint: same format, keys and shapes as the release, seeded random values.

    ``ckpt['args']`` is an ``argparse.Namespace`` with the six architecture args plus a few training
    paths as ``pathlib.Path`` (like the real file); ``pe_mode`` given: also ``args.pe_mode`` (which the
    release lacks). ``audio_config``: the encoder's architecture (None: the published base model; the
    miniature's ``small_audio_config()`` must then be saved as the weights' ``chinese-hubert-base/config.json``).
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = random_motion_generator(seed, config, audio_config)
    args = argparse.Namespace(**{k: getattr(config, k) for k in ARG_NAMES}, fps=25, pad_mode="zero",
                              exp_name="random-weights", data_root=pathlib.Path("datasets/random"),
                              save_dir=pathlib.Path("experiments/random"), seed=seed)
    if pe_mode is not None:
        setattr(args, PE_MODE_ARG, resolve_pe_mode(pe_mode, {}).mode)
    torch.save({"args": args, "model": model.state_dict(), "iter": iteration}, path)
    return path


# A miniature of the same architecture (same code paths, same file format) for fast tests and smoke
# benches: real shapes cost ~100 M parameters and ~4 GFLOP per diffusion step.
SMALL_CONFIG = DitConfig(feature_dim=64, n_heads=4, n_layers=2, n_diff_steps=4)


def small_audio_config(audio_model: str = "hubert_zh"):
    """A 2-layer, 32-wide HuBERT / wav2vec2 config with the real 320-sample stride."""
    from avatarstream.engines.joyvasa.audio_encoder import audio_encoder_config

    cfg = audio_encoder_config(audio_model)
    for name, value in dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4).items():
        setattr(cfg, name, value)
    return cfg


def small_motion_generator(seed: int = 0, config: DitConfig = SMALL_CONFIG) -> DitTalkingHead:
    """A seeded random miniature ``DitTalkingHead`` (see ``SMALL_CONFIG``)."""
    return random_motion_generator(seed, config, small_audio_config(config.audio_model))

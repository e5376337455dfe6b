"""Loopy training, the paper's two stages.

* Stage 1 (image level): no temporal layers and no audio. A target frame and a reference
  frame of the same clip train the reference net and the denoising U-Net's spatial layers.
* Stage 2 (video level): 12-frame clips with 20 TSM motion frames (from up to 124 preceding
  frames); adds the inter-/intra-clip temporal layers, the audio attention, the audio
  projection and the audio-to-latents module and trains the whole model (paper: full
  training in stage 2). ``freeze_stage1`` keeps the stage-1 weights fixed (less memory).

Condition masking (per sample): audio together with the audio-to-latents output 10 %, the
reference image together with its motion frames 15 %, the motion frames alone 40 %. A
dropped condition's features are not concatenated (no reference keys/values, no motion
tokens), exactly like the no-reference guidance pass at inference. The audio-to-latents
queries come, with equal probability, from the audio, the clip's head-motion variance or its
expression variance (the latter two need 68-point landmarks).
Noise-prediction (epsilon) MSE on SD-1.5's DDPM schedule.

VAE: the denoising targets (and the motion frames, which at inference are generated latents,
i.e. samples) are encoded with ``latent_dist.sample()`` (SD's training convention, a little
latent augmentation); the reference image is encoded with ``latent_dist.mode()`` as at
inference, where the reference must be deterministic (resumable renders, per-clip seeds).

Latent scaling: a VAE with a published scaling factor (SD's 0.18215, or the factor a Loopy
weights directory stores in ``vae/config.json``) keeps it. A random VAE (the tiny config, or
training from scratch) has none: the trainer sets it to 1 / std of the latents of
``SCALING_BATCHES`` x ``SCALING_BATCH_FRAMES`` training frames (how SD's factor was derived), and
it is saved with the checkpoint so inference scales by the same value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from avatarstream.engines.base import EngineError
from avatarstream.engines.loopy.audio_conditioning import AudioFeatureExtractor, audio_windows
from avatarstream.engines.loopy.audio_to_latents import QUERY_SOURCES
from avatarstream.engines.loopy.checkpoint import (
    LoopyWeights, config_for_base, load_base_unet_state, load_state_strict, load_vae, load_wav2vec2,
    load_weights_dir, random_weights, save_weights_dir,
)
from avatarstream.engines.loopy.config import get_config
from avatarstream.engines.loopy.dataset import LoopyVideoDataset, VideoClip, motion_variances
from avatarstream.engines.loopy.loopy_model import LoopyModel
from avatarstream.engines.loopy.noise_schedule import training_scheduler
from avatarstream.engines.loopy.temporal_segment import sample_indices, segment_groups

SCALING_BATCHES = 8  # batches of training frames behind a computed latent scaling factor
SCALING_BATCH_FRAMES = 8
AUDIO_CACHE_CLIPS = 32  # wav2vec2 features kept in memory (about 10 MB per 10 s clip for wav2vec2-base)


@dataclass
class TrainOptions:
    data: Path
    out: Path
    stage: int = 1
    config: str = "full"
    base: Path | None = None  # diffusers-format SD-1.5 directory (unet/, vae/)
    wav2vec2: Path | None = None  # Wav2Vec2Model directory
    init: Path | None = None  # Loopy weights directory to start from (stage 2: the stage-1 output)
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    save_every: int = 500
    gradient_checkpointing: bool = False
    freeze_stage1: bool = False  # stage 2: keep the stage-1 weights fixed (the paper trains everything)


@dataclass
class TrainingBatch:
    target: torch.Tensor  # (B, F, 4, h, w) clean latents
    reference: torch.Tensor  # (B, 4, h, w)
    motion: torch.Tensor | None  # (B, M, 4, h, w), zeros where missing
    audio_windows: torch.Tensor | None  # (B, F, W, D)
    audio_keep: torch.Tensor | None  # (B,)
    motion_source: str = "audio"
    variance: torch.Tensor | None = None  # (B,)
    reference_keep: torch.Tensor | None = None  # (B,) bool, False = reference + motion frames dropped
    motion_keep: torch.Tensor | None = None  # (B, M) bool, False = motion latent dropped or missing


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    out_dir: Path | None = None


def _base_state_for_denoiser(state: dict[str, torch.Tensor], model: LoopyModel) -> dict[str, torch.Tensor]:
    """Rename plain-U-Net keys to the denoising U-Net's (spatial transformers are wrapped)."""
    prefixes = sorted(model.denoising_unet.temporal_keys, key=len, reverse=True)
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p + "."):
                k = f"{p}.spatial.{k[len(p) + 1:]}"
                break
        out[k] = v
    return out


def init_from_base(model: LoopyModel, base_state: dict[str, torch.Tensor]) -> None:
    """Both U-Nets start from the SD weights; Loopy's new layers keep their (identity) init."""
    load_state_strict(model.reference_net.unet, base_state, "base U-Net (reference net)")
    # the denoising U-Net has no text cross-attention (attn2 / its norm2): those SD weights are unused
    den = {k: v for k, v in _base_state_for_denoiser(base_state, model).items()
           if not (".transformer_blocks." in k and (".attn2." in k or ".norm2." in k))}
    missing, unexpected = model.denoising_unet.unet.load_state_dict(den, strict=False)
    new = (".inter_clip.", ".intra_clip.", ".audio_attention.")
    bad = [k for k in missing if not any(n in k for n in new)]
    if bad or unexpected:
        raise EngineError(f"base U-Net does not fit the denoising U-Net: missing {bad[:8]}, unexpected {unexpected[:8]}")


def build_weights(opts: TrainOptions) -> LoopyWeights:
    if opts.init is not None:
        return load_weights_dir(opts.init)
    cfg = get_config(opts.config)
    if opts.base is not None:
        cfg = config_for_base(cfg, opts.base)
    elif opts.config != "tiny":
        raise EngineError("training the full model needs --base DIR (a diffusers-format Stable Diffusion 1.5 folder)")
    if opts.wav2vec2 is None and opts.config != "tiny":
        raise EngineError("training the full model needs --wav2vec2 DIR (a saved Wav2Vec2Model, e.g. wav2vec2-base-960h)")
    weights = random_weights(cfg, opts.seed)
    if opts.wav2vec2 is not None:
        from avatarstream.engines.loopy.audio_conditioning import audio_feature_dim

        weights.wav2vec2 = load_wav2vec2(opts.wav2vec2)
        weights.model = LoopyModel(cfg, audio_feature_dim(weights.wav2vec2.config))
    if opts.base is not None:
        weights.vae = load_vae(Path(opts.base) / "vae")
        weights.scaling_factor_known = True  # SD's published factor
        init_from_base(weights.model, load_base_unet_state(opts.base))
    return weights


class LoopyTrainer:
    def __init__(self, weights: LoopyWeights, dataset: LoopyVideoDataset, stage: int, lr: float = 1e-5,
                 device: str = "cpu", seed: int = 0, batch_size: int = 1, freeze_stage1: bool = False) -> None:
        if stage not in (1, 2):
            raise EngineError(f"stage must be 1 or 2, got {stage}")
        self.weights = weights
        self.cfg = weights.config
        self.dataset = dataset
        self.stage = stage
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.model = weights.model.to(self.device).train()
        self.vae = weights.vae.to(self.device).eval().requires_grad_(False)
        self.scaling_note = self._choose_scaling_factor(seed)
        self.audio = AudioFeatureExtractor(weights.wav2vec2, self.device)
        self._audio_cache: dict[str, torch.Tensor] = {}
        groups = self.model.parameter_groups()
        # stage 1: the image-level weights; stage 2: everything (paper), or only the new layers if frozen
        trainable = set(groups["1"] if stage == 1 else groups["2"] if freeze_stage1 else groups["1"] + groups["2"])
        params = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in trainable)
            if name in trainable:
                params.append(p)
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
        self.noise_scheduler = training_scheduler()
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else None

    def _choose_scaling_factor(self, seed: int) -> str:
        """Keep the VAE's published latent scaling factor, or compute one from the training frames
        (a random VAE has none); returns a one-line description of the choice."""
        w = self.weights
        if w.scaling_factor_known:
            return f"latent scaling factor {w.scaling_factor:.6g} (the VAE's own)"
        rng = np.random.default_rng([seed, 1])  # its own stream: the training draws do not depend on it
        batches = []
        for _ in range(SCALING_BATCHES):
            clip = self.dataset[int(rng.integers(0, len(self.dataset)))]
            n = min(SCALING_BATCH_FRAMES, clip.num_frames)
            batches.append(clip.frames[np.sort(rng.choice(clip.num_frames, n, replace=False))])
        previous = w.scaling_factor
        factor = w.calibrate_scaling_factor(batches)
        return (f"latent scaling factor {factor:.6g} = 1 / std of the latents of {sum(map(len, batches))} sampled training "
                f"frames (the random VAE has no published factor; {previous:g} would leave them at std "
                f"{previous / factor:.3f})")

    # -- data ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, frames: np.ndarray, mode: bool = False) -> torch.Tensor:
        """VAE latents of ``frames``: samples (targets, motion frames) or the mode (the reference)."""
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        dists = [self.vae.encode(x[i: i + 8]).latent_dist for i in range(0, x.shape[0], 8)]
        out = [d.mode() if mode else d.sample() for d in dists]
        return torch.cat(out) * self.vae.config.scaling_factor

    def _clip_audio(self, clip: VideoClip) -> torch.Tensor:
        """Audio windows ``(T, W, D)`` of a clip; features cached for the last ``AUDIO_CACHE_CLIPS`` clips."""
        feats = self._audio_cache.pop(clip.name, None)
        if feats is None:
            feats = self.audio(clip.audio, clip.num_frames).cpu()
        self._audio_cache[clip.name] = feats
        while len(self._audio_cache) > AUDIO_CACHE_CLIPS:
            self._audio_cache.pop(next(iter(self._audio_cache)))
        return audio_windows(feats, self.cfg.audio_window)

    def _sample_one(self, clip: VideoClip, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        f = 1 if self.stage == 1 else cfg.clip_frames
        start = int(rng.integers(0, clip.num_frames - f + 1))
        ref_idx = int(rng.integers(0, clip.num_frames))
        item: dict = {"target": self._encode(clip.frames[start: start + f]),
                      "reference": self._encode(clip.frames[ref_idx: ref_idx + 1], mode=True)[0]}
        drop_ref = rng.random() < cfg.dropout.reference
        item["reference_keep"] = not drop_ref
        if self.stage == 2:
            picks = sample_indices(segment_groups(start, cfg.tsm), cfg.tsm.sampling, rng)
            motion = torch.zeros(len(picks), *item["reference"].shape, device=self.device)
            keep = torch.zeros(len(picks), dtype=torch.bool)
            if not drop_ref and rng.random() >= cfg.dropout.motion_frames:
                needed = sorted({j for group in picks for j in group})
                if needed:
                    enc = dict(zip(needed, self._encode(clip.frames[needed])))
                    for i, group in enumerate(picks):
                        if group:
                            motion[i] = torch.stack([enc[j] for j in group]).mean(0)
                            keep[i] = True
            item["motion"] = motion
            item["motion_keep"] = keep
            item["audio"] = self._clip_audio(clip)[start: start + f].to(self.device)
            item["audio_keep"] = 0.0 if rng.random() < cfg.dropout.audio else 1.0
            if clip.landmarks is not None:
                item["variances"] = motion_variances(clip.landmarks[start: start + f], clip.source_size)
        return item

    def sample_batch(self, rng: np.random.Generator | None = None) -> TrainingBatch:
        rng = rng or self.rng
        items = [self._sample_one(self.dataset[int(rng.integers(0, len(self.dataset)))], rng)
                 for _ in range(self.batch_size)]
        target = torch.stack([it["target"] for it in items])
        reference = torch.stack([it["reference"] for it in items])
        reference_keep = torch.tensor([it["reference_keep"] for it in items], device=self.device)
        if self.stage == 1:
            return TrainingBatch(target, reference, None, None, None, reference_keep=reference_keep)
        source, variance = "audio", None
        if all("variances" in it for it in items):
            source = QUERY_SOURCES[int(rng.integers(0, len(QUERY_SOURCES)))]
            if source != "audio":
                k = 0 if source == "head_motion_variance" else 1
                variance = torch.tensor([it["variances"][k] for it in items], device=self.device)
        return TrainingBatch(
            target, reference, torch.stack([it["motion"] for it in items]),
            torch.stack([it["audio"] for it in items]),
            torch.tensor([it["audio_keep"] for it in items], device=self.device), source, variance,
            reference_keep, torch.stack([it["motion_keep"] for it in items]).to(self.device),
        )

    # -- optimisation ----------------------------------------------------------------------------
    def loss(self, batch: TrainingBatch, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None) -> torch.Tensor:
        b = batch.target.shape[0]
        if noise is None:
            noise = torch.randn_like(batch.target)
        if timesteps is None:
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), device=self.device)
        f = batch.target.shape[1]
        noisy = self.noise_scheduler.add_noise(batch.target.flatten(0, 1), noise.flatten(0, 1),
                                               timesteps.repeat_interleave(f)).reshape(batch.target.shape)
        ctx = self.autocast if self.autocast is not None else _nullcontext()
        with ctx:
            eps = self.model(noisy, timesteps, batch.reference, batch.motion, batch.reference_keep, batch.motion_keep,
                             audio_windows=batch.audio_windows,
                             audio_keep=batch.audio_keep, temporal=self.stage == 2,
                             motion_source=batch.motion_source, variance=batch.variance)
        return F.mse_loss(eps.float(), noise.float())

    def step(self) -> float:
        self.model.train()
        loss = self.loss(self.sample_batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EngineError("training diverged (non-finite loss); lower --lr")
        return value


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def train(opts: TrainOptions, progress: bool = True) -> TrainResult:
    if not Path(opts.data).is_dir():
        raise EngineError(f"dataset directory not found: {opts.data}")
    weights = build_weights(opts)
    dataset = LoopyVideoDataset(opts.data, weights.config.resolution,
                                min_frames=1 if opts.stage == 1 else weights.config.clip_frames)
    trainer = LoopyTrainer(weights, dataset, opts.stage, opts.lr, opts.device, opts.seed, opts.batch_size,
                           freeze_stage1=opts.freeze_stage1)
    print(f"loopy stage {opts.stage}: {trainer.scaling_note}", flush=True)
    if opts.gradient_checkpointing:
        trainer.model.reference_net.unet.enable_gradient_checkpointing()
        trainer.model.denoising_unet.unet.enable_gradient_checkpointing()
    result = TrainResult(out_dir=Path(opts.out))
    bar = tqdm(range(1, opts.steps + 1), desc=f"loopy stage {opts.stage}", unit="step", disable=not progress)
    for step in bar:
        result.losses.append(trainer.step())
        bar.set_postfix(loss=f"{np.mean(result.losses[-20:]):.4f}")
        if opts.save_every and step % opts.save_every == 0 and step < opts.steps:
            save_weights_dir(opts.out, weights)
    save_weights_dir(opts.out, weights)
    return result

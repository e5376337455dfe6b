"""End-to-end learning check for Loopy's tiny config on a synthetic talking-portrait set.

The lite engine animates a bundled portrait to espeak-ng speech; its mouth opening per frame
(``AvatarFrame.mouth_open``, the jaw it rendered) is the ground truth the trained model's mouth
is measured against. The check trains both stages, then measures, for the SAME trained model and
the same sampling noise, how the generated mouth follows the clip's true audio, the audio shuffled
in 0.2 s blocks, and silence.

Measures (why these):

* The tiny config's VAE has random weights: decoded pixels are not an image (reconstruction
  correlation about 0), so a pixel-space mouth measure cannot see anything. The mouth is read
  in latent space instead: a ridge readout from the latent cells under the mouth to lite's jaw,
  fitted on the encoded lite frames of the training set (its fit on those frames is the
  measure's ceiling, reported).
* A random VAE's posterior is wide: ``latent_dist.std`` ~1, three times the spread of its means,
  so the ``sample()``-encoded training targets and motion frames are mostly noise no model can
  predict (the loss plateaus near 0.6 at any training length and nothing, audio included, is
  learned). ``vae_calibration.narrow_posterior`` makes it as narrow as a trained VAE's
  (``sample() == mode()``); ``random_weights`` applies it, the check measures the std before.
* A random VAE's latents have a standard deviation far from SD's (the 0.18215 scaling factor
  belongs to SD's trained VAE and leaves these latents at std ~0.06: nearly pure noise at every
  timestep, so the noise-prediction loss falls just by learning ``eps ~ x_t``). The scaling factor
  is set from the training set's latents, the latent-diffusion recipe (1 / std), as the trainer
  does for any VAE without a published factor (here from every training frame).
* Loss: noise-prediction MSE on a fixed validation set of draws (clips, reference frames, motion
  frames, timesteps, noise), before and after each stage, so "the loss falls" is not read off
  noisy single-sample training losses.
* Audio use in the loss: the same validation draws of stage 2 with each clip's audio windows
  replaced by those of shuffled audio; the MSE over the mouth's latent cells rises by this much
  when the model relies on the audio.
* Rendered clips: the full pipeline (three-pass guidance, TSM motion frames from the frames
  generated so far) with the true audio, shuffled audio and silence; correlation of the read-out
  mouth opening with lite's jaw for the true audio.

Test-scale data choices (stated in docs/loopy.md): the lite frames are rendered at 256 px and
cropped to a square of ``crop`` eye distances around eyes and mouth (lite frames head and
shoulders at 5.6 eye distances, where the mouth is 1.5 x 0.5 latent cells at 64 px); head
motion and blinks can be turned off so the mouth is the only thing the reference and the
motion frames do not explain.

``python -m avatarstream.bench.loopy_learning_check --out DIR`` runs it for several seeds and
writes ``learning_check.json`` and ``learning_check.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from avatarstream.bench.machine import load_average
from avatarstream.bench.plotting import pyplot, save_figure
from avatarstream.bench.speech import espeak_speech
from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Portrait
from avatarstream.engines.lite.engine import LiteEngine
from avatarstream.engines.loopy.audio_conditioning import audio_windows
from avatarstream.engines.loopy.checkpoint import LoopyWeights, random_weights
from avatarstream.engines.loopy.config import tiny_config
from avatarstream.engines.loopy.dataset import LoopyVideoDataset
from avatarstream.engines.loopy.pipeline import LoopyPipeline
from avatarstream.engines.loopy.train import LoopyTrainer, TrainingBatch
from avatarstream.engines.loopy.vae_calibration import encode_means, narrow_posterior
from avatarstream.engines.media_files import write_mp4

SENTENCES = ("Hello there, how are you doing today? I am fine.",
             "Bright blue balloons float over the open market square.",
             "Papa bought a bag of apples and a bottle of milk.",
             "We will meet again tomorrow morning at the station.")
SHUFFLE_BLOCK = SAMPLE_RATE // 5  # 0.2 s blocks: syllable-sized, so the shuffled audio keeps its loudness statistics
LITE_SIZE = 256  # lite renders at this size before the crop


@dataclass(frozen=True)
class LearningCheckOptions:
    seed: int = 0
    clips: int = 2  # sentences in the training set
    stage1_steps: int = 150
    stage2_steps: int = 150
    lr: float = 1e-3  # test scale (the paper's 1e-5 is for SD-initialised U-Nets and long runs)
    crop: float = 2.6  # crop square side in eye distances (lite's own framing: 5.6)
    head_motion: float = 0.0  # lite head_motion_scale
    blink_rate: float = 0.0  # lite blink_rate
    validation_draws: int = 16
    eval_frames: int = 48  # frames of the first sentence rendered per audio variant
    sample_steps: int = 8  # DDIM steps per rendered clip
    portrait: str = "astronaut.jpg"


@dataclass
class SyntheticClip:
    frames: np.ndarray  # (T, R, R, 3) uint8
    audio: np.ndarray  # float32 16 kHz
    jaw: np.ndarray  # (T,) lite's mouth opening
    mouth_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the frames


@dataclass
class LearningCheckResult:
    options: dict
    scaling_factor: float
    readout_ceiling: float  # correlation of the latent mouth readout with lite's jaw on the training frames
    readout_shuffled_lite: float  # the same readout on lite frames of the shuffled audio vs the true audio's jaw
    random_posterior_std: float  # the random VAE's posterior std before narrow_posterior
    validation_loss: dict[str, list[float]] = field(default_factory=dict)  # stage -> [before, after]
    train_losses: dict[str, list[float]] = field(default_factory=dict)
    mouth_loss_real_audio: float = math.nan  # stage-2 validation MSE over the mouth cells, true audio
    mouth_loss_shuffled_audio: float = math.nan
    rendered: dict[str, dict[str, float]] = field(default_factory=dict)  # audio variant -> correlations
    signals: dict[str, list[float]] = field(default_factory=dict)  # read-out mouth opening per variant + "lite"
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def audio_gain(self) -> float:
        """Rise of the mouth-cell loss when the audio is shuffled (> 0: the model uses the audio)."""
        return self.mouth_loss_shuffled_audio - self.mouth_loss_real_audio


def sentence_speech(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng at 150 words per minute, float32 mono at 16 kHz."""
    return espeak_speech(text, words_per_minute=150)


def shuffled_audio(audio: np.ndarray, seed: int = 1) -> np.ndarray:
    """``audio`` with its 0.2 s blocks permuted (the tail shorter than a block stays in place)."""
    n = audio.size // SHUFFLE_BLOCK * SHUFFLE_BLOCK
    blocks = audio[:n].reshape(-1, SHUFFLE_BLOCK)
    order = np.random.default_rng(seed).permutation(len(blocks))
    return np.concatenate([blocks[order].reshape(-1), audio[n:]]).astype(np.float32)


def _portrait_image(name: str) -> np.ndarray:
    path = resources.files("avatarstream.engines.lite") / "portraits" / name
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def lite_clip(image: np.ndarray, audio: np.ndarray, resolution: int, opts: LearningCheckOptions) -> SyntheticClip:
    """The lite engine speaking ``audio``, cropped around the face to ``resolution`` pixels."""
    engine = LiteEngine(seed=opts.seed)
    stream = engine.open_stream(Portrait(image), size=LITE_SIZE,
                                controls={"head_motion_scale": opts.head_motion, "blink_rate": opts.blink_rate})
    out = stream.feed(audio) + stream.flush()
    frames = np.stack([f.image for f in out])
    jaw = np.array([f.mouth_open for f in out], np.float64)
    pts = stream.face.points
    eyes, mouth = pts[36:48].mean(0), pts[48:68].mean(0)
    eye_distance = float(np.linalg.norm(pts[36:42].mean(0) - pts[42:48].mean(0)))
    centre = (eyes + mouth) / 2 + np.array([0.0, 0.15 * eye_distance])
    scale = resolution / (opts.crop * eye_distance)
    matrix = np.array([[scale, 0, resolution / 2 - scale * centre[0]], [0, scale, resolution / 2 - scale * centre[1]]])
    frames = np.stack([cv2.warpAffine(f, matrix, (resolution, resolution), flags=cv2.INTER_AREA,
                                      borderMode=cv2.BORDER_REPLICATE) for f in frames])
    lips = pts[48:68] @ matrix[:, :2].T + matrix[:, 2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    w, h = x1 - x0, y1 - y0
    box = (int(round(x0 + 0.1 * w)), int(round(y0)), int(round(x1 - 0.1 * w)), int(round(y1 + 0.5 * h + 1)))
    return SyntheticClip(frames, audio, jaw, box)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def mouth_cells(latents: torch.Tensor, box: tuple[int, int, int, int], factor: int = 8) -> np.ndarray:
    """The latent cells under the mouth box, one row per frame: ``(N, C * cells)``."""
    x0, y0, x1, y1 = box
    cells = latents[:, :, y0 // factor: -(-y1 // factor), x0 // factor: -(-x1 // factor)]
    return cells.reshape(latents.shape[0], -1).double().cpu().numpy()


class MouthReadout:
    """Ridge regression from mouth latent cells to lite's jaw (the latent-space mouth measure)."""

    def __init__(self, features: np.ndarray, jaw: np.ndarray, ridge: float = 1e-2) -> None:
        self.mean = features.mean(0)
        x = features - self.mean
        a = np.c_[x, np.ones(len(x))]
        reg = ridge * len(x) * float(x.var()) * np.eye(a.shape[1])
        reg[-1, -1] = 0.0
        self.coef = np.linalg.solve(a.T @ a + reg, a.T @ jaw)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.c_[features - self.mean, np.ones(len(features))] @ self.coef


def encode(weights: LoopyWeights, frames: np.ndarray) -> torch.Tensor:
    """VAE latent means of ``frames`` scaled by the VAE's scaling factor."""
    return encode_means(weights.vae, frames) * weights.scaling_factor


@dataclass
class _Draw:
    batch: TrainingBatch
    noise: torch.Tensor
    timesteps: torch.Tensor
    mismatched_audio: torch.Tensor | None  # (1, F, W, D) windows of another place in the set (stage 2)


def _validation_draws(trainer: LoopyTrainer, count: int, seed: int) -> list[_Draw]:
    """Fixed draws (clip, frames, reference, motion frames, timestep, noise) with every condition kept,
    and for stage 2 the audio windows of another place in the set to swap in."""
    rng = np.random.default_rng(10_000 + seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    torch.manual_seed(10_000 + seed)  # the VAE's latent samples
    dropout = trainer.cfg.dropout
    trainer.cfg = replace(trainer.cfg, dropout=replace(dropout, audio=0.0, reference=0.0, motion_frames=0.0))
    windows = [audio_windows(trainer.audio(c.audio, c.num_frames).cpu(), trainer.cfg.audio_window)
               for c in (trainer.dataset[i] for i in range(len(trainer.dataset)))] if trainer.stage == 2 else []
    draws = []
    try:
        for _ in range(count):
            batch = trainer.sample_batch(rng)
            noise = torch.randn(batch.target.shape, generator=gen)
            t = torch.randint(0, trainer.noise_scheduler.config.num_train_timesteps, (1,), generator=gen)
            other = None
            if windows:
                w = windows[int(rng.integers(0, len(windows)))]
                s = int(rng.integers(0, len(w) - trainer.cfg.clip_frames + 1))
                other = w[s: s + trainer.cfg.clip_frames][None]
            draws.append(_Draw(batch, noise, t, other))
    finally:
        trainer.cfg = replace(trainer.cfg, dropout=dropout)
    return draws


@torch.no_grad()
def _validation_loss(trainer: LoopyTrainer, draws: list[_Draw], box: tuple[int, int, int, int] | None = None,
                     mismatched: bool = False) -> float:
    """Mean noise-prediction MSE over ``draws`` (over the mouth's latent cells only when ``box`` is given)."""
    trainer.model.eval()
    total = 0.0
    for d in draws:
        b = d.batch if not mismatched else replace(d.batch, audio_windows=d.mismatched_audio)
        f = b.target.shape[1]
        noisy = trainer.noise_scheduler.add_noise(b.target.flatten(0, 1), d.noise.flatten(0, 1),
                                                  d.timesteps.repeat_interleave(f)).reshape(b.target.shape)
        eps = trainer.model(noisy, d.timesteps, b.reference, b.motion, b.reference_keep, b.motion_keep,
                            audio_windows=b.audio_windows, audio_keep=b.audio_keep, temporal=trainer.stage == 2,
                            motion_source=b.motion_source, variance=b.variance)
        err = (eps.float() - d.noise) ** 2
        if box is not None:
            x0, y0, x1, y1 = box
            err = err[..., y0 // 8: -(-y1 // 8), x0 // 8: -(-x1 // 8)]
        total += float(err.mean())
    trainer.model.train()
    return total / len(draws)


def _render_latents(pipe: LoopyPipeline, image: np.ndarray, audio: np.ndarray, work: Path, seed: int,
                    steps: int) -> torch.Tensor:
    """Generated frame latents of ``audio`` rendered with ``image`` (the pipeline's clip files)."""
    out = work / "render.mp4"
    pipe.render(image=image, audio=audio, out_path=out, work_dir=work / "clips", seed=seed, num_steps=steps,
                progress=False, keep_work_dir=True)
    latents = [np.load(p)["latents"] for p in sorted((work / "clips").glob("clip_*.npz"))]
    return torch.from_numpy(np.concatenate(latents))[: math.ceil(audio.size / SAMPLES_PER_FRAME)]


def run_learning_check(opts: LearningCheckOptions, work: Path,
                       speech: Callable[[str], np.ndarray] = sentence_speech) -> LearningCheckResult:
    """Build the synthetic set, train the tiny config's two stages, and measure (see the module docstring)."""
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    work = Path(work)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    image = _portrait_image(opts.portrait)
    clips = []
    for i in range(opts.clips):
        audio = speech(SENTENCES[i % len(SENTENCES)])
        clip = lite_clip(image, audio, cfg.resolution, opts)
        write_mp4(data / f"talk{i}.mp4", list(clip.frames), audio[: len(clip.frames) * SAMPLES_PER_FRAME], fps=cfg.fps)
        clips.append(clip)
    box = clips[0].mouth_box  # one portrait, one crop: the same box in every clip

    # the product path's calibration of a random VAE (vae_calibration), here on every training frame
    weights = random_weights(cfg, seed=opts.seed, narrow_vae=False)
    posterior_std = narrow_posterior(weights.vae)
    scaling = weights.calibrate_scaling_factor([c.frames for c in clips])
    readout = MouthReadout(np.concatenate([mouth_cells(encode(weights, c.frames), box) for c in clips]),
                           np.concatenate([c.jaw for c in clips]))
    ceiling = corr(readout(mouth_cells(encode(weights, clips[0].frames), box)), clips[0].jaw)
    # what a mouth that follows the wrong audio scores: lite itself driven by the shuffled audio
    wrong = lite_clip(image, shuffled_audio(clips[0].audio, seed=opts.seed + 1), cfg.resolution, opts)
    k = min(len(wrong.jaw), len(clips[0].jaw))
    wrong_score = corr(readout(mouth_cells(encode(weights, wrong.frames[:k]), box)), clips[0].jaw[:k])
    result = LearningCheckResult(asdict(opts), scaling, ceiling, wrong_score, posterior_std)
    result.seconds["data"] = time.perf_counter() - t0

    dataset = LoopyVideoDataset(data, cfg.resolution)
    for stage, steps in ((1, opts.stage1_steps), (2, opts.stage2_steps)):
        t1 = time.perf_counter()
        trainer = LoopyTrainer(weights, dataset, stage, lr=opts.lr, seed=opts.seed * 10 + stage)
        draws = _validation_draws(trainer, opts.validation_draws, opts.seed)
        before = _validation_loss(trainer, draws)
        result.train_losses[str(stage)] = [trainer.step() for _ in range(steps)]
        result.validation_loss[str(stage)] = [before, _validation_loss(trainer, draws)]
        if stage == 2:
            result.mouth_loss_real_audio = _validation_loss(trainer, draws, box)
            result.mouth_loss_shuffled_audio = _validation_loss(trainer, draws, box, mismatched=True)
        result.seconds[f"stage{stage}"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    first = clips[0]
    n = min(opts.eval_frames, len(first.jaw))
    real = first.audio[: n * SAMPLES_PER_FRAME]
    variants = {"real": real, "shuffled": shuffled_audio(real, seed=opts.seed + 1),
                "silence": np.zeros_like(real)}
    pipe = LoopyPipeline(weights, "cpu")
    result.signals["lite"] = first.jaw[:n].tolist()
    for name, audio in variants.items():
        latents = _render_latents(pipe, first.frames[0], audio, work / f"render-{name}", opts.seed, opts.sample_steps)
        signal = readout(mouth_cells(latents[:n], box))
        result.signals[name] = signal.tolist()
        result.rendered[name] = {"corr_with_lite_jaw": corr(signal, first.jaw[:n]), "mean": float(signal.mean()),
                                 "std": float(signal.std())}
    result.seconds["render"] = time.perf_counter() - t1
    weights.model.train()
    return result


def _plot(results: list[LearningCheckResult], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in results:
        losses = r.train_losses["1"] + r.train_losses["2"]
        k = min(20, len(losses))
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        axes[0].plot(np.arange(k, len(losses) + 1), smooth, label=f"seed {r.options['seed']}")
    axes[0].axvline(len(results[0].train_losses["1"]), color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("training step (stage 1 | stage 2)")
    axes[0].set_ylabel("noise-prediction MSE (20-step mean)")
    axes[0].legend(fontsize=8)
    r = results[0]
    axes[1].plot(r.signals["lite"], color="black", lw=2, label="lite jaw (ground truth)")
    for name, style in (("real", "-"), ("shuffled", "--"), ("silence", ":")):
        axes[1].plot(r.signals[name], style,
                     label=f"{name} audio (r = {r.rendered[name]['corr_with_lite_jaw']:.2f})")
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("mouth opening (latent readout)")
    axes[1].set_title(f"rendered mouth, seed {r.options['seed']}", fontsize=9)
    axes[1].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def summary(r: LearningCheckResult) -> dict:
    return {
        "seed": r.options["seed"], "scaling_factor": round(r.scaling_factor, 4),
        "random_posterior_std": round(r.random_posterior_std, 3),
        "readout_ceiling": round(r.readout_ceiling, 3), "readout_shuffled_lite": round(r.readout_shuffled_lite, 3),
        "validation_loss": {k: [round(v, 4) for v in vs] for k, vs in r.validation_loss.items()},
        "mouth_loss_real_audio": round(r.mouth_loss_real_audio, 4),
        "mouth_loss_shuffled_audio": round(r.mouth_loss_shuffled_audio, 4),
        "audio_gain": float(f"{r.audio_gain:.2e}"),
        "rendered_corr_with_lite_jaw": {k: round(v["corr_with_lite_jaw"], 3) for k, v in r.rendered.items()},
        "rendered_mean_opening": {k: round(v["mean"], 3) for k, v in r.rendered.items()},
        "seconds": {k: round(v, 1) for k, v in r.seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avatarstream.bench.loopy_learning_check",
                                description="Train Loopy's tiny config on a lite-rendered talking-portrait set "
                                            "and measure whether the rendered mouth follows the audio.")
    p.add_argument("--out", type=Path, required=True, help="directory for learning_check.json and .png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    defaults = LearningCheckOptions()
    for name in ("clips", "stage1_steps", "stage2_steps", "eval_frames", "sample_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "crop", "head_motion", "blink_rate"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.time()
    for seed in args.seeds:
        opts = LearningCheckOptions(seed=seed, clips=args.clips, stage1_steps=args.stage1_steps,
                                    stage2_steps=args.stage2_steps, lr=args.lr, crop=args.crop,
                                    head_motion=args.head_motion, blink_rate=args.blink_rate,
                                    eval_frames=args.eval_frames, sample_steps=args.sample_steps)
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_learning_check(opts, Path(tmp)))
        print(json.dumps(summary(results[-1])), flush=True)
    _plot(results, args.out / "learning_check.png")
    report = {"command": "python -m avatarstream.bench.loopy_learning_check " + " ".join(argv or []),
              "machine": {"cpus": os.cpu_count(), "load_avg_1min": load_average()[0],
                          "torch": torch.__version__},
              "wall_s": round(time.time() - t0, 1), "runs": [summary(r) for r in results],
              "details": [asdict(r) for r in results]}
    (args.out / "learning_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'learning_check.json'} and {args.out / 'learning_check.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

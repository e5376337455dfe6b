"""Loopy inference: long audio -> chained 12-frame clips -> MP4.

For each clip: gather the 20 motion-frame latents from the frames made so far with the
temporal segment module (frames before the start of the video are masked: not concatenated),
run the reference net once, then 25 DDIM steps with three network passes per step (all
conditions / audio dropped / audio and reference with its motion frames dropped, where the
dropped reference contributes no keys or values) combined by ``guidance.combine_guidance``;
decode with the VAE. Audio features are computed exactly as in training: wav2vec2 over the
whole (normalised) audio in the same chunks with the same context, windows replicated at the
audio's ends. Each finished clip is
saved to the work directory (latents + frames), so an interrupted render resumes where it
stopped and re-running the same command skips the finished clips. Frames are muxed with the
audio from the clip files, never all held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from avatarstream.engines.base import SAMPLES_PER_FRAME, EngineError, StageTimes
from avatarstream.engines.loopy.audio_conditioning import AudioFeatureExtractor, ChunkedAudioFeatures
from avatarstream.engines.loopy.checkpoint import LoopyWeights
from avatarstream.engines.loopy.face_crop import crop_square
from avatarstream.engines.loopy.guidance import pass_masks, split_and_combine
from avatarstream.engines.media_files import write_mp4
from avatarstream.engines.loopy.noise_schedule import sampling_scheduler
from avatarstream.engines.loopy.temporal_segment import gather_motion_latents

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)
# ``progress`` arguments: True/None -> own tqdm bar, False -> silent, an object with
# ``update(n)`` (e.g. the caller's tqdm) -> advanced by frames made, a ProgressFn -> called per clip.


@dataclass
class RenderResult:
    path: Path
    num_frames: int
    clips_total: int
    clips_rendered: int
    clips_resumed: int
    frames_rendered: int  # frames generated in this call (resumed clips excluded)
    seconds: float
    stage_ms: dict[str, float] = field(default_factory=dict)  # total milliseconds per stage


class _LatentWindow:
    """The last ``keep`` frame latents, indexed by absolute frame number."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.items: list[torch.Tensor] = []
        self.offset = 0

    def __len__(self) -> int:
        return self.offset + len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i < self.offset:
            raise IndexError(f"frame {i} is no longer kept")
        return self.items[i - self.offset]

    def extend(self, latents: torch.Tensor) -> None:
        self.items.extend(latents.unbind(0))
        drop = max(0, len(self.items) - self.keep)
        if drop:
            self.items = self.items[drop:]
            self.offset += drop


class LoopyPipeline:
    def __init__(self, weights: LoopyWeights, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.cfg = weights.config
        self.model = weights.model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.vae = weights.vae.to(self.device).eval().requires_grad_(False)
        if self.dtype != torch.float32:
            self.vae = self.vae.to(self.dtype)
        self.audio = AudioFeatureExtractor(weights.wav2vec2, self.device, torch.float32)
        self.scheduler = sampling_scheduler()
        self.times = StageTimes()

    # -- VAE ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 at the model resolution -> (N, 4, h, w) scaled latents."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch: int = 4) -> np.ndarray:
        out = []
        for i in range(0, latents.shape[0], batch):
            x = self.vae.decode(latents[i: i + batch].to(self.dtype) / self.vae.config.scaling_factor).sample
            out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out, axis=0)

    # -- one clip ----------------------------------------------------------------------------
    def _timed(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.times.add(stage, 1000.0 * (now - t0))
        return now

    @torch.no_grad()
    def generate_clip(self, reference_latent: torch.Tensor, motion_latents: torch.Tensor,
                      audio_windows: torch.Tensor, generator: torch.Generator, num_steps: int,
                      motion_valid: torch.Tensor | None = None) -> torch.Tensor:
        """One clip of ``audio_windows.shape[0]`` frame latents (F, 4, h, w); ``motion_valid`` (M,) bool
        marks the motion latents that exist (None: all)."""
        cfg = self.cfg
        f = audio_windows.shape[0]
        t0 = time.perf_counter()
        ref = reference_latent[None].to(self.device, self.dtype)
        mot = motion_latents[None].to(self.device, self.dtype)
        valid = None if motion_valid is None else motion_valid[None].to(self.device, torch.bool)
        encoded = self.model.encode_reference(ref, mot, motion_keep=valid)
        keep_audio, keep_ref = pass_masks(1)
        conditioning = encoded.select([0] * len(keep_ref), keep_ref.tolist())
        t0 = self._timed("reference_net", t0)
        windows = audio_windows[None].to(self.device, self.dtype).expand(3, -1, -1, -1)
        keep = keep_audio.to(self.device, self.dtype)
        self.scheduler.set_timesteps(num_steps, device=self.device)
        shape = (1, f, 4, cfg.latent_size, cfg.latent_size)
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            xin = self.scheduler.scale_model_input(x, t).to(self.dtype).expand(3, -1, -1, -1, -1)
            eps3 = self.model.denoise(xin, t.reshape(1).expand(3).to(self.device), conditioning, windows, keep,
                                      temporal=True)
            eps = split_and_combine(eps3.float(), cfg.guidance.audio_ratio, cfg.guidance.reference_ratio)
            x = self.scheduler.step(eps, t, x, eta=cfg.sampling.eta, generator=generator).prev_sample
        self._timed("denoise", t0)
        return x[0].float()

    # -- whole render ------------------------------------------------------------------------
    def render(self, image: np.ndarray, audio: np.ndarray, out_path: Path, *, work_dir: Path | None = None,
               seed: int = 0, num_steps: int | None = None, progress: ProgressFn | bool | object | None = True,
               keep_work_dir: bool = False) -> RenderResult:
        """Render ``audio`` (16 kHz mono float32) with the portrait ``image`` (H x W x 3 uint8) to ``out_path``."""
        cfg = self.cfg
        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size == 0:
            raise EngineError("audio is empty")
        steps = num_steps or cfg.sampling.num_steps
        out_path = Path(out_path)
        work = Path(work_dir) if work_dir is not None else out_path.with_name(out_path.name + ".loopy-work")
        num_frames = math.ceil(audio.size / SAMPLES_PER_FRAME)
        clip_len = cfg.clip_frames
        num_clips = math.ceil(num_frames / clip_len)
        crop = crop_square(np.ascontiguousarray(image), None, cfg.resolution)  # engine passes a face-centred crop
        _open_work_dir(work, _fingerprint(crop, audio, cfg, seed, steps))

        t_start = time.perf_counter()
        self.times = StageTimes()
        reference_latent = self.encode_images(crop[None])[0].float()
        audio_features = ChunkedAudioFeatures(self.audio, audio, num_frames)
        history = _LatentWindow(cfg.tsm.total_frames)
        latent_shape = tuple(reference_latent.shape)
        bar = tqdm(total=num_frames, unit="frame", desc="loopy", disable=progress is not True and progress is not None)
        rendered = resumed = frames_rendered = 0
        try:
            for c in range(num_clips):
                start = c * clip_len
                shown = min(clip_len, num_frames - start)
                clip_file = work / f"clip_{c:05d}.npz"
                if clip_file.is_file():
                    with np.load(clip_file) as z:
                        latents = torch.from_numpy(z["latents"])
                    resumed += 1
                else:
                    t0 = time.perf_counter()
                    windows = audio_features.windows(start, clip_len, cfg.audio_window)
                    self._timed("audio_features", t0)
                    motion, valid = gather_motion_latents(history, start, cfg.tsm, latent_shape=latent_shape)
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + c)
                    latents = self.generate_clip(reference_latent, motion, windows, generator, steps, valid).cpu()
                    t0 = time.perf_counter()
                    frames = self.decode_latents(latents[:shown].to(self.device))
                    self._timed("vae_decode", t0)
                    _save_clip(clip_file, latents.numpy(), frames)
                    rendered += 1
                    frames_rendered += shown
                history.extend(latents)
                bar.update(shown)
                if hasattr(progress, "update"):  # a caller's tqdm bar
                    progress.update(shown)
                elif callable(progress):
                    progress(start + shown, num_frames)
        finally:
            bar.close()
        t0 = time.perf_counter()
        n = write_mp4(out_path, _iter_clip_frames(work, num_clips), audio, fps=cfg.fps)
        self._timed("mux", t0)
        if n != num_frames:
            raise EngineError(f"internal error: wrote {n} frames, expected {num_frames}")
        if not keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
        return RenderResult(out_path, num_frames, num_clips, rendered, resumed, frames_rendered,
                            time.perf_counter() - t_start,
                            dict(self.times.ms))


def _fingerprint(crop: np.ndarray, audio: np.ndarray, cfg, seed: int, steps: int) -> str:
    h = hashlib.sha256()
    h.update(crop.tobytes())
    h.update(audio.tobytes())
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    h.update(f"{seed}:{steps}".encode())
    return h.hexdigest()


def _open_work_dir(work: Path, fingerprint: str) -> None:
    manifest = work / "render.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("fingerprint")
        if old != fingerprint:
            raise EngineError(f"work directory {work} holds clips of a different render (other portrait, audio, "
                              "seed, steps or weights); delete it or choose another work directory")
        return
    work.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"fingerprint": fingerprint}))


def _save_clip(path: Path, latents: np.ndarray, frames: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, latents=latents.astype(np.float32), frames=frames)
    tmp.replace(path)


def _iter_clip_frames(work: Path, num_clips: int):
    for c in range(num_clips):
        with np.load(work / f"clip_{c:05d}.npz") as z:
            frames = z["frames"]
        yield from frames

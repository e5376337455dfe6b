"""``Renderer``: LivePortrait's image side. F and M run once per avatar; W + G run per frame, batched.

A ``PreparedAvatar`` caches the source's appearance volume ``f_s`` and keypoints, so a stream only
sends driving keypoints per frame. ``render`` takes (avatar, keypoints) pairs from any number of
avatars (sessions) and runs them as one batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

from avatarstream.engines.base import EngineError, StageTimes
from avatarstream.engines.liveportrait.camera import KeypointInfo, keypoint_info, source_keypoints
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks
from avatarstream.engines.liveportrait.source import INPUT_SIZE


@dataclass
class PreparedAvatar:
    """What the renderer keeps per source portrait (computed once)."""

    feature_3d: torch.Tensor  # (1,32,16,64,64) appearance volume f_s
    motion: KeypointInfo  # the source's own motion (batch 1, float32)
    keypoints: torch.Tensor  # (1,21,3) x_s


# Stages a renderer can hand to an exported runtime (names and tensor layouts as in ``engines.liveportrait.stages``).
APPEARANCE_STAGE = "appearance_feature_extractor"  # img (B,3,256,256) -> f_s
MOTION_STAGE = "motion_extractor"  # img -> pitch, yaw, roll, t, exp, scale, kp
WARP_STAGE = "warping_spade"  # feature_3d, kp_driving, kp_source -> image (B,3,512,512) in [0, 1]
RUNTIME_STAGES = (APPEARANCE_STAGE, MOTION_STAGE, WARP_STAGE)


class StageRunner(Protocol):
    """What the renderer needs of an ``engines.runtimes.stage_runtime.StageRuntime``: named tensors in, named tensors out."""

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ...


def image_to_tensor(images: np.ndarray, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N,H,W,3) or (H,W,3) RGB -> float (N,3,H,W) in [0,1] (no mean/std normalisation)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise EngineError(f"expected uint8 RGB image(s) of shape (N,H,W,3), got {arr.shape} {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> uint8 (N,H,W,3); clip, x255 and truncate like the reference."""
    return (x.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


class Renderer:
    """F, M, W + G on torch; any stage of ``RUNTIME_STAGES`` found in ``runtimes`` runs there instead
    (an onnxruntime / TensorRT runtime from ``engines.runtimes.backend_choice.open_stage_runtimes``), same tensors in and out."""

    def __init__(self, networks: LivePortraitNetworks, device: str = "cpu", fp16: bool = False,
                 runtimes: Mapping[str, StageRunner] | None = None):
        self.device = torch.device(device)
        if fp16 and self.device.type != "cuda":
            raise EngineError("fp16 rendering needs a CUDA device")
        unknown = sorted(set(runtimes or {}) - set(RUNTIME_STAGES))
        if unknown:
            raise EngineError(f"the renderer runs no stage {unknown}; it can hand over {', '.join(RUNTIME_STAGES)}")
        self.networks = networks.to(self.device)
        self.fp16 = fp16
        self.runtimes: dict[str, StageRunner] = dict(runtimes or {})
        self.times = StageTimes()

    def _run_stage(self, stage: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One stage on its runtime; float32 inputs; outputs copied to the renderer's device (a runtime may
        reuse its output buffers on the next call, and the avatar cache outlives that)."""
        out = self.runtimes[stage].run({k: v.float().contiguous() for k, v in inputs.items()})
        return {k: v.to(self.device, copy=True) for k, v in out.items()}

    def _motion(self, x: torch.Tensor) -> KeypointInfo:
        if MOTION_STAGE in self.runtimes:
            return keypoint_info(self._run_stage(MOTION_STAGE, img=x))
        with self._autocast():
            return keypoint_info(self.networks.motion_extractor(x))

    def _autocast(self):
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _timed(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.add(stage, (time.perf_counter() - t0) * 1000)

    @torch.inference_mode()
    def prepare(self, image256: np.ndarray) -> PreparedAvatar:
        """Run F and M on a 256 x 256 uint8 RGB source crop; cache the results."""
        if np.asarray(image256).shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            raise EngineError(f"the LivePortrait source input must be {INPUT_SIZE}x{INPUT_SIZE}, got {np.shape(image256)}")
        x = image_to_tensor(image256, self.device)
        with self._timed("appearance_feature_extractor"):
            if APPEARANCE_STAGE in self.runtimes:
                f_s = self._run_stage(APPEARANCE_STAGE, img=x)["f_s"].float()
            else:
                with self._autocast():
                    f_s = self.networks.appearance_feature_extractor(x).float()
        with self._timed("motion_extractor"):
            info = self._motion(x)
        return PreparedAvatar(feature_3d=f_s, motion=info, keypoints=source_keypoints(info))

    @torch.inference_mode()
    def extract_motion(self, images256: np.ndarray) -> KeypointInfo:
        """The motion extractor on a batch of 256 x 256 frames (driving video, tests)."""
        return self._motion(image_to_tensor(images256, self.device))

    @torch.inference_mode()
    def warp_decode(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """W then G on a batch: -> (B,3,512,512) float in [0,1]."""
        if WARP_STAGE in self.runtimes:
            with self._timed(WARP_STAGE):
                return self._run_stage(WARP_STAGE, feature_3d=feature_3d, kp_driving=kp_driving,
                                       kp_source=kp_source)["image"].float()
        with self._autocast():
            with self._timed("warping_module"):
                warped = self.networks.warping_module(feature_3d, kp_driving=kp_driving, kp_source=kp_source)["out"]
            with self._timed("spade_generator"):
                image = self.networks.spade_generator(warped)
        return image.float()

    @torch.inference_mode()
    def stitch(self, kp_source: np.ndarray, kp_driving: np.ndarray) -> np.ndarray:
        """LivePortrait's stitching (reference ``stitching``), always in float32: d = S([x_s, x_d]) (65 values);
        x_d + d[:63] as (21, 3), plus (d[63], d[64]) on every keypoint's x and y. (21, 3) or (N, 21, 3) arrays."""
        x_s = torch.as_tensor(np.asarray(kp_source, np.float32), device=self.device)
        x_d = torch.as_tensor(np.asarray(kp_driving, np.float32), device=self.device)
        single = x_d.ndim == 2
        x_d = x_d.reshape(-1, *x_d.shape[-2:])
        n, k = x_d.shape[:2]
        x_s = x_s.reshape(-1, k, 3).expand(n, k, 3)
        delta = self.networks.stitching(torch.cat([x_s.reshape(n, -1), x_d.reshape(n, -1)], 1).float())
        out = x_d + delta[:, :3 * k].reshape(n, k, 3)
        out[..., :2] += delta[:, 3 * k:3 * k + 2].reshape(n, 1, 2)
        out = out.cpu().numpy().astype(np.float32)
        return out[0] if single else out

    def render(self, items: Sequence[tuple[PreparedAvatar, np.ndarray | torch.Tensor]]) -> np.ndarray:
        """Render one frame per (avatar, driving keypoints (21,3)) pair, all in one batch -> uint8 (N,512,512,3).

        The pairs may come from different avatars (sessions) or be consecutive frames of one.
        """
        if not items:
            return np.zeros((0, 512, 512, 3), np.uint8)
        feats, kp_s, kp_d = [], [], []
        for avatar, keypoints in items:
            kp = torch.as_tensor(np.asarray(keypoints, np.float32) if not torch.is_tensor(keypoints) else keypoints)
            if tuple(kp.shape[-2:]) != tuple(avatar.keypoints.shape[-2:]):
                raise EngineError(f"driving keypoints must have shape (21, 3), got {tuple(kp.shape)}")
            feats.append(avatar.feature_3d)
            kp_s.append(avatar.keypoints)
            kp_d.append(kp.reshape(1, *avatar.keypoints.shape[-2:]).to(self.device, torch.float32))
        image = self.warp_decode(torch.cat(feats), torch.cat(kp_s), torch.cat(kp_d))
        return tensor_to_images(image)

    def render_avatar(self, avatar: PreparedAvatar, keypoints: np.ndarray | torch.Tensor) -> np.ndarray:
        """All frames of one avatar: keypoints (N,21,3) -> uint8 (N,512,512,3)."""
        kp = keypoints if torch.is_tensor(keypoints) else torch.from_numpy(np.asarray(keypoints, np.float32))
        kp = kp.reshape(-1, *avatar.keypoints.shape[-2:])
        return self.render([(avatar, k) for k in kp])

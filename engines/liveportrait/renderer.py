"""``Renderer``: LivePortrait's image side. F and M run once per avatar; W + G run per frame, batched.

A ``PreparedAvatar`` caches the source's appearance volume ``f_s`` and keypoints, so a stream only
sends driving keypoints per frame. ``render`` takes (avatar, keypoints) pairs from any number of
avatars (sessions) and runs them as one batch.

On CUDA the host waits for the GPU once per ``render`` batch, for the frames it hands back (converted to uint8 on
the device first: a quarter of the bytes); nothing else in it synchronises. ``render`` runs on the renderer's own
CUDA stream, after the work queued before on the caller's stream (keypoints stitched by a session's thread); the
host keypoints of a batch go up in one pinned, asynchronous copy; the stage times come from CUDA events read after
the fact (``times`` waits for the pending ones only when read). ``stitch_on_device`` keeps LivePortrait's
stitching on the GPU for a whole batch of frames (``engines.runtimes.device_work``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

from avatarstream.engines.base import EngineError, StageTimes
from avatarstream.engines.liveportrait.camera import KeypointInfo, keypoint_info, source_keypoints
from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks
from avatarstream.engines.liveportrait.source import INPUT_SIZE
from avatarstream.engines.runtimes.device_work import StageClock, new_stream, side_stream, upload


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
    """(N,3,H,W) in [0,1] -> uint8 (N,H,W,3); clip, x255 and truncate like the reference (on the tensor's device:
    the host receives uint8, not float)."""
    return (x.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
        self._clock = StageClock(self.device, StageTimes())
        self._stream = new_stream(self.device)  # render() runs here (None on a CPU)

    @property
    def times(self) -> StageTimes:
        """Milliseconds per stage (on CUDA: from events, waiting for the pending ones now that they are asked for)."""
        return self._clock.collect(wait=True)

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

    def _timed(self, stage: str):
        return self._clock.timed(stage)  # no host sync: CUDA events read after the fact

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
    def stitch_on_device(self, kp_source: np.ndarray, kp_driving: np.ndarray,
                         multiplier: float | None = None) -> torch.Tensor:
        """LivePortrait's stitching (reference ``stitching``) of N frames at once, in float32, left on the device:
        d = S([x_s, x_d]) (65 values); x_d + d[:63] as (21, 3), plus (d[63], d[64]) on every keypoint's x and y;
        then, with ``multiplier``, x_s + (x_d - x_s) * multiplier. ``kp_source`` (21, 3), ``kp_driving`` (N, 21, 3)
        -> (N, 21, 3) on the renderer's device: x_s and x_d go up in one copy, nothing comes back."""
        k = int(np.shape(kp_source)[-2])
        both = np.concatenate([np.asarray(kp_source, np.float32).reshape(1, k, 3),
                               np.asarray(kp_driving, np.float32).reshape(-1, k, 3)])
        on_device = upload(torch.from_numpy(both), self.device)
        x_s, x_d = on_device[:1], on_device[1:]
        n = x_d.shape[0]
        delta = self.networks.stitching(torch.cat([x_s.expand(n, k, 3).reshape(n, -1), x_d.reshape(n, -1)], 1))
        out = x_d + delta[:, :3 * k].reshape(n, k, 3)
        out[..., :2] += delta[:, 3 * k:3 * k + 2].reshape(n, 1, 2)
        if multiplier is not None:
            out = x_s + (out - x_s) * float(multiplier)
        return out

    def stitch(self, kp_source: np.ndarray, kp_driving: np.ndarray) -> np.ndarray:
        """``stitch_on_device`` back on the host: (21, 3) or (N, 21, 3) arrays."""
        single = np.ndim(kp_driving) == 2
        out = self.stitch_on_device(kp_source, kp_driving).cpu().numpy().astype(np.float32)
        return out[0] if single else out

    @torch.inference_mode()
    def render(self, items: Sequence[tuple[PreparedAvatar, np.ndarray | torch.Tensor]]) -> np.ndarray:
        """Render one frame per (avatar, driving keypoints (21,3)) pair, all in one batch -> uint8 (N,512,512,3).

        The pairs may come from different avatars (sessions) or be consecutive frames of one. Keypoints may be host
        arrays (they go up in one copy for the batch) or device tensors (``stitch_on_device``: used where they are).
        """
        if not items:
            return np.zeros((0, 512, 512, 3), np.uint8)
        k = tuple(items[0][0].keypoints.shape[-2:])
        for avatar, keypoints in items:
            shape = tuple(keypoints.shape) if torch.is_tensor(keypoints) else np.shape(keypoints)
            if tuple(shape[-2:]) != tuple(avatar.keypoints.shape[-2:]):
                raise EngineError(f"driving keypoints must have shape (21, 3), got {tuple(shape)}")
        with side_stream(self._stream):
            host = [i for i, (_, kp) in enumerate(items) if not torch.is_tensor(kp)]
            up = upload(torch.from_numpy(np.stack([np.asarray(items[i][1], np.float32).reshape(k) for i in host])),
                        self.device) if host else torch.zeros(0)
            where = {i: j for j, i in enumerate(host)}
            kp_d = [up[where[i]:where[i] + 1] if i in where
                    else torch.as_tensor(kp).reshape(1, *k).to(self.device, torch.float32)
                    for i, (_, kp) in enumerate(items)]
            image = self.warp_decode(torch.cat([a.feature_3d for a, _ in items]),
                                     torch.cat([a.keypoints for a, _ in items]), torch.cat(kp_d))
            return tensor_to_images(image)  # the one wait: the frames handed to the host

    def render_avatar(self, avatar: PreparedAvatar, keypoints: np.ndarray | torch.Tensor) -> np.ndarray:
        """All frames of one avatar: keypoints (N,21,3) -> uint8 (N,512,512,3)."""
        kp = keypoints if torch.is_tensor(keypoints) else torch.from_numpy(np.asarray(keypoints, np.float32))
        kp = kp.reshape(-1, *avatar.keypoints.shape[-2:])
        return self.render([(avatar, k) for k in kp])

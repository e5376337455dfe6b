"""LivePortrait motion geometry: angle decoding, rotation convention, keypoint transforms.

All functions are batched torch ops. Conventions (ARCHITECTURE.md 1.4):

* Angles are degrees; pitch rotates about x, yaw about y, roll about z.
* ``rotation_matrix`` returns ``R = (Rz @ Ry @ Rx).T``; keypoints are row vectors, so
  ``kp @ R`` rotates them by ``Rz @ Ry @ Rx``.
* Keypoints live in a normalised [-1, 1]^3 "right-down-in" space (x right, y down, z into the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NUM_KP = 21
NUM_BINS = 66
LIP_EXP_INDICES = (6, 12, 14, 17, 19, 20)  # expression keypoints driven absolutely for lips
EYE_EXP_INDICES = (11, 13, 15, 16, 18)


@dataclass
class KeypointInfo:
    """Motion of a batch of faces as the motion extractor describes it (after angle decoding)."""

    pitch: torch.Tensor  # (B,) degrees
    yaw: torch.Tensor  # (B,)
    roll: torch.Tensor  # (B,)
    t: torch.Tensor  # (B,3) translation; tz is never used for rendering
    exp: torch.Tensor  # (B,21,3) expression deformation delta
    scale: torch.Tensor  # (B,1)
    kp: torch.Tensor  # (B,21,3) canonical keypoints x_c

    @property
    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def select(self, index: int) -> "KeypointInfo":
        """One face of the batch, keeping a batch axis of 1."""
        return KeypointInfo(*(getattr(self, f)[index:index + 1] for f in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")))


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """66-bin head-pose logits (B,66) -> degrees (B,): expected bin index * 3 - 97.5."""
    if logits.shape[-1] != NUM_BINS:
        raise ValueError(f"expected {NUM_BINS} angle bins, got {logits.shape[-1]}")
    prob = torch.softmax(logits, dim=-1)
    idx = torch.arange(NUM_BINS, dtype=prob.dtype, device=prob.device)
    return (prob * idx).sum(dim=-1) * 3 - 97.5


def keypoint_info(extractor_out: dict[str, torch.Tensor]) -> KeypointInfo:
    """Post-process the motion extractor's raw heads (the reference ``get_kp_info``)."""
    b = extractor_out["kp"].shape[0]
    return KeypointInfo(
        pitch=bins_to_degrees(extractor_out["pitch"].float()),
        yaw=bins_to_degrees(extractor_out["yaw"].float()),
        roll=bins_to_degrees(extractor_out["roll"].float()),
        t=extractor_out["t"].float().reshape(b, 3),
        exp=extractor_out["exp"].float().reshape(b, NUM_KP, 3),
        scale=extractor_out["scale"].float().reshape(b, 1),
        kp=extractor_out["kp"].float().reshape(b, NUM_KP, 3),
    )


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees (B,) -> R (B,3,3) = (Rz @ Ry @ Rx)^T, the reference's returned convention."""
    x = torch.as_tensor(pitch).reshape(-1) * (math.pi / 180)
    y = torch.as_tensor(yaw).reshape(-1).to(x) * (math.pi / 180)
    z = torch.as_tensor(roll).reshape(-1).to(x) * (math.pi / 180)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).reshape(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).reshape(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def source_keypoints(info: KeypointInfo) -> torch.Tensor:
    """x_s = s * (x_c @ R + exp) + (tx, ty, 0)  (the reference ``transform_keypoint``)."""
    kp = info.scale.reshape(-1, 1, 1) * (info.kp @ info.rotation + info.exp)
    return kp + torch.cat([info.t[:, :2], torch.zeros_like(info.t[:, 2:])], dim=1).unsqueeze(1)


def driving_keypoints(kp_canonical: torch.Tensor, rotation: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """x_d = s * (x_c @ R + exp) + t with tz forced to 0."""
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)
    return scale.reshape(-1, 1, 1) * (kp_canonical @ rotation + exp) + t.unsqueeze(1)


def relative_motion(source: KeypointInfo, driving: KeypointInfo, driving_first: KeypointInfo, *,
                    lip_absolute: bool = False, relative_scale: bool = True) -> torch.Tensor:
    """Driving keypoints from source motion plus the driver's change since its first frame.

    R = (R_d R_d0^T) R_s, exp = exp_s + (exp_d - exp_d0), s = s_s (s_d / s_d0), t = t_s + (t_d - t_d0), tz = 0.
    ``lip_absolute`` copies the driver's lip expression keypoints as they are (JoyVASA, humans);
    ``relative_scale=False`` keeps the source scale (JoyVASA, animals).
    Batched over the driving frames; source and first frame broadcast from batch 1.
    """
    r_d, r_d0, r_s = driving.rotation, driving_first.rotation, source.rotation
    rot = r_d @ r_d0.transpose(1, 2) @ r_s
    exp = source.exp + (driving.exp - driving_first.exp)
    if lip_absolute:
        idx = list(LIP_EXP_INDICES)
        exp = exp.clone()
        exp[:, idx] = driving.exp[:, idx]
    scale = source.scale * (driving.scale / driving_first.scale) if relative_scale else source.scale.expand(len(rot), 1)
    t = source.t + (driving.t - driving_first.t)
    return driving_keypoints(source.kp.expand(len(rot), -1, -1), rot, exp, scale, t)


def convex_hull_multiplier(x_s: torch.Tensor, x_d0: torch.Tensor) -> float:
    """sqrt(hull volume of x_s) / sqrt(hull volume of x_d0) over the 21 3-D points (batch 1)."""
    from scipy.spatial import ConvexHull

    vol_s = ConvexHull(x_s.reshape(-1, 3).detach().cpu().double().numpy()).volume
    vol_d = ConvexHull(x_d0.reshape(-1, 3).detach().cpu().double().numpy()).volume
    return float(math.sqrt(vol_s) / math.sqrt(vol_d))


def expression_friendly(x_s: torch.Tensor, x_d: torch.Tensor, x_d0: torch.Tensor, multiplier: float) -> torch.Tensor:
    """x_d <- (x_d - x_d0) * multiplier + x_s (the 'expression-friendly' / animal hull step)."""
    return (x_d - x_d0) * multiplier + x_s


def stitch(stitching_mlp: torch.nn.Module, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """Apply the stitching MLP: x_d + delta[:63] per keypoint, plus the shared (tx, ty) delta[63:65]."""
    b = x_d.shape[0]
    feat = torch.cat([x_s.expand(b, -1, -1).reshape(b, -1), x_d.reshape(b, -1)], dim=1)
    delta = stitching_mlp(feat.float())
    out = x_d + delta[:, :63].reshape(b, NUM_KP, 3)
    return out + torch.cat([delta[:, 63:65], torch.zeros_like(delta[:, :1])], dim=1).unsqueeze(1)


def apply_driving_multiplier(x_s: torch.Tensor, x_d: torch.Tensor, multiplier: float) -> torch.Tensor:
    """x_d <- x_s + (x_d - x_s) * multiplier (exaggerate or damp the motion)."""
    return x_s + (x_d - x_s) * multiplier


def landmark_ratio(points: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    """|p_a - p_b| / (|p_c - p_d| + 1e-6), the reference's eye/lip opening ratio."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(p[a] - p[b]) / (np.linalg.norm(p[c] - p[d]) + 1e-6))


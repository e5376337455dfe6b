"""A parametric 68-point face layout, placed from a few anchor measurements.

Used where no landmark regressor exists (animal faces): the eyes, nose, mouth and jaw are laid out
in a face frame whose unit is the eye distance (origin: midpoint between the eyes, x towards the
image-right eye, y down the face), then rotated, scaled and moved onto the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceProportions:
    """Feature positions in eye-distance units, in the face frame described above."""

    eye_half_width: float = 0.17
    eye_half_height: float = 0.09
    brow_y: float = -0.33
    nose_tip_y: float = 0.62
    nostril_half_width: float = 0.16
    mouth_y: float = 0.95
    mouth_half_width: float = 0.36
    upper_lip_height: float = 0.10
    lower_lip_height: float = 0.12
    lip_gap: float = 0.0
    jaw_top_y: float = 0.05
    jaw_half_width: float = 0.95
    chin_y: float = 1.5
    mouth_x: float = 0.0  # the nose and mouth's offset from the eyes' midpoint along the eye line


HUMAN = FaceProportions()
# A cat: short muzzle (mouth close under the nose), small mouth, wide cheeks, round eyes.
CAT = FaceProportions(eye_half_width=0.22, eye_half_height=0.18, brow_y=-0.32, nose_tip_y=0.80,
                      nostril_half_width=0.10, mouth_y=1.02, mouth_half_width=0.23, upper_lip_height=0.07,
                      lower_lip_height=0.09, jaw_top_y=0.20, jaw_half_width=1.0, chin_y=1.30)


def face_frame_points(p: FaceProportions) -> np.ndarray:
    """The 68 points in the face frame (eye distance 1, eyes at (-0.5, 0) and (0.5, 0))."""
    pts = np.zeros((68, 2))
    t = np.linspace(0.0, np.pi, 17)
    pts[0:17] = np.stack([-p.jaw_half_width * np.cos(t), p.jaw_top_y + (p.chin_y - p.jaw_top_y) * np.sin(t)], 1)
    bx = np.linspace(-0.85, -0.15, 5)
    arc = 0.08 * np.sin(np.linspace(0.2, np.pi - 0.2, 5))
    pts[17:22] = np.stack([bx, p.brow_y - arc], 1)
    pts[22:27] = np.stack([-bx[::-1], p.brow_y - arc[::-1]], 1)
    pts[27:31] = np.stack([np.zeros(4), np.linspace(0.12, p.nose_tip_y, 4)], 1)
    nx = np.linspace(-p.nostril_half_width, p.nostril_half_width, 5)
    pts[31:36] = np.stack([nx, p.nose_tip_y + 0.08 - 0.03 * np.cos(np.linspace(-1.2, 1.2, 5))], 1)
    w, h = p.eye_half_width, p.eye_half_height
    for first, cx in ((36, -0.5), (42, 0.5)):
        pts[first:first + 6] = [[cx - w, 0], [cx - w / 3, -h], [cx + w / 3, -h], [cx + w, 0], [cx + w / 3, h],
                                [cx - w / 3, h]]
    mw, uh, lh, g, my = p.mouth_half_width, p.upper_lip_height, p.lower_lip_height, p.lip_gap / 2, p.mouth_y
    outer = [[-mw, 0], [-0.6 * mw, -0.8 * uh - g], [-0.25 * mw, -uh - g], [0, -0.85 * uh - g], [0.25 * mw, -uh - g],
             [0.6 * mw, -0.8 * uh - g], [mw, 0], [0.6 * mw, 0.8 * lh + g], [0.3 * mw, lh + g], [0, lh + g],
             [-0.3 * mw, lh + g], [-0.6 * mw, 0.8 * lh + g]]
    inner = [[-0.8 * mw, 0], [-0.35 * mw, -g], [0, -g], [0.35 * mw, -g], [0.8 * mw, 0], [0.35 * mw, g], [0, g],
             [-0.35 * mw, g]]
    pts[48:68] = np.array(outer + inner) + [0, my]
    pts[27:36, 0] += p.mouth_x
    pts[48:68, 0] += p.mouth_x
    return pts


def place_layout(p: FaceProportions, left_eye: np.ndarray, right_eye: np.ndarray) -> np.ndarray:
    """The 68 image points for proportions ``p`` with the eye centres at ``left_eye`` / ``right_eye``."""
    left, right = np.asarray(left_eye, np.float64), np.asarray(right_eye, np.float64)
    ex = right - left
    d = float(np.linalg.norm(ex))
    if d <= 0:
        raise ValueError("eye centres coincide")
    ex /= d
    ey = np.array([-ex[1], ex[0]])
    local = face_frame_points(p)
    return (left + right) / 2 + d * (local[:, :1] * ex + local[:, 1:] * ey)

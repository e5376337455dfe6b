"""Paint a synthetic mouth interior (dark cavity, upper teeth, a hint of lower teeth and the tongue)
inside the inner-lip polygon of an opened mouth."""

from __future__ import annotations

import cv2
import numpy as np

CAVITY_DEEP = np.array([38, 12, 16], np.float32)
CAVITY_EDGE = np.array([92, 34, 40], np.float32)
TEETH = np.array([226, 220, 208], np.float32)
TONGUE = np.array([150, 62, 72], np.float32)
ANIMAL_EDGE = np.array([58, 24, 28], np.float32)  # an animal's mouth reads as a dark slit
ANIMAL_TONGUE = np.array([190, 95, 105], np.float32)
UPPER = [60, 61, 62, 63, 64]
LOWER = [60, 67, 66, 65, 64]


def paint_mouth(image: np.ndarray, lips: np.ndarray, ex: np.ndarray, ey: np.ndarray, eye_distance: float,
                strength: float, teeth: bool = True, animal: bool = False) -> None:
    """Blend the interior into ``image`` (in place) inside the inner lips ``lips`` ((68, 2) or the
    8 inner points at 60-67 of a 68-point array). ``strength`` in [0, 1] fades it in for small gaps."""
    if strength <= 0.01:
        return
    inner = lips[60:68]
    h, w = image.shape[:2]
    x0, y0 = np.floor(inner.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(inner.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    poly = np.round((inner - [x0, y0]) * 8).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=3)
    alpha = mask.astype(np.float32) / 255.0
    soft = 0.012 * eye_distance  # feather the cut-out edge a little (more for fur than for lips)
    if animal:
        soft *= 2.5
    if soft > 0.6:
        alpha = cv2.GaussianBlur(alpha, (0, 0), soft)
    alpha *= float(min(strength, 1.0))
    if not alpha.any():
        return
    # face-frame coordinates of every pixel: u along the mouth, t down the face
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    centre = inner.mean(axis=0)
    u = (xx - centre[0]) * ex[0] + (yy - centre[1]) * ex[1]
    t = (xx - centre[0]) * ey[0] + (yy - centre[1]) * ey[1]
    rel = inner - centre
    pu, pt = rel @ ex, rel @ ey
    up_order, lo_order = np.array(UPPER) - 60, np.array(LOWER) - 60
    ui, li = np.argsort(pu[up_order]), np.argsort(pu[lo_order])
    top = np.interp(u, pu[up_order][ui], pt[up_order][ui])
    bottom = np.interp(u, pu[lo_order][li], pt[lo_order][li])
    gap = np.maximum(bottom - top, 1e-3)
    v = np.clip((t - top) / gap, 0, 1)  # 0 at the upper lip, 1 at the lower lip
    half = max(float(pu.max() - pu.min()) / 2, 1e-3)
    un = np.abs(u) / half
    depth = np.clip(1.0 - 2.2 * np.minimum(v, 1 - v) - 0.0, 0, 1)  # 1 near the lips, 0 in the middle
    edge = ANIMAL_EDGE if animal else CAVITY_EDGE
    color = CAVITY_DEEP + (edge - CAVITY_DEEP) * (0.5 * depth + 0.5 * un ** 2)[..., None]
    max_gap = float(gap.max())
    tongue = np.clip((v - 0.62) / 0.3, 0, 1) * np.clip(1.2 - un, 0, 1) * min(1.0, max_gap / (0.25 * eye_distance))
    color = color + ((ANIMAL_TONGUE if animal else TONGUE) - color) * (0.7 * tongue)[..., None]
    if teeth:
        teeth_v = min(0.45, 0.11 * eye_distance / max(max_gap, 1e-3))
        side_fade = np.clip((0.8 - un) / 0.2, 0, 1)
        upper = np.clip((teeth_v - v) / (0.25 * teeth_v), 0, 1) * side_fade
        shade = (0.78 + 0.22 * np.clip(1 - un, 0, 1))[..., None]
        color = color + (TEETH * shade - color) * upper[..., None]
        # lower teeth: a faint edge just behind the lower lip, only in the middle of the mouth
        lower_v = 0.35 * teeth_v
        lower = np.clip((v - (1 - lower_v)) / (0.5 * lower_v), 0, 1) * np.clip((0.5 - un) / 0.2, 0, 1) * 0.35
        color = color + (TEETH * 0.75 * shade - color) * lower[..., None]
    roi = image[y0:y1, x0:x1].astype(np.float32)
    a = alpha[..., None]
    image[y0:y1, x0:x1] = np.clip(roi * (1 - a) + color * a, 0, 255).astype(np.uint8)

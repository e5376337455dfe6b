"""The deformable face mesh: landmarks + fixed anchors, triangulated once, and the motion bases.

Each basis is a displacement of the mesh points at full strength (e.g. "jaw fully open"). The
renderer turns every basis into an exact piecewise-affine *backward* map (output pixel -> source
pixel) once at stream open; a frame is then a weighted sum of those maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay

from avatarstream.engines.face import FaceLandmarks, face_axes

RING_POINTS = 24


@dataclass(frozen=True)
class FaceMesh:
    points: np.ndarray  # (N, 2) rest positions in output pixels: 68 landmarks, forehead, ring, border
    triangles: np.ndarray  # (T, 3) indices
    ring_center: np.ndarray  # (2,) the static ring's ellipse: everything moving lies inside it
    ring_axes: np.ndarray  # (2,) half-axes along (ex, ey)
    ex: np.ndarray  # unit vector along the eye line
    ey: np.ndarray  # unit vector down the face
    eye_distance: float
    n_landmarks: int = 68


def _separate_lips(pts: np.ndarray, min_gap: float) -> np.ndarray:
    """Closed lips put upper and lower inner-lip points on top of each other; part them slightly."""
    pts = pts.copy()
    for up, lo in ((61, 67), (62, 66), (63, 65)):
        gap = pts[lo] - pts[up]
        if np.linalg.norm(gap) < min_gap:
            mid = (pts[lo] + pts[up]) / 2
            down = face_axes(pts)[1]
            pts[up], pts[lo] = mid - down * min_gap / 2, mid + down * min_gap / 2
    return pts


NOSE_GUARD = slice(74, 82)  # an animal mesh's still points around the nose


def nose_guard(lm: np.ndarray, d: float, ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """Eight still points boxing an animal's nose (bridge tip to nostrils, 0.1 eye distances of
    margin, the bottom kept above the upper inner lip): every triangle over the nose then has still
    corners only, so no speech motion resamples it."""
    nose = lm[27:36]
    centre = nose.mean(axis=0)
    u, v = (nose - centre) @ ex, (nose - centre) @ ey
    lip_v = float(((lm[[61, 62, 63]] - centre) @ ey).min())
    u0, u1 = u.min() - 0.1 * d, u.max() + 0.1 * d
    v0, v1 = v.min() - 0.05 * d, min(v.max() + 0.1 * d, lip_v - 0.03 * d)
    box = [(u0, v0), ((u0 + u1) / 2, v0), (u1, v0), (u1, (v0 + v1) / 2), (u1, v1), ((u0 + u1) / 2, v1), (u0, v1),
           (u0, (v0 + v1) / 2)]
    return np.array([centre + a * ex + b * ey for a, b in box])


def build_mesh(face: FaceLandmarks, size: int) -> FaceMesh:
    lm = _separate_lips(np.asarray(face.points, np.float64), 1.0)
    ex, ey = face_axes(lm)
    d = face.eye_distance
    # forehead: the brows lifted by 0.7 eye distances
    forehead = lm[[17, 19, 21, 22, 24, 26]] - 0.7 * d * ey
    core = np.vstack([lm, forehead, nose_guard(lm, d, ex, ey) if face.kind == "animal" else np.zeros((0, 2))])
    # the static ring: an ellipse in the face frame around everything that moves (+ room for the jaw)
    centre = core.mean(axis=0)
    rel = core - centre
    u, v = rel @ ex, rel @ ey
    cu = (u.max() + u.min()) / 2
    cv_ = (v.max() + v.min()) / 2 + 0.15 * d
    centre = centre + cu * ex + cv_ * ey
    ax = np.array([(u.max() - u.min()) / 2 * 1.15 + 0.45 * d, (v.max() - v.min()) / 2 * 1.12 + 0.5 * d])
    ang = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    ring = centre + np.outer(ax[0] * np.cos(ang), ex) + np.outer(ax[1] * np.sin(ang), ey)
    s = size - 1
    border = np.array([[0, 0], [s / 2, 0], [s, 0], [s, s / 2], [s, s], [s / 2, s], [0, s], [0, s / 2]], np.float64)
    pts = np.vstack([core, ring, border])
    tri = Delaunay(pts).simplices.astype(np.int32)
    return FaceMesh(pts, tri, centre, ax, ex, ey, d)


JAW_TRAVEL = {"human": 0.38, "animal": 0.22}  # lower-lip travel at jaw = 1, in eye distances
UNSURE_MOUTH_TRAVEL = 0.6  # share of that travel where the mouth's place is a guess (animate less)


def motion_bases(mesh: FaceMesh, kind: str = "human", mouth_found: bool = True) -> dict[str, np.ndarray]:
    """Full-strength point displacements (N, 2) for each facial motion (head motion is separate)."""
    n = len(mesh.points)
    ex, ey, d = mesh.ex, mesh.ey, mesh.eye_distance
    lm = mesh.points[:68]
    out = {}

    jaw = np.zeros((n, 2))
    open_ = JAW_TRAVEL.get(kind, 0.38) * d * (1.0 if mouth_found else UNSURE_MOUTH_TRAVEL)
    for i, w in {57: 1.0, 56: 0.95, 58: 0.95, 55: 0.8, 59: 0.8, 66: 1.0, 65: 0.92, 67: 0.92,
                 48: 0.45, 54: 0.45, 60: 0.45, 64: 0.45,
                 8: 0.9, 7: 0.82, 9: 0.82, 6: 0.62, 10: 0.62, 5: 0.38, 11: 0.38, 4: 0.14, 12: 0.14}.items():
        jaw[i] = w * open_ * ey
    if kind == "human":  # the upper lip lifts a little; an animal's upper lip hangs from its nose: still
        for i, w in {61: 0.1, 62: 0.12, 63: 0.1, 50: 0.05, 51: 0.06, 52: 0.05}.items():
            jaw[i] = -w * open_ * ey
    for i, sgn in ((48, 1), (60, 1), (54, -1), (64, -1)):  # corners draw in a little as the jaw drops
        jaw[i] += sgn * 0.06 * open_ * ex
    out["jaw"] = jaw

    width = np.zeros((n, 2))
    spread = 0.13 * d
    for i, w in {48: -1, 60: -1, 54: 1, 64: 1, 49: -0.55, 59: -0.55, 53: 0.55, 55: 0.55, 61: -0.45, 67: -0.45,
                 63: 0.45, 65: 0.45, 50: -0.2, 58: -0.2, 52: 0.2, 56: 0.2}.items():
        width[i] = w * spread * ex
    if kind != "human":  # an animal's upper lip hangs from its nose: only the corners and lower lip move
        width[[49, 50, 51, 52, 53, 61, 62, 63]] = 0.0
    out["width"] = width

    blink = np.zeros((n, 2))
    for up, lo in ((37, 41), (38, 40), (43, 47), (44, 46)):
        gap = lm[lo] - lm[up]
        blink[up] = 0.85 * gap
        blink[lo] = -0.12 * gap
    out["blink"] = blink

    brows = np.zeros((n, 2))
    if kind == "human":  # fur shows no brows, and an alpaca's nose sits at its eyes' level
        brows[17:27] = -0.09 * d * ey
        brows[[18, 19, 20, 23, 24, 25]] *= 1.2
    out["brows"] = brows

    # a slight turn (yaw), faked in 2-D: the features slide sideways over the face, the nose most
    yaw = np.zeros((n, 2))
    turn = 0.07 * d
    weights = {**{i: 0.55 for i in range(17, 27)}, **{i: 1.0 for i in range(27, 36)},
               **{i: 0.65 for i in range(36, 48)}, **{i: 0.75 for i in range(48, 68)},
               **{i: 0.2 for i in range(0, 17)}, **{i: 0.3 for i in range(68, 74)}}
    if kind == "animal":  # the guard slides with the nose
        weights.update({i: 1.0 for i in range(NOSE_GUARD.start, NOSE_GUARD.stop)})
    for i, w in weights.items():
        yaw[i] = w * turn * ex
    out["yaw"] = yaw
    return out

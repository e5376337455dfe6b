"""The lite engine's renderer: piecewise-affine warps of the framed portrait, precomputed as
dense backward maps at stream open; a frame is a weighted sum of those maps + one ``cv2.remap``
of the face region + the painted mouth interior.

Head motion (roll about the neck, shifts) is a small similarity transform weighted by a feathered
face mask that is exactly zero outside the static ring around the face, so the background is
untouched (pixels outside the ring are copied, not resampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarstream.engines.lite.face_mesh import JAW_TRAVEL, FaceMesh, build_mesh, motion_bases
from avatarstream.engines.face import mouth_opening
from avatarstream.engines.face.framing import FramedPortrait
from avatarstream.engines.lite.motion import FacePose
from avatarstream.engines.lite.mouth_interior import paint_mouth

JAW_LEVELS = (0.5, 1.0)
OPEN_AT_REST = 0.1  # inner-lip gap (eye distances) above which an animal's mouth is already open in the photo  # exact piecewise-affine maps at these openings, linear in between


def _backward_field(points: np.ndarray, triangles: np.ndarray, disp: np.ndarray,
                    roi: tuple[int, int, int, int]) -> np.ndarray:
    """(2, h, w) float32 backward displacement (source - output) inside ``roi`` for the mesh moved by ``disp``."""
    x0, y0, x1, y1 = roi
    field = np.zeros((2, y1 - y0, x1 - x0), np.float32)
    dst = points + disp
    moving = np.abs(disp).sum(axis=1) > 1e-9
    for tri in triangles:
        if not moving[tri].any():
            continue
        d, s = dst[tri], points[tri]
        bx0, by0 = np.floor(d.min(axis=0)).astype(int)
        bx1, by1 = np.ceil(d.max(axis=0)).astype(int) + 1
        bx0, by0, bx1, by1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
        if bx1 <= bx0 or by1 <= by0:
            continue
        m = np.array([[d[1, 0] - d[0, 0], d[2, 0] - d[0, 0]], [d[1, 1] - d[0, 1], d[2, 1] - d[0, 1]]])
        det = np.linalg.det(m)
        if abs(det) < 1e-9:
            continue
        inv = np.linalg.inv(m)
        yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
        px, py = xx - d[0, 0], yy - d[0, 1]
        b1 = inv[0, 0] * px + inv[0, 1] * py
        b2 = inv[1, 0] * px + inv[1, 1] * py
        inside = (b1 >= -1e-7) & (b2 >= -1e-7) & (b1 + b2 <= 1 + 1e-7)
        if not inside.any():
            continue
        sx = s[0, 0] + b1 * (s[1, 0] - s[0, 0]) + b2 * (s[2, 0] - s[0, 0])
        sy = s[0, 1] + b1 * (s[1, 1] - s[0, 1]) + b2 * (s[2, 1] - s[0, 1])
        fx = field[0, by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
        fy = field[1, by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
        fx[inside] = (sx - xx)[inside]
        fy[inside] = (sy - yy)[inside]
    return field


@dataclass(frozen=True)
class RenderStats:
    roi: tuple[int, int, int, int]
    fields: int
    triangles: int


class WarpRenderer:
    """Renders ``FacePose`` -> size x size RGB frames of one framed portrait."""

    def __init__(self, framed: FramedPortrait, teeth: bool = True) -> None:
        self.base = framed.image
        self.size = framed.image.shape[0]
        self.face = framed.face
        self.teeth = teeth
        self.mesh: FaceMesh = build_mesh(framed.face, self.size)
        m = self.mesh
        self.bases = motion_bases(m, framed.face.kind, framed.face.mouth_found)
        self.jaw_travel = JAW_TRAVEL.get(framed.face.kind, 0.38) * m.eye_distance
        # the painted interior: not where the mouth's place is a guess, nor over a mouth already
        # open in the photo (its own opening and tongue stretch with the jaw)
        animal_open = framed.face.kind == "animal" and mouth_opening(framed.face.points) >= OPEN_AT_REST
        self.paint_interior = framed.face.mouth_found and not animal_open
        # the face region: the static ring's bounding box
        ang = np.linspace(0, 2 * np.pi, 64)
        ring = m.ring_center + np.outer(m.ring_axes[0] * np.cos(ang), m.ex) + np.outer(m.ring_axes[1] * np.sin(ang), m.ey)
        x0, y0 = np.maximum(np.floor(ring.min(axis=0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(ring.max(axis=0)).astype(int) + 2, self.size)
        self.roi = (int(x0), int(y0), int(x1), int(y1))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        self._gx, self._gy = xx, yy
        self.head_mask = self._head_mask(xx, yy)
        # facial motions: exact piecewise-affine backward maps, each kept only on its own support
        self._fields: list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]] = []
        for level in JAW_LEVELS:
            self._fields.append(self._sparse(_backward_field(m.points, m.triangles, level * self.bases["jaw"], self.roi)))
        for name in ("width", "blink", "brows", "yaw"):
            self._fields.append(self._sparse(_backward_field(m.points, m.triangles, self.bases[name], self.roi)))
        # head motion (roll about the neck, shifts), weighted by the mask; for small motions the
        # backward displacement is minus the forward one
        self._pivot = m.ring_center + 0.85 * m.ring_axes[1] * m.ey
        self._mask_ry = np.ascontiguousarray(self.head_mask * (yy - self._pivot[1]), dtype=np.float32)
        self._mask_rx = np.ascontiguousarray(self.head_mask * (xx - self._pivot[0]), dtype=np.float32)
        self.stats = RenderStats(self.roi, len(self._fields) + 3, len(m.triangles))

    @staticmethod
    def _sparse(field: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        nz = np.abs(field).sum(axis=0) > 1e-6
        if not nz.any():
            return (slice(0, 0), slice(0, 0)), field[0, :0, :0], field[1, :0, :0]
        ys, xs = np.nonzero(nz.any(axis=1))[0], np.nonzero(nz.any(axis=0))[0]
        sl = (slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
        return sl, np.ascontiguousarray(field[0][sl]), np.ascontiguousarray(field[1][sl])

    def _head_mask(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        m = self.mesh
        rx, ry = xx - m.ring_center[0], yy - m.ring_center[1]
        u = (rx * m.ex[0] + ry * m.ex[1]) / m.ring_axes[0]
        v = (rx * m.ey[0] + ry * m.ey[1]) / m.ring_axes[1]
        r = np.sqrt(u * u + v * v)
        # 1 inside 70% of the ring, smooth fall-off to exactly 0 at 95%
        t = np.clip((0.95 - r) / 0.25, 0, 1)
        return (t * t * (3 - 2 * t)).astype(np.float32)

    def coefficients(self, pose: FacePose) -> np.ndarray:
        """Weights of the facial-motion maps: two jaw levels, width, blink, brows, yaw."""
        j = float(np.clip(pose.jaw, 0.0, 1.2))
        lo, hi = JAW_LEVELS
        if j <= lo:
            ja, jb = j / lo, 0.0
        else:
            f = (j - lo) / (hi - lo)
            ja, jb = 1.0 - f, f
        return np.array([ja, jb, pose.width, pose.blink, pose.brows, pose.yaw], np.float32)

    def landmarks(self, pose: FacePose) -> np.ndarray:
        """Where the 68 landmarks are drawn for ``pose`` (forward motion, head motion included)."""
        b = self.bases
        pts = (self.mesh.points + pose.jaw * b["jaw"] + pose.width * b["width"] + pose.blink * b["blink"]
               + pose.brows * b["brows"] + pose.yaw * b["yaw"])[:68]
        d = self.mesh.eye_distance
        rel = pts - self._pivot
        head = pose.roll * np.stack([-rel[:, 1], rel[:, 0]], 1) + d * np.array([pose.dx, pose.dy])
        return pts + head  # the mask is 1 over the inner face

    def maps(self, pose: FacePose) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps (source x, source y) over the face region for ``pose``."""
        d = self.mesh.eye_distance
        # cv2.scaleAdd: alpha * a + b, single pass, no BLAS threads
        map_x = cv2.scaleAdd(self._mask_ry, float(pose.roll), self._gx)
        map_x = cv2.scaleAdd(self.head_mask, float(-pose.dx * d), map_x)
        map_y = cv2.scaleAdd(self._mask_rx, float(-pose.roll), self._gy)
        map_y = cv2.scaleAdd(self.head_mask, float(-pose.dy * d), map_y)
        for c, (sl, fx, fy) in zip(self.coefficients(pose), self._fields):
            if abs(c) > 1e-4 and fx.size:
                map_x[sl] += c * fx
                map_y[sl] += c * fy
        return map_x, map_y

    def render(self, pose: FacePose) -> np.ndarray:
        x0, y0, x1, y1 = self.roi
        map_x, map_y = self.maps(pose)
        out = self.base.copy()
        out[y0:y1, x0:x1] = cv2.remap(self.base, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        gap_px = pose.jaw * self.jaw_travel
        strength = float(np.clip(gap_px / (0.06 * self.mesh.eye_distance), 0, 1))
        if strength > 0.01 and self.paint_interior:
            lips = self.landmarks(pose)
            # the lower inner-lip landmarks sit slightly above the lip's edge: cover the seam
            lips[[65, 66, 67]] += 0.035 * self.mesh.eye_distance * strength * self.mesh.ey
            paint_mouth(out, lips, self.mesh.ex, self.mesh.ey, self.mesh.eye_distance, strength,
                        teeth=self.teeth, animal=self.face.kind == "animal")
        return out

"""The 68-point face layout (iBUG 300-W / dlib order) and measurements on it.

Indices (0-based): jaw 0-16, brows 17-21 and 22-26, nose bridge 27-30, nostrils 31-35,
eyes 36-41 (image left) and 42-47 (image right), outer lips 48-59, inner lips 60-67.
Animal faces use the same layout (placed from the detected cat-face box), so every consumer
(renderer, tests, LivePortrait source preparation) reads one format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
EYE_LEFT = np.arange(36, 42)  # the eye on the image's left
EYE_RIGHT = np.arange(42, 48)
OUTER_LIPS = np.arange(48, 60)
INNER_LIPS = np.arange(60, 68)
UPPER_INNER_LIP = np.array([61, 62, 63])
LOWER_INNER_LIP = np.array([67, 66, 65])  # paired with UPPER_INNER_LIP column by column
MOUTH_CORNERS = np.array([48, 54])


@dataclass(frozen=True)
class FaceLandmarks:
    """One face in an image: 68 (x, y) points in pixels, its box and where it came from."""

    points: np.ndarray  # (68, 2) float64, image pixels
    box: tuple[float, float, float, float]  # x, y, width, height in pixels
    kind: str  # "human" or "animal"
    score: float  # detector confidence (dlib score or cascade vote count); higher is surer
    mouth_found: bool = True  # False: the mouth's place is a guess (an animal whose mouth was not located)

    def __post_init__(self) -> None:
        if self.points.shape != (68, 2):
            raise ValueError(f"expected (68, 2) landmark points, got {self.points.shape}")

    @property
    def eye_centers(self) -> tuple[np.ndarray, np.ndarray]:
        return eye_centers(self.points)

    @property
    def eye_distance(self) -> float:
        return eye_distance(self.points)

    @property
    def center(self) -> np.ndarray:
        """Midpoint between the eye centres and the mouth centre (the face's visual centre)."""
        left, right = eye_centers(self.points)
        return ((left + right) / 2 + self.points[OUTER_LIPS].mean(axis=0)) / 2

    def transformed(self, matrix: np.ndarray) -> "FaceLandmarks":
        """The same face after the 2x3 affine ``matrix`` (e.g. a crop + resize)."""
        m = np.asarray(matrix, np.float64)
        pts = self.points @ m[:, :2].T + m[:, 2]
        x, y, w, h = self.box
        corners = np.array([[x, y], [x + w, y + h]]) @ m[:, :2].T + m[:, 2]
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return FaceLandmarks(pts, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), self.kind, self.score,
                             self.mouth_found)


def eye_centers(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, np.float64)
    return pts[EYE_LEFT].mean(axis=0), pts[EYE_RIGHT].mean(axis=0)


def eye_distance(points: np.ndarray) -> float:
    left, right = eye_centers(points)
    return float(np.linalg.norm(right - left))


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap (mean of the three upper/lower inner-lip pairs) divided by the eye distance.

    About 0 for closed lips, 0.3-0.6 for a wide-open mouth; independent of image scale.
    """
    pts = np.asarray(points, np.float64)
    gap = np.linalg.norm(pts[LOWER_INNER_LIP] - pts[UPPER_INNER_LIP], axis=1).mean()
    return float(gap / max(eye_distance(pts), 1e-6))


def mouth_width(points: np.ndarray) -> float:
    """Mouth-corner distance divided by the eye distance."""
    pts = np.asarray(points, np.float64)
    return float(np.linalg.norm(pts[54] - pts[48]) / max(eye_distance(pts), 1e-6))


def eye_openness(points: np.ndarray) -> tuple[float, float]:
    """Eyelid gap / eye width for the image-left and image-right eyes (about 0.25-0.35 open, 0 shut)."""
    pts = np.asarray(points, np.float64)
    out = []
    for eye in (EYE_LEFT, EYE_RIGHT):
        e = pts[eye]
        gap = (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / 2
        out.append(float(gap / max(np.linalg.norm(e[3] - e[0]), 1e-6)))
    return out[0], out[1]


def face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the eye line (image-left to image-right eye) and down the face."""
    left, right = eye_centers(points)
    ex = right - left
    ex = ex / max(np.linalg.norm(ex), 1e-6)
    return ex, np.array([-ex[1], ex[0]])

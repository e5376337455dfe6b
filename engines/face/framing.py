"""Frame the portrait once per stream: a square around the face, resized to the output size.

Where the square runs past the picture (close-ups, faces near an edge) the missing part is filled
with the edge pixels, increasingly blurred, so it reads as an out-of-focus continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarstream.engines.face.landmarks import FaceLandmarks

# square side in eye distances: a human portrait shows head and shoulders, an animal its whole head
# with the ears (a dog's or cat's ear tips stand up to ~2.1 eye distances above the eyes, its cheeks
# ~1.7 to each side) and a margin of background
SIDE_IN_EYE_DISTANCES = {"human": 5.6, "animal": 5.0}
MIN_SIDE_IN_EYE_DISTANCES = {"human": 3.6, "animal": 2.6}
ANIMAL_TOP_ABOVE_EYES = 2.4  # the animal square's top edge, eye distances above the eyes' midpoint


@dataclass(frozen=True)
class FramedPortrait:
    image: np.ndarray  # size x size x 3 uint8 RGB
    face: FaceLandmarks  # landmarks in the framed image's pixels
    matrix: np.ndarray  # 2x3 affine, source picture -> framed image


def square_around_face(shape: tuple[int, int], face: FaceLandmarks) -> tuple[float, float, float]:
    """(cx, cy, side) of the crop square in source pixels."""
    h, w = shape
    d = face.eye_distance
    want = SIDE_IN_EYE_DISTANCES.get(face.kind, 5.6) * d
    need = MIN_SIDE_IN_EYE_DISTANCES.get(face.kind, 3.6) * d
    side = max(min(want, min(h, w)), need)
    cx, cy = face.center
    if face.kind == "human":
        cy += 0.25 * d  # a little more chin/neck than forehead
    else:  # room for the ears: the top edge well above the eyes
        left, right = face.eye_centers
        cy = float((left[1] + right[1]) / 2) - ANIMAL_TOP_ABOVE_EYES * d + side / 2
    # slide the square inside the picture where it fits
    cx = float(np.clip(cx, side / 2, w - side / 2)) if side <= w else w / 2
    cy = float(np.clip(cy, side / 2, h - side / 2)) if side <= h else h / 2
    if side > w:
        cx = float(np.clip(face.center[0], w - side / 2, side / 2))
    if side > h:
        cy = float(np.clip(face.center[1], h - side / 2, side / 2))
    return float(cx), float(cy), float(side)


def frame_portrait(image_rgb: np.ndarray, face: FaceLandmarks, size: int) -> FramedPortrait:
    h, w = image_rgb.shape[:2]
    cx, cy, side = square_around_face((h, w), face)
    s = size / side
    matrix = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    out = cv2.warpAffine(image_rgb, matrix, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), matrix, (size, size), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if (inside < 255).any():
        dist = cv2.distanceTransform((inside < 255).astype(np.uint8), cv2.DIST_L2, 5)
        alpha = np.clip(dist / (0.12 * size), 0, 1)[..., None]
        alpha = alpha * alpha * (3 - 2 * alpha)
        blurred = cv2.GaussianBlur(out, (0, 0), 0.05 * size)
        out = (out * (1 - alpha) + blurred * alpha).astype(np.uint8)
    return FramedPortrait(np.ascontiguousarray(out), face.transformed(matrix), matrix)

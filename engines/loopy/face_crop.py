"""Talking-head framing for Loopy: a square crop centred on the face, the face box about half
the crop side (the framing of the training clips). Used for the portrait at render time and
for preparing training clips; falls back to a centre crop when no face is found."""

from __future__ import annotations

import cv2
import numpy as np

from avatarstream.engines.base import NoFaceError

CROP_SCALE = 2.0  # crop side / larger side of the detected face box


def face_square(image: np.ndarray, kind: str = "auto", scale: float = CROP_SCALE) -> tuple[int, int, int] | None:
    """``(x0, y0, side)`` of a face-centred square inside ``image``, or None without a face."""
    from avatarstream.engines.face import detect_face

    try:
        face = detect_face(image, kind=kind)
    except NoFaceError:
        return None
    return square_around(image.shape[:2], face.center, max(face.box[2], face.box[3]) * scale)


def square_around(hw: tuple[int, int], centre, side: float) -> tuple[int, int, int]:
    """The square of ``side`` around ``centre``, shrunk and shifted to lie inside an ``hw`` image."""
    h, w = hw
    side = int(round(min(side, h, w)))
    x0 = int(round(np.clip(centre[0] - side / 2, 0, w - side)))
    y0 = int(round(np.clip(centre[1] - side / 2, 0, h - side)))
    return x0, y0, side


def crop_square(image: np.ndarray, square: tuple[int, int, int] | None, size: int) -> np.ndarray:
    """Crop ``square`` (None: the centre square) and resize to ``size`` x ``size``."""
    h, w = image.shape[:2]
    if square is None:
        s = min(h, w)
        square = ((w - s) // 2, (h - s) // 2, s)
    x0, y0, s = square
    crop = image[y0: y0 + s, x0: x0 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp))

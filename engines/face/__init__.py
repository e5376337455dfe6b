"""Face localisation and 68-point landmarks for portraits and rendered frames (CPU, no torch).

``detect_face(image_rgb, kind="auto")`` finds the best human face (dlib) and, failing that, the
best cat face (OpenCV cascades + proportional layout); ``mouth_opening(points)`` measures the
inner-lip gap in eye distances.
"""

from __future__ import annotations

import numpy as np

from avatarstream.engines.base import EngineError, NoFaceError
from avatarstream.engines.face.landmarks import (FaceLandmarks, eye_centers, eye_distance, eye_openness, face_axes,
                                    mouth_opening, mouth_width)

KINDS = ("auto", "human", "animal")
# "auto": a human face whose dlib score is below this loses to a cat-face cascade hit (a dog's face
# can pass dlib's detector at about 0.01; real faces score 0.3 and more on the project's portraits)
WEAK_HUMAN_SCORE = 0.1


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise EngineError(f"expected an H x W x 3 uint8 RGB image, got shape {img.shape} dtype {img.dtype}")
    return np.ascontiguousarray(img)


def detect_face(image_rgb: np.ndarray, kind: str = "auto") -> FaceLandmarks:
    """The most prominent face: ``kind`` "human", "animal" or "auto" (human first, then cat).

    Raises ``NoFaceError`` when none is found.
    """
    if kind not in KINDS:
        raise EngineError(f"unknown face kind {kind!r}; choose one of {', '.join(KINDS)}")
    img = _check_image(image_rgb)
    weak_human = None
    if kind in ("auto", "human"):
        from avatarstream.engines.face.human import detect_human

        face = detect_human(img)
        if face is not None and (kind == "human" or face.score >= WEAK_HUMAN_SCORE):
            return face
        weak_human = face
    if kind in ("auto", "animal"):
        from avatarstream.engines.face.animal import detect_cat

        cat = detect_cat(img)
        if cat is not None:
            return cat
        if kind == "auto" and weak_human is not None:
            return weak_human
    what = {"auto": "human or cat", "human": "human", "animal": "cat"}[kind]
    raise NoFaceError(f"no {what} face found in the image; use a front-facing portrait where the face "
                      f"is clearly visible (at least about 40 pixels wide)")


def landmarks_in_box(image_rgb: np.ndarray, box, kind: str = "human") -> FaceLandmarks:
    """Landmarks for a face whose box is already known (tracking across video frames)."""
    img = _check_image(image_rgb)
    if kind == "human":
        from avatarstream.engines.face.human import human_landmarks_in_box

        return human_landmarks_in_box(img, box)
    from avatarstream.engines.face.animal import cat_landmarks_in_box

    return cat_landmarks_in_box(img, box)


__all__ = ["FaceLandmarks", "NoFaceError", "detect_face", "landmarks_in_box", "mouth_opening", "mouth_width",
           "eye_centers", "eye_distance", "eye_openness", "face_axes"]

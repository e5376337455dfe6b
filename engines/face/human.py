"""Human faces: dlib's HOG frontal detector + the 68-point shape predictor that ships in the
``face_recognition_models`` package (no download)."""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np

from avatarstream.engines.base import EngineError
from avatarstream.engines.face.landmarks import FaceLandmarks

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
DETECT_MAX_SIDE = 800  # larger images are downscaled for the detector (landmarks use full resolution)
_lock = threading.Lock()  # dlib objects are shared by all sessions' worker threads


def predictor_path() -> Path:
    """Locate the 68-point model inside ``face_recognition_models`` without importing it
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools dropped)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the face_recognition_models package is not installed (pip install face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise EngineError(f"face landmark model missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


def _rectangle(box):
    import dlib

    x, y, w, h = box
    return dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))


def detect_human_boxes(image_rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
    """Face boxes (x, y, w, h) with dlib scores, best first."""
    import cv2

    detector, _ = _models()
    h, w = image_rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = image_rgb if scale == 1.0 else cv2.resize(image_rgb, (round(w * scale), round(h * scale)),
                                                      interpolation=cv2.INTER_AREA)
    gray = np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    with _lock:
        rects, scores, _ = detector.run(gray, 0, 0.0)  # faces >= ~80 px
        # small pictures: look again at 2x (faces >= ~40 px) and, for thumbnails, at 4x
        for upsample, below in ((1, 500), (2, 250)):
            if rects or max(small.shape[:2]) >= below:
                break
            rects, scores, _ = detector.run(gray, upsample, 0.0)
    found = [((r.left() / scale, r.top() / scale, r.width() / scale, r.height() / scale), float(s))
             for r, s in zip(rects, scores)]
    return sorted(found, key=lambda f: (f[1], f[0][2]), reverse=True)


def human_landmarks_in_box(image_rgb: np.ndarray, box, score: float = 0.0) -> FaceLandmarks:
    """Run the 68-point predictor inside a known face box (cheap: about 2 ms)."""
    _, predictor = _models()
    img = np.ascontiguousarray(image_rgb)
    with _lock:
        shape = predictor(img, _rectangle(box))
    pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    return FaceLandmarks(pts, tuple(float(v) for v in box), "human", float(score))


def detect_human(image_rgb: np.ndarray) -> FaceLandmarks | None:
    boxes = detect_human_boxes(image_rgb)
    if not boxes:
        return None
    box, score = boxes[0]
    return human_landmarks_in_box(image_rgb, box, score)

"""Face localisation and landmarks on the demo portraits (real dlib model, real OpenCV cascades)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatarstream.engines.base import EngineError, NoFaceError
from avatarstream.engines.face import detect_face, eye_distance, landmarks_in_box, mouth_opening
from avatarstream.engines.face.human import detect_human_boxes


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_human_demo_picks_the_real_face(human_portrait):
    img = rgb(human_portrait)
    boxes = detect_human_boxes(img)
    assert len(boxes) >= 2, "the astronaut photo has a second, weak detection on the suit"
    face = detect_face(img)
    assert face.kind == "human" and face.box == boxes[0][0]
    assert face.score == max(s for _, s in boxes)
    x, y, w, h = face.box
    left, right = face.eye_centers
    for eye in (left, right):  # eyes in the upper half of the face box, mouth in the lower
        assert x < eye[0] < x + w and y < eye[1] < y + h / 2
    mouth = face.points[48:68].mean(axis=0)
    assert y + h / 2 < mouth[1] < y + h * 1.1
    assert 0.0 <= mouth_opening(face.points) < 0.3


def test_cat_demo_found_as_animal_with_eyes_and_mouth_in_place(cat_portrait):
    img = rgb(cat_portrait)
    face = detect_face(img, "animal")
    assert face.kind == "animal"
    x, y, w, h = face.box
    assert w > 0.5 * img.shape[0], "the close-up cat's face fills most of the picture"
    left, right = face.eye_centers
    # the pupils of skimage's Chelsea are at about (172, 118) and (314, 135)
    assert np.linalg.norm(left - (172, 118)) < 25 and np.linalg.norm(right - (314, 135)) < 25
    mouth = face.points[60:68].mean(axis=0)
    assert 230 < mouth[0] < 290 and 250 < mouth[1] < 300  # just under the nose


def test_auto_falls_back_to_the_cat(cat_portrait):
    assert detect_face(rgb(cat_portrait), "auto").kind == "animal"


@pytest.mark.parametrize("name", ["flat", "sky"])
def test_no_face_raises_a_clear_error(name):
    h = w = 240
    if name == "flat":
        img = np.full((h, w, 3), 128, np.uint8)
    else:
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = np.linspace(250, 150, h)[:, None]
        img[..., 1] = np.linspace(200, 120, h)[:, None]
        img[..., 2] = 90
    with pytest.raises(NoFaceError, match="no human or cat face"):
        detect_face(img)


def test_bad_arguments():
    with pytest.raises(EngineError, match="kind"):
        detect_face(np.zeros((100, 100, 3), np.uint8), kind="dog")
    with pytest.raises(EngineError, match="RGB"):
        detect_face(np.zeros((100, 100), np.uint8))


def test_mouth_opening_is_scale_free_and_tracks_in_box(human_portrait):
    img = rgb(human_portrait)
    face = detect_face(img)
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    face2 = detect_face(big)
    assert eye_distance(face2.points) == pytest.approx(2 * eye_distance(face.points), rel=0.1)
    assert mouth_opening(face2.points) == pytest.approx(mouth_opening(face.points), abs=0.04)
    tracked = landmarks_in_box(img, face.box)
    assert np.abs(tracked.points - face.points).max() < 1e-6
    opened = face.points.copy()
    opened[[65, 66, 67]] += [0, 0.3 * eye_distance(face.points)]
    assert mouth_opening(opened) == pytest.approx(mouth_opening(face.points) + 0.3, abs=0.02)

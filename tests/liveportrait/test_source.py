"""Source crop from 68-point landmarks, the soft mask and paste-back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait import source


def _face_points(cx=200.0, cy=220.0, eye_dist=60.0, angle_deg=0.0) -> np.ndarray:
    """A synthetic upright 68-point face, optionally rolled by ``angle_deg``."""
    rng = np.random.default_rng(0)
    pts = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    pts[0:17] = np.stack([t * 1.1 * eye_dist, 0.3 * eye_dist + (1 - t ** 2) * 1.2 * eye_dist], -1)  # jaw
    pts[17:27] = np.stack([np.linspace(-0.9, 0.9, 10) * eye_dist, np.full(10, -0.5 * eye_dist)], -1)
    pts[27:36] = rng.normal(0, 2, (9, 2)) + [0, 0.4 * eye_dist]
    for i, ex in ((36, -0.5), (42, 0.5)):
        a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        pts[i:i + 6] = np.stack([ex * eye_dist + 0.15 * eye_dist * np.cos(a), 0.05 * eye_dist * np.sin(a)], -1)
    a = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    pts[48:68] = np.stack([0.4 * eye_dist * np.cos(a), 1.0 * eye_dist + 0.1 * eye_dist * np.sin(a)], -1)
    pts[48], pts[54] = [-0.4 * eye_dist, eye_dist], [0.4 * eye_dist, eye_dist]
    r = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return pts @ rot.T + [cx, cy]


def _apply(m, p):
    return np.asarray(p) @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("angle", [0.0, 25.0])
def test_crop_puts_face_upright_and_centred(angle):
    pts = _face_points(angle_deg=angle)
    m = source.crop_transform(pts)
    eyes = _apply(m, [pts[36:42].mean(0), pts[42:48].mean(0)])
    mouth = _apply(m, pts[[48, 54]].mean(0))
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6  # roll removed: eyes level
    assert eyes[0, 0] < eyes[1, 0] and mouth[1] > eyes[:, 1].mean()  # not mirrored, mouth below eyes
    assert abs((eyes[:, 0].mean()) - 256) < 1e-6  # centred horizontally on the face axis
    crop_pts = _apply(m, pts)
    side = (crop_pts.max(0) - crop_pts.min(0)).max()
    assert side == pytest.approx(512 / 2.3, rel=1e-6)  # the landmarks' extent is 1/scale of the crop


def test_crop_source_and_paste_back_round_trip():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:400, 0:380]
    image = np.stack([(xx * 0.6) % 256, (yy * 0.6) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
    src = source.crop_source(image, _face_points(cx=190, cy=180, eye_dist=40, angle_deg=10))
    assert src.crop.shape == (512, 512, 3) and src.network_input.shape == (256, 256, 3)
    np.testing.assert_allclose(src.crop_to_image @ np.vstack([src.image_to_crop, [0, 0, 1]]), np.eye(3)[:2], atol=1e-9)
    pasted = source.paste_back(src.crop, src)
    assert pasted.shape == image.shape and pasted.dtype == np.uint8
    inner = _apply(src.crop_to_image, [256, 256]).round().astype(int)
    x, y = inner
    assert np.abs(pasted[y - 20:y + 20, x - 20:x + 20].astype(int) - image[y - 20:y + 20, x - 20:x + 20]).max() <= 3
    black = source.paste_back(np.zeros_like(src.crop), src)
    assert black[y, x].max() == 0 and np.array_equal(black[0, 0], image[0, 0])  # outside the crop: untouched
    _ = rng


def test_paste_back_of_an_unchanged_render_is_the_picture_where_the_crop_runs_past_it():
    yy, xx = np.mgrid[0:300, 0:260]
    rng = np.random.default_rng(2)
    image = np.stack([(xx * 1.7) % 256, (yy * 2.3) % 256, (xx * yy) % 251], -1).astype(np.uint8)
    image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))  # detail a double resampling loses
    src = source.crop_source(image, _face_points(cx=60, cy=70, eye_dist=45, angle_deg=-15))  # near the corner
    inside = cv2.warpAffine(np.full(image.shape[:2], 255, np.uint8), src.image_to_crop, (512, 512),
                            flags=cv2.INTER_NEAREST, borderValue=0)
    assert (inside == 0).mean() > 0.3  # the crop is padded on a third of its area
    exact = source.PasteBack(src)(src.crop)
    assert np.abs(exact.astype(int) - image).max() <= 1
    reference = source.PasteBack(src, keep_detail=False)(src.crop)
    np.testing.assert_array_equal(reference, source.paste_back(src.crop, src))
    assert np.abs(reference.astype(int) - image).max() > 50  # the reference blends the padding's black in
    with pytest.raises(EngineError, match="uint8 render"):
        source.PasteBack(src)(src.crop[:256])


def test_soft_mask_and_whole_image():
    mask = source.soft_mask(512)
    assert mask.shape == (512, 512) and mask[256, 256] == 1.0 and mask[0, 0] == 0.0 and mask[0, 256] == 0.0
    assert np.all(np.diff(mask[256, :256]) >= 0)  # ramps up monotonically from the border
    whole = source.whole_image_source(np.zeros((300, 450, 3), np.uint8))
    assert whole.network_input.shape == (256, 256, 3)
    assert _apply(whole.crop_to_image, [512, 512]).tolist() == pytest.approx([450, 300])


def test_bad_landmarks():
    with pytest.raises(EngineError, match="68"):
        source.crop_transform(np.zeros((5, 2)))
    with pytest.raises(EngineError, match="degenerate"):
        source.crop_transform(np.zeros((68, 2)))


def _pick(frame: np.ndarray, indices: range, key) -> int:
    """The index in ``indices`` whose face-frame point minimises ``key(x, y)``."""
    return min(indices, key=lambda i: key(*frame[i]))


def test_animal_crop_takes_the_nine_xpose_points_from_the_intended_68_indices():
    """On the synthetic cat layout of ``engines.face``: each X-Pose name maps to the landmark that plays that part
    (face frame: x towards the image-right eye, y down), and the crop depends on exactly those nine points."""
    from avatarstream.engines.face.layout import CAT, face_frame_points, place_layout

    frame = face_frame_points(CAT)
    mouth, middle = range(48, 60), [i for i in range(48, 60) if abs(frame[i, 0]) < 1e-9]
    expected = {
        "right eye right": _pick(frame, range(36, 42), lambda x, y: x),  # image-left eye: outer = leftmost
        "right eye left": _pick(frame, range(36, 42), lambda x, y: -x),
        "left eye right": _pick(frame, range(42, 48), lambda x, y: x),  # image-right eye: inner = leftmost
        "left eye left": _pick(frame, range(42, 48), lambda x, y: -x),
        "nose tip": _pick(frame, range(27, 31), lambda x, y: -y),  # lowest point of the nose bridge
        "lip right": _pick(frame, mouth, lambda x, y: x),
        "lip left": _pick(frame, mouth, lambda x, y: -x),
        "upper lip": _pick(frame, middle, lambda x, y: y),  # outer contour, on the midline
        "lower lip": _pick(frame, middle, lambda x, y: -y),
    }
    assert dict(source.ANIMAL_NINE) == expected
    assert [name for name, _ in source.ANIMAL_NINE] == list(expected)  # X-Pose's order
    assert source.ANIMAL_NINE_FROM_68 == list(expected.values())

    pts = place_layout(CAT, np.array([210.0, 260.0]), np.array([330.0, 240.0]))  # a rolled cat face
    named = {name: pts[i] for name, i in source.ANIMAL_NINE}
    eyes = [named[n] for n in ("right eye right", "right eye left", "left eye right", "left eye left")]
    want = source.crop_transform_from(np.stack(list(named.values())), (eyes[0] + eyes[1]) / 2, (eyes[2] + eyes[3]) / 2,
                                      (named["lip right"] + named["lip left"]) / 2)
    got = source.crop_transform_animal(pts)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    rng = np.random.default_rng(0)
    others = [i for i in range(68) if i not in source.ANIMAL_NINE_FROM_68]
    moved = pts.copy()
    moved[others] += rng.normal(0, 40, (len(others), 2))
    np.testing.assert_allclose(source.crop_transform_animal(moved), got, rtol=0, atol=1e-12)
    for i in source.ANIMAL_NINE_FROM_68:  # each of the nine, moved out of the box, moves the crop
        one = pts.copy()
        one[i] += (150.0, 250.0)
        assert np.abs(source.crop_transform_animal(one) - got).max() > 1e-3, i

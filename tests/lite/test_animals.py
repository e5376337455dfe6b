"""Animal portraits (copies in tests/lite/data, see its README): the lite engine finds each mouth
where the photo has it, moves it with real speech, keeps the nose still and the ears in the crop.

The measurements are the portraits bench's (``avatar bench --suite portraits``), re-detected on the
rendered frames against hand-labelled positions, not read from the engine's motion values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarstream.bench.portraits import LABELS, measure
from avatarstream.engines.face import detect_face

DATA = Path(__file__).parent / "data"
ANIMALS = ["s23.jpg", "s32.jpg", "s36.jpg"]


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", ANIMALS)
def test_the_mouth_is_found_where_the_photo_has_it(name):
    face = detect_face(rgb(DATA / name))
    assert face.kind == "animal" and face.mouth_found
    d = face.eye_distance
    label = LABELS[name]
    mouth = face.points[60:68].mean(axis=0)
    assert np.linalg.norm(mouth - label.mouth) < 0.15 * d, (mouth, label.mouth)
    # the nose points span the labelled nose, and the mouth is below it, never on it
    assert face.points[27][1] - 0.1 * d <= label.nose[1] <= face.points[31:36, 1].max()
    assert abs(face.points[30][0] - label.nose[0]) < 0.2 * d
    assert face.points[62][1] > label.nose[1] + 0.15 * d


def test_an_open_mouth_is_kept_open_and_not_painted_over(lite_engine):
    from avatarstream.engines.portraits import load_portrait

    framed, renderer = lite_engine.prepare(load_portrait(DATA / "s32.jpg"), 256)
    gap = np.linalg.norm(framed.face.points[66] - framed.face.points[62]) / framed.face.eye_distance
    assert gap > 0.3  # the shiba's mouth is wide open in the photo
    assert not renderer.paint_interior


@pytest.mark.parametrize("name", ["s32.jpg", "s36.jpg"])
def test_speech_moves_the_real_mouth_and_not_the_nose(name, lite_engine, speech_audio):
    result, _ = measure(DATA / name, lite_engine, speech_audio[:int(4.5 * 16000)])
    assert result["mouth_region_from"] == "label"
    assert result["mouth_opening_max_eye_distances"] > 0.1
    assert result["mouth_r_at_lag_le_1"] >= 0.5, result["mouth_r_by_lag"]
    assert result["nose_color_change_max"] < 0.5 and result["nose_shift_max_px"] < 0.2
    assert result["ears_in_crop"] == result["ears_in_source"] == 2


def test_a_mouth_not_located_is_animated_less_and_said_once(cat, caplog):
    from avatarstream.engines.lite.engine import LiteEngine
    from avatarstream.engines.lite.face_mesh import UNSURE_MOUTH_TRAVEL

    engine = LiteEngine(seed=1)
    with caplog.at_level(logging.WARNING, logger="avatarstream.engines.lite.engine"):
        framed, renderer = engine.prepare(cat, 256)
        engine.open_stream(cat, size=256)
        engine.open_stream(cat, size=256)
    assert not framed.face.mouth_found  # Chelsea's mouth is hidden at the picture's bottom edge
    assert not renderer.paint_interior
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "no mouth located" in caplog.records[0].message
    sure = 0.22 * renderer.mesh.eye_distance
    assert abs(np.linalg.norm(renderer.bases["jaw"][57]) - UNSURE_MOUTH_TRAVEL * sure) < 1e-6


def test_the_crop_keeps_the_ears(lite_engine):
    from avatarstream.engines.portraits import load_portrait

    for name in ANIMALS:
        framed, _ = lite_engine.prepare(load_portrait(DATA / name), 256)
        m = framed.matrix
        for ear in LABELS[name].ears:
            x, y = np.asarray(ear) @ m[:, :2].T + m[:, 2]
            assert 0 <= x < 256 and 0 <= y < 256, (name, ear, (x, y))


def test_portraits_bench_writes_json_and_contact_sheet(tmp_path, monkeypatch):
    import json

    from avatarstream.cli import main

    monkeypatch.setenv("AVATARSTREAM_PORTRAITS", str(DATA))
    assert main(["bench", "--suite", "portraits", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "portraits.json").read_text())
    rows = {r["portrait"]: r for r in report["result"]["portraits"]}
    assert list(rows) == ["astronaut.jpg", "cat.jpg", "s23.jpg"]  # --quick: the first three
    assert rows["astronaut.jpg"]["kind"] == "human" and rows["astronaut.jpg"]["mouth_region_from"] == "detection"
    assert rows["s23.jpg"]["mouth_found"] and rows["s23.jpg"]["ears_in_crop"] == 2
    sheet = cv2.imread(str(tmp_path / "portraits.png"))
    assert sheet is not None and sheet.shape[0] > 3 * 192

"""``Portrait.face``: a face found by the caller (e.g. on a machine with dlib) is used as is, and an engine given
one never runs its own detector; the joyvasa engine opens on ``write_random_weights``' directory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avatarstream.engines.base import EngineError, Portrait
from avatarstream.engines.face import detect_face
from avatarstream.engines.portraits import load_portrait


def _no_detector(*_args, **_kwargs):
    raise AssertionError("the engine ran its own face detector although the portrait carried the face")


def test_a_portraits_face_is_checked():
    portrait = load_portrait("human")
    face = detect_face(portrait.image, "human")
    assert Portrait(portrait.image, face=face).face is face
    with pytest.raises(EngineError, match="FaceLandmarks"):
        Portrait(portrait.image, face=object())  # type: ignore[arg-type]
    far = dataclasses.replace(face, points=face.points + 5000.0)
    with pytest.raises(EngineError, match="far outside the 512x512 image"):
        Portrait(portrait.image, face=far)


def test_lite_uses_the_given_face(monkeypatch):
    from avatarstream.engines.lite import engine as lite

    portrait = load_portrait("human")
    face = detect_face(portrait.image, "human")
    detected = lite.LiteEngine(seed=1).prepare(portrait, 256)
    monkeypatch.setattr(lite, "detect_face", _no_detector)
    given = lite.LiteEngine(seed=1).prepare(dataclasses.replace(portrait, face=face), 256)
    assert np.array_equal(given[0].image, detected[0].image)


def test_joyvasa_uses_the_given_face(monkeypatch, tmp_path):
    pytest.importorskip("torch", reason="the joyvasa engine needs torch (pip install 'avatarstream[neural]')")
    pytest.importorskip("transformers", reason="the joyvasa engine needs transformers (pip install 'avatarstream[neural]')")
    from avatarstream.engines.joyvasa import avatar_engine
    from avatarstream.engines.joyvasa.random_weights import write_random_weights
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    engine = avatar_engine.JoyVasaEngine(weights=write_random_weights(tmp_path, small=True), device="cpu",
                                         liveportrait_config=LivePortraitConfig.small())
    try:
        portrait = load_portrait("human")
        preset = engine.live_preset
        detected = engine.prepare_portrait(portrait, 512, preset)
        monkeypatch.setattr(avatar_engine, "detect_face", _no_detector)
        face = detect_face(portrait.image, "human")
        given = engine.prepare_portrait(dataclasses.replace(portrait, face=face), 512, preset)
        assert np.array_equal(given.source.network_input, detected.source.network_input)
        assert np.array_equal(given.source.image, detected.source.image)
        # a picture above the preset's size limit is resized before cropping: the given face is scaled with it
        big = np.ascontiguousarray(np.kron(portrait.image, np.ones((3, 3, 1), np.uint8)))
        scaled = dataclasses.replace(face, points=face.points * 3 + 1)
        out = engine.prepare_portrait(Portrait(big, face=scaled), 512, preset)
        assert out.source.network_input.shape == (256, 256, 3)
        assert np.abs(out.source.network_input.astype(int) - given.source.network_input.astype(int)).mean() < 3  # 0.55 measured; a face left unscaled gives ~50
    finally:
        engine.close()

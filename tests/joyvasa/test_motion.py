"""Motion layout, template (de)normalisation, EMA and the keypoint driver (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.motion import (LIP_KEYPOINTS, KeypointDriver, MotionFrame, MotionTemplate, PoseSmoother,
                                    SourceMotion, rotation_matrix)


def test_motion_frame_layout_round_trip_and_is_frozen():
    v = np.arange(70, dtype=np.float32)
    f = MotionFrame.from_vector(4, v)
    assert f.exp.shape == (21, 3) and f.exp[0].tolist() == [0, 1, 2]
    assert (f.scale, *f.t.tolist(), f.pitch, f.yaw, f.roll) == (63, 64, 65, 66, 67, 68, 69)
    np.testing.assert_array_equal(f.vector(), v)
    with pytest.raises(ValueError):
        f.exp[0, 0] = 1.0
    with pytest.raises(ValueError, match="exp must have 63"):
        MotionFrame(0, np.zeros(62), 0, 0, 0, np.zeros(3), 1)


def test_rotation_matches_liveportrait_convention():
    r = rotation_matrix(10, 20, 30)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    x, y, z = np.deg2rad([10, 20, 30])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    np.testing.assert_allclose(r, (rz @ ry @ rx).T, atol=1e-6)


def test_template_pickle_round_trip_and_inverse(tmp_path):
    t = MotionTemplate.synthetic()
    t.save(tmp_path / "motion_template.pkl")
    d = MotionTemplate.to_dict(t)
    assert d["mean_exp"].size == 63 and d["std_R"].size == 9 and d["max_eyes"].size == 2
    loaded = MotionTemplate.load(tmp_path / "motion_template.pkl")
    v = np.random.default_rng(0).normal(size=(5, 70)).astype(np.float32)
    np.testing.assert_allclose(loaded.normalize(loaded.denormalize(v)), v, atol=1e-4)
    np.testing.assert_allclose(loaded.denormalize(v)[:, 63], v[:, 63] * 1.0 + 1.2, atol=1e-6)  # min-max scale
    with pytest.raises(EngineError, match="not found"):
        MotionTemplate.load(tmp_path / "nope.pkl")
    with pytest.raises(EngineError, match="lacks keys"):
        MotionTemplate.from_dict({"mean_exp": np.zeros(63)})


def test_pose_ema_formula_and_streaming_equivalence():
    x = np.random.default_rng(1).normal(size=(30, 70)).astype(np.float32)
    whole = PoseSmoother()(x)
    s = PoseSmoother()
    parts = np.concatenate([s(x[:7]), s(x[7:19]), s(x[19:])])
    np.testing.assert_allclose(parts, whole, rtol=1e-6)
    np.testing.assert_array_equal(whole[:, :63], x[:, :63])  # exp is not smoothed
    np.testing.assert_allclose(whole[1, 68], 0.01 * x[1, 68] + 0.99 * x[0, 68], rtol=1e-6)


def _source():
    rng = np.random.default_rng(2)
    return SourceMotion(kp=rng.normal(size=(21, 3)) * 0.3, exp=rng.normal(size=(21, 3)) * 0.02, pitch=3, yaw=-5,
                        roll=2, t=[0.01, -0.02, 0.5], scale=1.4)


def test_keypoint_driver_relative_motion_and_modes():
    src = _source()
    rng = np.random.default_rng(3)
    ref = MotionFrame(-2, rng.normal(size=(21, 3)) * 0.02, 1, 2, 3, [0.0, 0.0, 0.1], 1.5)
    animal = KeypointDriver(src, ref, "animal", multiplier=1.1)
    np.testing.assert_allclose(animal(ref), src.keypoints(), atol=1e-5)  # the reference frame is the source pose
    human = KeypointDriver(src, ref, "human", multiplier=1.0)
    x_ref = human(ref)
    others = [i for i in range(21) if i not in LIP_KEYPOINTS]
    np.testing.assert_allclose(x_ref[others], src.keypoints()[others], atol=1e-5)
    # a pure head turn rotates the source keypoints; scale doubles in human mode only
    turned = MotionFrame(0, ref.exp, ref.pitch, ref.yaw + 10, ref.roll, ref.t, ref.scale * 2)
    assert np.abs(human(turned) - x_ref).max() > 0.05
    r_new = turned.rotation() @ ref.rotation().T @ src.rotation()
    exp = src.exp.copy()
    exp[list(LIP_KEYPOINTS)] = ref.exp[list(LIP_KEYPOINTS)]
    expected = 2 * src.scale * (src.kp @ r_new + exp) + np.array([src.t[0], src.t[1], 0])
    np.testing.assert_allclose(human(turned), expected, atol=1e-5)
    with pytest.raises(EngineError, match="animation mode"):
        KeypointDriver(src, ref, "robot")


def test_a_batch_of_frames_is_driven_like_each_frame_with_one_stitching_call():
    """KeypointDriver.batch (the stream's path: one stitching call per render batch, its result left on the
    renderer's device) gives each frame's keypoints as the per-frame call does."""
    from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks
    from avatarstream.engines.liveportrait.config import LivePortraitConfig
    from avatarstream.engines.liveportrait.renderer import Renderer

    renderer = Renderer(LivePortraitNetworks.random(seed=1, config=LivePortraitConfig.small()))
    calls = []

    def stitch_batch(x_s, x_d, multiplier):
        calls.append(len(x_d))
        return renderer.stitch_on_device(x_s, x_d, multiplier)

    src = _source()
    rng = np.random.default_rng(4)
    ref = MotionFrame(-2, rng.normal(size=(21, 3)) * 0.02, 1, 2, 3, [0.0, 0.0, 0.1], 1.5)
    frames = [MotionFrame(k, ref.exp + rng.normal(size=(21, 3)) * 0.01, 1 + k, 2, 3 - k, [0.01 * k, 0.0, 0.1], 1.5)
              for k in range(5)]
    driver = KeypointDriver(src, ref, "human", multiplier=1.1, stitch=renderer.stitch, stitch_batch=stitch_batch)
    batched = driver.batch(frames)
    assert calls == [5] and tuple(batched.shape) == (5, 21, 3)
    np.testing.assert_allclose(np.asarray(batched), np.stack([driver(f) for f in frames]), atol=1e-5)
    plain = KeypointDriver(src, ref, "human", multiplier=1.1)  # no stitching: each frame's own keypoints
    np.testing.assert_allclose(plain.batch(frames), np.stack([plain(f) for f in frames]), atol=0)

"""Motion geometry: 66-bin angle decoding, rotation convention, keypoint transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatarstream.engines.liveportrait import camera


def test_bins_to_degrees():
    logits = torch.full((3, 66), -1e4)
    logits[0, 0] = 0  # all mass in bin 0
    logits[1, 65] = 0  # all mass in the last bin
    logits[2, 32:34] = 0  # half in bin 32, half in bin 33: 32.5 * 3 - 97.5 = 0
    torch.testing.assert_close(camera.bins_to_degrees(logits), torch.tensor([-97.5, 97.5, 0.0]))
    uniform = camera.bins_to_degrees(torch.zeros(1, 66))
    torch.testing.assert_close(uniform, torch.tensor([0.0]))
    with pytest.raises(ValueError):
        camera.bins_to_degrees(torch.zeros(1, 64))


def test_rotation_convention_hand_computed():
    # yaw 90 deg: Ry = [[0,0,1],[0,1,0],[-1,0,0]] and the returned R is its transpose
    r = camera.rotation_matrix(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([0.0]))[0]
    torch.testing.assert_close(r, torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]), atol=1e-6, rtol=0)
    # as a row vector, x @ R applies Ry to the column vector: +x (right) turns to -z (out of the image)
    torch.testing.assert_close(torch.tensor([1.0, 0, 0]) @ r, torch.tensor([0.0, 0, -1]), atol=1e-6, rtol=0)
    # pitch 90: Rx maps +y (down) to +z (in)
    r = camera.rotation_matrix(torch.tensor([90.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0]
    torch.testing.assert_close(torch.tensor([0.0, 1, 0]) @ r, torch.tensor([0.0, 0, 1]), atol=1e-6, rtol=0)
    # general case: R = (Rz Ry Rx)^T, written out by hand with numpy
    p, y, ro = np.deg2rad([10.0, -20.0, 30.0])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(ro), -math.sin(ro), 0], [math.sin(ro), math.cos(ro), 0], [0, 0, 1]])
    got = camera.rotation_matrix(torch.tensor([10.0]), torch.tensor([-20.0]), torch.tensor([30.0]))[0]
    np.testing.assert_allclose(got.numpy(), (rz @ ry @ rx).T, atol=1e-6)


def _info(seed: int, b: int = 1) -> camera.KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return camera.KeypointInfo(pitch=torch.rand(b, generator=g) * 20 - 10, yaw=torch.rand(b, generator=g) * 20 - 10,
                               roll=torch.rand(b, generator=g) * 20 - 10, t=torch.randn(b, 3, generator=g) * 0.1,
                               exp=torch.randn(b, 21, 3, generator=g) * 0.02, scale=1.5 + torch.rand(b, 1, generator=g),
                               kp=torch.randn(b, 21, 3, generator=g) * 0.3)


def test_source_keypoints_ignore_tz():
    info = _info(0)
    x = camera.source_keypoints(info)
    expected = info.scale[0] * (info.kp[0] @ info.rotation[0] + info.exp[0])
    expected[:, :2] += info.t[0, :2]
    torch.testing.assert_close(x[0], expected)
    info.t[0, 2] = 5.0
    torch.testing.assert_close(camera.source_keypoints(info), x)


def test_relative_motion():
    src, d0 = _info(1), _info(2)
    torch.testing.assert_close(camera.relative_motion(src, d0, d0), camera.source_keypoints(src), atol=1e-6, rtol=1e-5)
    d1 = _info(3)
    x = camera.relative_motion(src, d1, d0)[0]
    rot = d1.rotation[0] @ d0.rotation[0].T @ src.rotation[0]
    exp = src.exp[0] + d1.exp[0] - d0.exp[0]
    scale = src.scale[0] * d1.scale[0] / d0.scale[0]
    t = src.t[0] + d1.t[0] - d0.t[0]
    t[2] = 0
    torch.testing.assert_close(x, scale * (src.kp[0] @ rot + exp) + t)
    lips = camera.relative_motion(src, d1, d0, lip_absolute=True, relative_scale=False)[0]
    expected_exp = exp.clone()
    expected_exp[list(camera.LIP_EXP_INDICES)] = d1.exp[0, list(camera.LIP_EXP_INDICES)]
    torch.testing.assert_close(lips, src.scale[0] * (src.kp[0] @ rot + expected_exp) + t)


def test_multipliers_and_stitching():
    x_s = camera.source_keypoints(_info(4))
    x_d = camera.source_keypoints(_info(5))
    torch.testing.assert_close(camera.apply_driving_multiplier(x_s, x_d, 1.0), x_d)
    torch.testing.assert_close(camera.apply_driving_multiplier(x_s, x_d, 0.0), x_s)
    assert camera.convex_hull_multiplier(x_s, x_s) == pytest.approx(1.0)
    assert camera.convex_hull_multiplier(x_s, 2 * x_s) == pytest.approx(2 ** -1.5)  # volume scales by 8
    torch.testing.assert_close(camera.expression_friendly(x_s, x_d, x_d, 1.3), x_s)

    class Fixed(torch.nn.Module):
        def forward(self, feat):
            assert feat.shape == (1, 126)
            delta = torch.zeros(1, 65)
            delta[0, 0] = 1.0  # keypoint 0, x
            delta[0, 63:65] = torch.tensor([0.5, -0.5])  # shared tx, ty
            return delta

    out = camera.stitch(Fixed(), x_s, x_d)
    diff = out - x_d
    np.testing.assert_allclose(diff[0, 0].numpy(), [1.5, -0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(diff[0, 1:].numpy(), np.tile([0.5, -0.5, 0.0], (20, 1)), atol=1e-6)


def test_keypoint_info_from_extractor_heads():
    heads = {"pitch": torch.zeros(2, 66), "yaw": torch.zeros(2, 66), "roll": torch.zeros(2, 66), "t": torch.ones(2, 3),
             "exp": torch.zeros(2, 63), "scale": torch.ones(2, 1), "kp": torch.arange(126.0).reshape(2, 63)}
    info = camera.keypoint_info(heads)
    assert info.kp.shape == (2, 21, 3) and info.kp[1, 0].tolist() == [63.0, 64.0, 65.0]
    torch.testing.assert_close(info.rotation, torch.eye(3).expand(2, 3, 3))
    assert info.select(1).kp.shape == (1, 21, 3)

"""The renderer: output shape and range, determinism, batching across avatars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarstream.engines.base import EngineError
from avatarstream.engines.liveportrait.renderer import Renderer


@pytest.fixture(scope="module")
def renderer(small_networks):
    return Renderer(small_networks)


@pytest.fixture(scope="module")
def avatar(renderer, source_image256):
    return renderer.prepare(source_image256)


@pytest.fixture(scope="module")
def own_motion_frame(renderer, avatar):
    return renderer.render_avatar(avatar, avatar.keypoints)


def test_source_motion_frame_shape_and_range(avatar, own_motion_frame):
    assert avatar.feature_3d.shape == (1, 16, 4, 64, 64) and avatar.keypoints.shape == (1, 21, 3)
    assert own_motion_frame.shape == (1, 512, 512, 3) and own_motion_frame.dtype == np.uint8
    assert own_motion_frame.std() > 0  # a picture, not a constant


def test_rendering_is_deterministic(renderer, source_image256, avatar, own_motion_frame):
    again = renderer.prepare(source_image256)
    assert np.array_equal(again.keypoints.numpy(), avatar.keypoints.numpy())
    assert np.array_equal(renderer.render_avatar(again, again.keypoints), own_motion_frame)


def test_batch_across_avatars(renderer, source_image256, avatar, own_motion_frame):
    other = renderer.prepare(np.ascontiguousarray(source_image256[::-1]))
    batch = renderer.render([(avatar, avatar.keypoints[0]), (other, other.keypoints[0] + 0.02)])
    assert batch.shape == (2, 512, 512, 3)
    # batched convolutions may pick other kernels: equal to the single render up to one grey level
    assert np.abs(batch[0].astype(int) - own_motion_frame[0].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])
    assert renderer.times.calls["spade_generator"] >= 2


def test_bad_inputs(renderer, avatar):
    with pytest.raises(EngineError, match="256x256"):
        renderer.prepare(np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(EngineError, match=r"\(21, 3\)"):
        renderer.render([(avatar, np.zeros((20, 3), np.float32))])
    with pytest.raises(EngineError, match="CUDA"):
        Renderer(renderer.networks, fp16=True)


def test_source_own_motion_frame_at_full_size(lp_networks, human_portrait):
    """Random weights of the real shapes: the source crop rendered with its own motion."""
    from avatarstream.engines.face import detect_face
    from avatarstream.engines.liveportrait.source import crop_source, paste_back
    from avatarstream.engines.portraits import load_portrait

    image = load_portrait(human_portrait).image
    src = crop_source(image, detect_face(image).points)
    renderer = Renderer(lp_networks)
    avatar = renderer.prepare(src.network_input)
    assert avatar.feature_3d.shape == (1, 32, 16, 64, 64) and avatar.keypoints.shape == (1, 21, 3)
    assert avatar.motion.pitch.abs().item() <= 97.5
    frame = renderer.render_avatar(avatar, avatar.keypoints)
    assert frame.shape == (1, 512, 512, 3) and frame.dtype == np.uint8 and frame.std() > 0
    pasted = paste_back(frame[0], src)
    assert pasted.shape == image.shape


def test_warping_spade_equals_w_then_g(renderer, avatar, own_motion_frame):
    from avatarstream.engines.liveportrait.networks.warping_spade import WarpingSpade
    from avatarstream.engines.liveportrait.renderer import tensor_to_images

    nets = renderer.networks
    fused = WarpingSpade(nets.warping_module, nets.spade_generator).eval()
    with torch.inference_mode():
        image = fused(avatar.feature_3d, avatar.keypoints, avatar.keypoints)
    assert np.array_equal(tensor_to_images(image), own_motion_frame)

"""Fixtures for the Loopy tests: the tiny config with random weights (tiny wav2vec2 built
locally) and a synthetic 25 fps talking-blob clip with audio and landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the loopy engine needs torch")
pytest.importorskip("diffusers", reason="the loopy engine needs diffusers")
pytest.importorskip("transformers", reason="the loopy engine needs transformers")


def synthetic_clip(path: Path, frames: int = 30, size: int = 64, seed: int = 0) -> Path:
    """A moving, breathing disc with a tone whose loudness follows the disc; 68-point landmarks
    (dlib layout) placed on it, moving with the disc, brows rising and falling."""
    from avatarstream.engines.face.layout import HUMAN, face_frame_points
    from avatarstream.engines.media_files import write_mp4

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, lms = [], []
    for t in range(frames):
        cx, cy = size / 2 + size / 8 * np.sin(t / 4), size / 2
        r = size / 6 + size / 16 * np.sin(t / 2)
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 2] = 80
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (220, 180, 140)
        imgs.append(img)
        face = face_frame_points(HUMAN)
        face[17:27, 1] -= 0.1 * np.sin(t)  # brows
        lms.append(face * r + np.array([cx, cy]))
    n = frames * 640
    t = np.arange(n) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
             + 0.01 * rng.standard_normal(n)).astype(np.float32)
    write_mp4(path, imgs, audio)
    np.save(path.with_name(path.stem + ".landmarks.npy"), np.array(lms, np.float32))
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loopy_data")
    synthetic_clip(d / "talk.mp4")
    return d


@pytest.fixture()
def tiny_weights():
    from avatarstream.engines.loopy.checkpoint import random_weights
    from avatarstream.engines.loopy.config import tiny_config

    return random_weights(tiny_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    from avatarstream.engines.loopy.checkpoint import random_weights, save_weights_dir
    from avatarstream.engines.loopy.config import tiny_config

    d = tmp_path_factory.mktemp("loopy_weights")
    return save_weights_dir(d, random_weights(tiny_config(), seed=0))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny config runs as fast on one torch thread as on two on a quiet 2-core machine, and far
    faster on a busy one (two threads that wait on each other at every operator when the other core is
    taken: a stage-2 training step measured 0.4 s on one thread and 8 s on two at load average 9)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

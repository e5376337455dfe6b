"""Fixtures for the LivePortrait tests: random weights in the official layout, small renderers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the LivePortrait renderer needs torch (pip install 'avatarstream[neural]')")


@pytest.fixture(scope="session")
def lp_weights(tmp_path_factory):
    """Full-size random human weights written in the official directory layout (about 520 MB)."""
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints

    root = tmp_path_factory.mktemp("lp_weights")
    write_random_checkpoints(root, seed=0, variants=("human",))
    return root


@pytest.fixture(scope="session")
def lp_networks(lp_weights):
    """``lp_weights`` loaded strictly (full size)."""
    from avatarstream.engines.liveportrait.checkpoint import load_networks

    return load_networks(lp_weights, "human")


@pytest.fixture(scope="session")
def small_networks():
    from avatarstream.engines.liveportrait.checkpoint import LivePortraitNetworks
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    return LivePortraitNetworks.random(seed=3, config=LivePortraitConfig.small())


@pytest.fixture(scope="session")
def source_image256():
    """A smooth, face-sized test pattern (256 x 256 uint8 RGB)."""
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
    return (img * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def joyvasa_weights(lp_weights):
    """``lp_weights`` plus a random JoyVASA motion generator and a motion template (official layout).

    The generator has the release's shapes except a 4-step diffusion schedule (the step count is read
    from the file's ``args``), so CPU tests sample in seconds rather than minutes.
    """
    from avatarstream.engines.joyvasa.checkpoint import write_random_checkpoint
    from avatarstream.engines.joyvasa.motion import MotionTemplate
    from avatarstream.engines.joyvasa.network import DitConfig

    write_random_checkpoint(lp_weights / "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt", seed=0,
                            config=DitConfig(n_diff_steps=4))
    (lp_weights / "JoyVASA/motion_template").mkdir(parents=True, exist_ok=True)
    MotionTemplate.synthetic().save(lp_weights / "JoyVASA/motion_template/motion_template.pkl")
    return lp_weights


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One torch thread for every LivePortrait test: as fast as two on a quiet 2-core machine for most of
    these networks, far faster on a busy one (two threads wait on each other at every operator when the
    other core is taken: test_renderer.py 40 s on two threads, 23 s on one at load average 7), and the
    figures do not depend on the machine's core count. Package scope: set before any module fixture
    computes a reference that a test compares exactly with its own render."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

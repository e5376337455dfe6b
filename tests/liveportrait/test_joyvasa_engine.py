"""The joyvasa server engine end to end on random weights of the real shapes (CPU, a few frames).

The stream contract (clock, flush, interrupt, frame format, controls) is tests/test_engine_contract.py."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import MissingWeightsError
from avatarstream.engines.registry import load_engine
from avatarstream.engines.portraits import load_portrait


def test_missing_weights_name_the_files(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load_engine("joyvasa")
    assert "liveportrait/base_models/warping_module.pth" in str(err.value)
    assert "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt" in str(err.value)
    (tmp_path / "JoyVASA/motion_template").mkdir(parents=True)
    (tmp_path / "JoyVASA/motion_template/motion_template.pkl").write_bytes(b"x")
    with pytest.raises(MissingWeightsError) as err:
        load_engine("joyvasa", weights=str(tmp_path))
    msg = str(err.value)
    assert "liveportrait/retargeting_models/stitching_retargeting_module.pth" in msg and str(tmp_path) in msg
    assert "motion_template.pkl" not in msg  # present files are not listed


@pytest.fixture(scope="module")
def small_engine(joyvasa_weights, tmp_path_factory):
    """The same JoyVASA files with narrow LivePortrait networks (official layout): many frames in CPU time."""
    from avatarstream.engines.liveportrait.checkpoint import write_random_checkpoints
    from avatarstream.engines.liveportrait.config import LivePortraitConfig

    root = tmp_path_factory.mktemp("small_weights")
    write_random_checkpoints(root, seed=5, variants=("human",), config=LivePortraitConfig.small())
    (root / "JoyVASA").symlink_to(joyvasa_weights / "JoyVASA")
    return load_engine("joyvasa", weights=str(root), chunk_frames=3, lookahead_ms=40,
                       liveportrait_config=LivePortraitConfig.small())


def test_stream_renders_frames_end_to_end(small_engine, human_portrait, speech_wav):
    from conftest import read_wav

    audio, sr = read_wav(speech_wav)
    speech = audio[8000:8000 + 3 * 640]  # three frames of real speech
    stream = small_engine.open_stream(load_portrait(human_portrait), size=256)
    assert stream.lookahead_frames == 3
    assert stream.set_controls({"expression_intensity": 1.5}) == {}
    frames = stream.feed(speech)
    assert frames  # the real-shape motion generator emits before flush
    frames += stream.flush()  # the rest, plus the reference's one-frame tail
    assert len(frames) >= 3
    assert any(f.speaking for f in frames[:3])
    assert not np.array_equal(frames[0].image, frames[1].image)  # the face moves
    stream.close()

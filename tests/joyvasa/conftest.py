"""JoyVASA test fixtures: seeded random models (the miniature for algorithm tests, real shapes for loading)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the joyvasa engine needs torch (pip install '.[neural]')")
pytest.importorskip("transformers", reason="the joyvasa engine needs transformers (pip install '.[neural]')")


@pytest.fixture(scope="session")
def small_model():
    from avatarstream.engines.joyvasa.checkpoint import small_motion_generator

    return small_motion_generator(seed=0)


@pytest.fixture(scope="session")
def speech_audio(speech_wav) -> np.ndarray:
    import wave

    with wave.open(str(speech_wav)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The small models run fastest single-threaded, and the CI machine is shared (2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

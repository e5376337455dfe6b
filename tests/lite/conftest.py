"""Fixtures for the lite-engine tests: one engine (seeded), the demo portraits as ``Portrait``s,
the espeak-ng speech as an array, and signal helpers (tests import packages only, so helpers
are handed out as fixtures)."""

from __future__ import annotations

import wave
from types import SimpleNamespace

import numpy as np
import pytest

from avatarstream.engines.base import SAMPLES_PER_FRAME


@pytest.fixture(scope="session")
def lite_engine():
    from avatarstream.engines.lite.engine import LiteEngine

    return LiteEngine(seed=7)


@pytest.fixture(scope="session")
def human(human_portrait):
    from avatarstream.engines.portraits import load_portrait

    return load_portrait(human_portrait)


@pytest.fixture(scope="session")
def cat(cat_portrait):
    from avatarstream.engines.portraits import load_portrait

    return load_portrait(cat_portrait, kind="animal")


def frame_envelope(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS per 40 ms video frame."""
    padded = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32)
    k = min(audio.size, padded.size)
    padded[:k] = audio[:k]
    return np.sqrt((padded.reshape(n_frames, SAMPLES_PER_FRAME).astype(np.float64) ** 2).mean(axis=1))


def best_lag_correlation(signal: np.ndarray, envelope: np.ndarray, max_lag: int = 1) -> tuple[float, int]:
    """Highest Pearson r of ``signal`` shifted by -max_lag..max_lag frames against ``envelope``."""
    ok = np.isfinite(signal)
    best = (-1.0, 0)
    n = len(signal)
    for lag in range(-max_lag, max_lag + 1):
        a = slice(max(0, lag), n + min(0, lag))
        b = slice(max(0, -lag), n + min(0, -lag))
        s, e, m = signal[a], envelope[b], ok[a]
        r = float(np.corrcoef(s[m], e[m])[0, 1])
        if r > best[0]:
            best = (r, lag)
    return best


@pytest.fixture(scope="session")
def speech_audio(speech_wav) -> np.ndarray:
    """The shared espeak-ng speech (0.5 s silence, sentence, 0.8 s pause, sentence, 0.8 s pause)."""
    with wave.open(str(speech_wav)) as w:
        assert w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())[:, 0]
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="session")
def signals():
    return SimpleNamespace(envelope=frame_envelope, lagged_r=best_lag_correlation)

"""Audio features and mouth motion on real espeak-ng speech: level adaptation, noise, VAD."""

from __future__ import annotations

import numpy as np

from avatarstream.engines.base import SAMPLES_PER_FRAME
from avatarstream.engines.lite.audio_features import AudioFeatureExtractor
from avatarstream.engines.lite.motion import MotionGenerator


def jaw_trace(audio: np.ndarray) -> tuple[np.ndarray, list]:
    fe, gen = AudioFeatureExtractor(), MotionGenerator(seed=0)
    feats = [fe.frame(audio[i:i + SAMPLES_PER_FRAME]) for i in range(0, audio.size - SAMPLES_PER_FRAME + 1,
                                                                   SAMPLES_PER_FRAME)]
    jaw = [gen.step(n, f, feats[n + 1] if n + 1 < len(feats) else None).jaw for n, f in enumerate(feats)]
    return np.array(jaw), feats


def test_mouth_follows_the_envelope_with_little_lag(speech_audio, signals):
    jaw, feats = jaw_trace(speech_audio)
    env = signals.envelope(speech_audio, len(jaw))
    r, lag = signals.lagged_r(jaw, env, max_lag=2)
    assert r >= 0.8 and lag == 0, (r, lag)
    speech = np.array([f.speech for f in feats])
    assert not speech[:10].any() and speech.mean() > 0.4  # 0.5 s of leading silence, then talk


def test_quiet_microphone_uses_the_same_mouth_range(speech_audio):
    loud, _ = jaw_trace(speech_audio)
    quiet, _ = jaw_trace(0.05 * speech_audio)  # -26 dB
    assert np.corrcoef(loud, quiet)[0, 1] > 0.85
    assert quiet.mean() > 0.6 * loud.mean()


def test_steady_noise_keeps_the_mouth_shut_but_speech_still_shows(speech_audio):
    rng = np.random.default_rng(1)
    noise = 0.02 * rng.standard_normal(5 * 16000).astype(np.float32)  # -34 dBFS hiss
    jaw, _ = jaw_trace(noise)
    assert jaw[10:].max() < 0.02
    noisy, _ = jaw_trace(speech_audio + 0.01 * rng.standard_normal(speech_audio.size).astype(np.float32))
    clean, _ = jaw_trace(speech_audio)
    assert np.corrcoef(noisy[10:], clean[10:])[0, 1] > 0.85


def test_brightness_separates_front_and_back_vowels():
    """A synthetic /i/-like sound (energy at 2.5 kHz) is brighter than an /u/-like one (300 Hz)."""
    t = np.arange(SAMPLES_PER_FRAME * 10) / 16000
    ee = 0.2 * (np.sin(2 * np.pi * 250 * t) * 0.3 + np.sin(2 * np.pi * 2500 * t))
    oo = 0.2 * (np.sin(2 * np.pi * 250 * t) + 0.3 * np.sin(2 * np.pi * 600 * t))
    fe = AudioFeatureExtractor()
    b_ee = fe.frame(ee[-SAMPLES_PER_FRAME:].astype(np.float32)).brightness
    b_oo = fe.frame(oo[-SAMPLES_PER_FRAME:].astype(np.float32)).brightness
    assert b_ee > 0.6 > 0.2 > b_oo

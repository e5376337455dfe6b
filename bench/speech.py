"""Speech the suites feed the engines and the server: espeak-ng sentences (16 kHz mono float32), a speech-like
synthetic signal where espeak-ng is not needed, the WebSocket's PCM bytes, and where a sentence's leading
silence ends."""

from __future__ import annotations

import math
import shutil
import subprocess
import wave
from io import BytesIO

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE, EngineError


def require_espeak(suite: str) -> None:
    """Raise a clear error naming the package when espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        raise EngineError(f"the {suite} benchmark speaks with espeak-ng: apt-get install espeak-ng")


def espeak_speech(text: str, words_per_minute: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 mono in [-1, 1) at 16 kHz (resampled from espeak's 22.05 kHz)."""
    if shutil.which("espeak-ng") is None:
        raise EngineError("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "-s", str(words_per_minute), "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(rate, SAMPLE_RATE)
        pcm = resample_poly(pcm, SAMPLE_RATE // g, rate // g)
    return pcm.astype(np.float32)


def speechlike_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables' (~4/s, 120-220 Hz glottal pulses through two moving formants) with pauses."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)  # pulse train
    out = np.zeros(n)
    seg = SAMPLE_RATE // 10
    for start in range(0, n, seg):
        f1, f2 = rng.uniform(300, 850), rng.uniform(900, 2400)
        x = source[start:start + seg]
        for f, bw in ((f1, 90.0), (f2, 120.0)):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), r * r], x)
        out[start:start + seg] = x / (np.sqrt(np.mean(x ** 2)) + 1e-9)  # formant gains vary; keep syllables even
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.7
    phrases = (np.sin(2 * np.pi * 0.25 * t) > -0.5).astype(np.float64)  # speech 2/3 of the time
    audio = out * 0.12 * syllables * phrases + 0.002 * rng.standard_normal(n)
    return audio.astype(np.float32)


def pcm_bytes(audio: np.ndarray) -> bytes:
    """float audio in [-1, 1] as little-endian 16-bit PCM (what the agent WebSocket carries)."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def speech_onset(audio: np.ndarray, rate: int = 16000, threshold: float = 0.02) -> float:
    """Seconds of leading silence in ``audio`` (first 10 ms window louder than ``threshold``)."""
    hop = rate // 100
    n = audio.size // hop
    loud = np.nonzero(np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1)) > threshold)[0]
    return float(loud[0] * hop / rate) if loud.size else 0.0

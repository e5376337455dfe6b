"""Shared test fixtures: real speech from espeak-ng, paths, demo portraits."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

# The suite runs in a private network namespace and fails a test that addresses anything outside it
# (tests/network_guard.py).
pytest_plugins = ["network_guard"]

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO / "engines" / "lite" / "portraits"


def speak(text: str, path: Path, rate_hz: int = 16000, words_per_minute: int = 150) -> Path:
    """Synthesise ``text`` with espeak-ng into a mono 16-bit WAV at ``rate_hz``."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(raw), text], check=True)
    with wave.open(str(raw)) as w:
        sr, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(n), dtype=np.int16).reshape(-1, ch)[:, 0].astype(np.float32)
    raw.unlink()
    if sr != rate_hz:
        from scipy.signal import resample_poly
        from math import gcd

        g = gcd(sr, rate_hz)
        pcm = resample_poly(pcm, rate_hz // g, sr // g)
    write_wav(path, pcm.astype(np.float32) / 32768.0, rate_hz)
    return path


def write_wav(path: Path, audio: np.ndarray, rate_hz: int) -> Path:
    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes((pcm * 32767).astype(np.int16).tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        sr, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(n), dtype=np.int16).reshape(-1, ch)[:, 0]
    return pcm.astype(np.float32) / 32768.0, sr


SENTENCES = [
    "Hello there. My name is Ava, and I am a talking portrait.",
    "Open your mouth wide and say papa, mama, baba.",
]


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 6 s of real speech with pauses between sentences (16 kHz mono WAV)."""
    d = tmp_path_factory.mktemp("speech")
    parts = []
    for i, s in enumerate(SENTENCES):
        a, sr = read_wav(speak(s, d / f"s{i}.wav"))
        parts += [a, np.zeros(int(0.8 * sr), np.float32)]
    return write_wav(d / "speech.wav", np.concatenate([np.zeros(8000, np.float32)] + parts), 16000)


@pytest.fixture(scope="session")
def human_portrait() -> Path:
    return PORTRAITS / "astronaut.jpg"


@pytest.fixture(scope="session")
def cat_portrait() -> Path:
    return PORTRAITS / "cat.jpg"


@pytest.fixture(scope="session")
def engine_loader():
    """``load_engine`` that keeps one instance per engine name for the whole test run (the server and
    cluster tests): the real engines, but a portrait is analysed once instead of once per test server."""
    from avatarstream.engines.registry import load_engine

    cache: dict[str, object] = {}

    def load(name: str, **options):
        if name not in cache:
            cache[name] = load_engine(name, **options)
        return cache[name]

    return load

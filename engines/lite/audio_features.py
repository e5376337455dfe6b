"""Per-video-frame speech features from the raw signal (40 ms = 640 samples at 16 kHz).

* level: RMS energy in dB, normalised to [0, 1] against an adaptive floor and peak
  (so a quiet microphone and a loud TTS voice both use the mouth's full range);
* brightness: spectral centroid on a log scale, 400 Hz -> 0 .. 4 kHz -> 1 (low = dark/rounded
  vowels such as /o/ /u/, high = bright/spread sounds such as /i/ /e/ and fricatives);
* low_ratio: share of energy below 1 kHz (voiced, open vowels);
* speech: webrtcvad on the two 20 ms halves, confirmed by energy above the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME

FFT_SIZE = 1024
_FREQS = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE)
_WINDOW = np.hanning(SAMPLES_PER_FRAME).astype(np.float32)
_BAND = (_FREQS >= 80) & (_FREQS <= 6000)
_LOW = (_FREQS >= 80) & (_FREQS < 1000)


@dataclass(frozen=True)
class FrameFeatures:
    rms_db: float  # raw RMS level, dBFS
    level: float  # normalised loudness in [0, 1]
    brightness: float  # spectral centroid, normalised to [0, 1]
    low_ratio: float  # energy share below 1 kHz, [0, 1]
    speech: bool  # voice activity


@dataclass
class LevelTracker:
    """Adaptive floor/peak in dB: the floor follows quiet stretches, the peak loud syllables."""

    floor_db: float = -60.0
    peak_db: float = -22.0
    range_db: float = 28.0  # level 0..1 spans the top ``range_db`` below the peak
    min_peak_db: float = -40.0
    peak_decay_db: float = 0.03  # per frame (~0.75 dB/s)
    floor_rise_db: float = 0.05

    def update(self, db: float) -> float:
        self.floor_db = db if db < self.floor_db else min(db, self.floor_db + self.floor_rise_db)
        self.peak_db = max(db, self.peak_db - self.peak_decay_db, self.min_peak_db)
        bottom = max(self.peak_db - self.range_db, self.floor_db + 6.0)
        top = max(self.peak_db, bottom + 6.0)
        return float(np.clip((db - bottom) / (top - bottom), 0.0, 1.0))


class AudioFeatureExtractor:
    """Stateful: call ``frame(samples)`` once per 640-sample video frame, in order."""

    def __init__(self, vad_mode: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(vad_mode)
        self.levels = LevelTracker()

    def reset(self) -> None:
        self.levels = LevelTracker()

    def frame(self, samples: np.ndarray) -> FrameFeatures:
        x = np.asarray(samples, np.float32)
        if x.size != SAMPLES_PER_FRAME:
            raise ValueError(f"expected {SAMPLES_PER_FRAME} samples, got {x.size}")
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9)
        db = 20.0 * np.log10(rms)
        level = self.levels.update(db)
        spec = np.abs(np.fft.rfft(x * _WINDOW, FFT_SIZE)) ** 2
        band = spec[_BAND]
        total = float(band.sum()) + 1e-12
        centroid = float((band * _FREQS[_BAND]).sum() / total)
        brightness = float(np.clip(np.log10(max(centroid, 1.0) / 400.0), 0.0, 1.0))  # 400 Hz -> 0, 4 kHz -> 1
        low_ratio = float(spec[_LOW].sum() / total)
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        half = SAMPLES_PER_FRAME // 2
        voiced = self._vad.is_speech(pcm[:half].tobytes(), SAMPLE_RATE) or \
            self._vad.is_speech(pcm[half:].tobytes(), SAMPLE_RATE)
        speech = bool(voiced and db > self.levels.floor_db + 8.0 and db > -55.0)
        return FrameFeatures(db, level if speech or level > 0.35 else 0.0, brightness, low_ratio, speech)

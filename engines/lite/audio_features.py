"""Per-video-frame speech features from the raw signal (40 ms = 640 samples at 16 kHz).

* level: RMS energy in dB, normalised to [0, 1] between an adaptive floor and peak
  (``LevelTracker``: a quiet microphone and a loud TTS voice both use the mouth's full range);
* brightness: spectral centroid on a log scale, 400 Hz -> 0 .. 4 kHz -> 1 (low = dark/rounded
  vowels such as /o/ /u/, high = bright/spread sounds such as /i/ /e/ and fricatives);
* low_ratio: share of energy below 1 kHz (voiced, open vowels);
* speech: webrtcvad on the two 20 ms halves, confirmed by energy above the floor.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME

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


class LevelTracker:
    """Adaptive floor and peak in dB.

    floor: the minimum over the last ~1.6 s (minimum statistics: even fluent speech has quiet gaps,
    stationary noise has none), so steady background noise never opens the mouth;
    peak: jumps up with loud frames, sinks ~3 dB/s while the signal is above the floor, holds in
    silence, so quiet microphones and loud TTS both use the mouth's full range within a sentence.
    """

    def __init__(self, range_db: float = 28.0, window: int = 40, start_peak_db: float = -30.0,
                 peak_decay_db: float = 0.12) -> None:
        self.range_db = range_db
        self.peak_decay_db = peak_decay_db
        self.peak_db = start_peak_db
        self._recent: deque[float] = deque(maxlen=window)
        self._seen = 0

    @property
    def floor_db(self) -> float:
        # for the first 0.12 s assume a quiet room; from then on trust what was heard
        prior = -70.0 if self._seen < 3 else np.inf
        return float(min(min(self._recent, default=np.inf), prior))

    def update(self, db: float) -> float:
        self._recent.append(db)
        self._seen += 1
        floor = self.floor_db
        if db > self.peak_db:
            self.peak_db = db
        elif db > floor + 8.0:
            self.peak_db -= self.peak_decay_db
        self.peak_db = max(self.peak_db, floor + 20.0)
        bottom = max(self.peak_db - self.range_db, floor + 6.0)
        return float(np.clip((db - bottom) / max(self.peak_db - bottom, 1e-6), 0.0, 1.0))


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
        speech = bool(voiced and db > self.levels.floor_db + 8.0 and db > -60.0)
        return FrameFeatures(db, level if speech else 0.0, brightness, low_ratio, speech)

"""Sample-rate conversion between WebRTC audio (48 kHz) and the engines' 16 kHz mono.

* ``MicResampler``: decoded WebRTC ``av.AudioFrame`` (any rate/layout) -> float32 mono 16 kHz,
  with PyAV's (libswresample) stateful resampler.
* ``Upsampler16kTo48k``: float32 16 kHz -> int16 48 kHz in exact 3x blocks (a 640-sample video
  frame of audio becomes exactly two 960-sample 20 ms WebRTC frames), with a stateful
  windowed-sinc low-pass so block edges do not click.
"""

from __future__ import annotations

import av
import numpy as np
from scipy.signal import firwin, lfilter

from avatarstream.engines.base import SAMPLE_RATE


class MicResampler:
    """Stateful: feed the frames of one stream in order."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)


class Upsampler16kTo48k:
    FACTOR = 3

    def __init__(self, taps: int = 61) -> None:
        # cut-off just under the 8 kHz Nyquist of the input; gain FACTOR restores the level
        self._h = firwin(taps, 7600, fs=SAMPLE_RATE * self.FACTOR) * self.FACTOR
        self._zi = np.zeros(taps - 1)
        self.delay_samples = (taps - 1) // 2  # at 48 kHz: 0.6 ms

    def reset(self) -> None:
        """Forget the filter history (after an interrupt: no tail of the dropped audio)."""
        self._zi[:] = 0

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        stuffed = np.zeros(audio16k.size * self.FACTOR)
        stuffed[:: self.FACTOR] = audio16k
        y, self._zi = lfilter(self._h, 1.0, stuffed, zi=self._zi)
        return (np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)

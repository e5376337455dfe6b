"""The microphone frames of the live-backlog tests: what a browser's WebRTC audio track delivers."""

from __future__ import annotations

import av
import numpy as np

BURST_FRAMES = 25  # 0.5 s of 20 ms frames: speech, then as much silence, in turn


def speech_or_silence(k: int) -> av.AudioFrame:
    """Frame ``k`` (20 ms, 48 kHz stereo s16, pts ``k * 960``): a 300 Hz tone at 0.3 in the even half-seconds,
    silence in the odd ones."""
    speech = (k // BURST_FRAMES) % 2 == 0
    t = (k * 960 + np.arange(960)) / 48000
    pcm = (0.3 * speech * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate = 48000
    frame.pts = k * 960
    return frame

"""``MotionGenerator``: the audio -> motion interface a server engine composes with a renderer.

It is engine-neutral (no torch): JoyVASA's ``StreamingMotionGenerator`` implements it, and any
other audio-to-motion model can. Time follows ``engines.base``: audio is mono 16 kHz, frame n
covers the samples [n * 640, (n + 1) * 640) pushed so far, and a frame is emitted once
``lookahead_frames`` frames of audio after it have been pushed (or on ``flush``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from avatarstream.engines.joyvasa.motion import MotionFrame


@runtime_checkable
class MotionGenerator(Protocol):
    """Stateful audio -> motion stream for one session. Not thread-safe: one caller."""

    lookahead_frames: int  # frames of audio needed after frame n before frame n is emitted

    @property
    def reference_frame(self) -> MotionFrame | None:
        """The first frame ever generated (the baseline for relative motion); None before any."""

    def push_audio(self, pcm16k: np.ndarray) -> None:
        """Append mono 16 kHz audio (float32 in [-1, 1] or int16, any length, e.g. 20 ms pieces)."""

    def pull_motion(self) -> list[MotionFrame]:
        """Return the frames completed since the last pull, in order, each index exactly once."""

    def flush(self) -> list[MotionFrame]:
        """End of utterance: pad with silence, return every remaining frame of the audio pushed."""

    def interrupt(self) -> None:
        """Drop pending audio and un-pulled frames; motion continues from the last pulled frame.

        Frame indices keep counting: the next pushed sample starts frame (last pulled index + 1).
        """

    def reset(self) -> None:
        """Forget everything (history, reference frame, clock): a new session."""

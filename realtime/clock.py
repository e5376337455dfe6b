"""One clock per session: video frame ``n`` and its two 20 ms audio frames share one time base.

* video frame ``n`` starts at ``t0 + n * 40 ms``; its RTP pts is ``n * 3600`` (90 kHz);
* audio frame ``k = 2n + h`` (``h`` in {0, 1}) starts at ``t0 + k * 20 ms``; its pts is
  ``k * 960`` (48 kHz, the WebRTC/Opus rate).

Everything (engine feeding, events, every viewer's tracks) derives its timing from here,
so audio and video can never drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction

from avatarstream.engines.base import FPS

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
AUDIO_FRAMES_PER_VIDEO_FRAME = 2
FRAME_SECONDS = 1.0 / FPS  # 40 ms
AUDIO_FRAME_SECONDS = FRAME_SECONDS / AUDIO_FRAMES_PER_VIDEO_FRAME  # 20 ms
VIDEO_PTS_PER_FRAME = VIDEO_CLOCK_RATE // FPS  # 3600
AUDIO_SAMPLES_PER_FRAME = int(AUDIO_CLOCK_RATE * AUDIO_FRAME_SECONDS)  # 960
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_TIME_BASE = Fraction(1, AUDIO_CLOCK_RATE)


@dataclass
class SessionClock:
    """Monotonic session clock; ``t0`` is the time (``time_source``: ``time.monotonic`` unless the
    session passes its own) of frame 0. ``sleep`` waits that many seconds of ``time_source``
    (``asyncio.sleep`` for the real clock; a test's manual clock passes its own)."""

    t0: float
    time_source: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)

    @classmethod
    def start_now(cls, time_source: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> "SessionClock":
        return cls(time_source(), time_source, sleep)

    def now(self) -> float:
        return self.time_source()

    def frame_time(self, n: int) -> float:
        """Wall time at which video frame ``n`` (and audio frame ``2n``) starts."""
        return self.t0 + n * FRAME_SECONDS

    def audio_frame_time(self, k: int) -> float:
        return self.t0 + k * AUDIO_FRAME_SECONDS

    def current_frame(self) -> int:
        """Index of the video frame whose interval contains now (-1 before ``t0``)."""
        return int((self.time_source() - self.t0) // FRAME_SECONDS)

    def current_audio_frame(self) -> int:
        return int((self.time_source() - self.t0) // AUDIO_FRAME_SECONDS)

    @staticmethod
    def video_pts(n: int) -> int:
        return n * VIDEO_PTS_PER_FRAME

    @staticmethod
    def audio_pts(k: int) -> int:
        return k * AUDIO_SAMPLES_PER_FRAME

    async def sleep_until(self, t: float) -> None:
        delay = t - self.time_source()
        if delay > 0:
            await self.sleep(delay)

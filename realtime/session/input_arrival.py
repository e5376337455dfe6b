"""When streamed speech arrives, against its own sample clock: how long to hold a starting stream.

A live input (a microphone's 20 ms packets, an agent streaming TTS chunks) delivers audio up to
sample position ``P`` of its utterance at some time ``t``; on time it would be ``offset + P / rate``
with ``offset`` the stream's best (smallest) ``t - P / rate`` over the last ``window`` pushes.
A push's *lateness* is how much later than that it came; the jitter allowance ``J`` is a
quantile of the recent latenesses (ms) plus a guard (``LatencySettings``).

The session takes ``slot`` samples every ``slot / rate`` seconds. A held-back utterance can start
at a take at time ``T`` with ``q`` samples queued when every later take finds its slot in time,
i.e. when the stream, even ``J`` late, delivers the next slot before the next take::

    q >= max(slot, rate * (offset + pushed / rate + slot / rate + J - T))

so the hold is exactly what the incoming stream needs: about one slot for a steady stream, more
for a jittery one, nothing extra for a stream pushed faster than real time (its lateness is 0).

Cost: O(window) per push for the running minimum (250 floats, a few microseconds).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from avatarstream.engines.base import SAMPLE_RATE
from avatarstream.realtime.session.latency import LatencySettings


class InputArrival:
    def __init__(self, settings: LatencySettings, rate: int = SAMPLE_RATE) -> None:
        self.settings = settings
        self.rate = rate
        self._offsets: deque[float] = deque(maxlen=settings.window)  # t - P / rate of recent pushes (s)
        self._lateness: deque[float] = deque(maxlen=settings.window)  # ms
        self._utterance: int | None = None
        self._pushed = 0  # samples of ``_utterance`` pushed

    def observe(self, now: float, utterance: int, samples: int) -> None:
        """``samples`` of ``utterance`` arrived at ``now`` (monotonic seconds)."""
        if utterance != self._utterance:
            self._utterance, self._pushed = utterance, 0
            self._offsets.clear()
        self._pushed += samples
        offset = now - self._pushed / self.rate
        if self._offsets:
            self._lateness.append(max(0.0, offset - min(self._offsets)) * 1000)
        self._offsets.append(offset)

    def skip(self, samples: int) -> None:
        """``samples`` of the observed utterance were dropped on arrival (a live backlog trimmed): they
        count for its position, so what comes after them is not taken for late."""
        self._pushed += samples

    def jitter_ms(self) -> float:
        """The allowance ``J`` (ms): the quantile of recent lateness + guard, or the start value."""
        s = self.settings
        if len(self._lateness) < s.min_samples:
            return s.jitter_start_ms
        return float(np.percentile(self._lateness, s.jitter_quantile)) + s.jitter_guard_ms

    def start_samples(self, now: float, utterance: int | None, slot: int) -> int:
        """Samples of ``utterance`` that must be queued at a take at ``now`` for it to start."""
        j = self.jitter_ms() / 1000
        if utterance != self._utterance or not self._offsets:
            return slot + math.ceil(j * self.rate)
        on_time = min(self._offsets) + self._pushed / self.rate  # when its last pushed sample was due
        return max(slot, math.ceil(self.rate * (on_time + slot / self.rate + j - now)))

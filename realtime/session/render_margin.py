"""The render margin of one session, measured: how long after its audio is taken a frame is ready.

A frame ``c`` can be rendered once the audio of slot ``c + lookahead`` is taken; it must be filed
in the output ring before slot ``c`` is sent. The session records each frame's *render time*: its
last needed audio taken -> the frame filed (the engine's feed on the pump's worker thread, waiting
for that worker included, in ms). The margin is a quantile of the last ``window`` render times
plus a guard, so it follows the session's own engine and rises when the machine gets loaded; until
``min_samples`` are measured it is ``margin_start_ms``. A fixed margin ignores the measurements.

Cost: O(1) per recorded frame; ``margin_ms()`` sorts at most ``window`` floats (about 20 us for
250) and is recomputed at most once every ``recompute_every`` records.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from avatarstream.realtime.session.latency import LatencySettings


class RenderMargin:
    def __init__(self, settings: LatencySettings, recompute_every: int = 5) -> None:
        self.settings = settings
        self._times: deque[float] = deque(maxlen=settings.window)
        self._recompute_every = recompute_every
        self._since = 0
        self._margin = settings.margin_ms if settings.margin_ms is not None else settings.margin_start_ms
        self._measured = False  # the margin comes from measurements (not the start value)

    def record(self, render_ms: float) -> None:
        """One frame's render time (its last needed audio taken -> filed), in ms."""
        self._times.append(max(0.0, render_ms))
        self._since += 1

    @property
    def samples(self) -> int:
        return len(self._times)

    def quantile_ms(self, q: float) -> float | None:
        return float(np.percentile(self._times, q)) if self._times else None

    def margin_ms(self) -> float:
        """The margin to plan with now (ms): fixed, or the measured quantile + guard."""
        s = self.settings
        if s.margin_ms is not None or len(self._times) < s.min_samples:
            return self._margin
        if self._since >= self._recompute_every or not self._measured:
            self._since, self._measured = 0, True
            self._margin = float(np.percentile(self._times, s.margin_quantile)) + s.margin_guard_ms
        return self._margin

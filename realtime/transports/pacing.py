"""Pacing a sender on the session clock: which tick it sends next.

Every sender (a WebRTC track, an in-process reader) sends one item per clock tick. It sends the
tick after its last one, so a sender that was briefly late catches up by sending back to back;
once it is more than ``max_lag`` ticks behind the clock it skips to the current tick instead
(drops, counted in ``skipped``), so no sender ever builds a backlog.
"""

from __future__ import annotations


class TickPacer:
    def __init__(self, max_lag: int) -> None:
        self.max_lag = max_lag
        self.last: int | None = None  # the tick last handed out
        self.skipped = 0  # ticks jumped over because the sender was late

    def next(self, now: int) -> int:
        """The tick to send after the last one, given the clock's current tick ``now``."""
        tick = now + 1 if self.last is None else self.last + 1
        if tick < now - self.max_lag:
            self.skipped += now - tick
            tick = now
        self.last = tick
        return tick

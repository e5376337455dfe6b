"""Viewers for session tests: one that only counts as watching (the session renders for it; nothing is sent),
and one that sends each slot at its tick as the tracks do, recording what it sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from avatarstream.realtime.transports.base import ViewerStats

if TYPE_CHECKING:
    from avatarstream.realtime.session.session import AvatarSession


class Watcher:
    """A connected viewer of transport "test" (a ``transports.base.Viewer``); subclass it to read the output."""

    id = "watcher"
    transport = "test"
    state = "connected"
    state_since = 0.0

    def stats(self) -> ViewerStats:
        return ViewerStats()

    async def close(self) -> None:
        """Nothing to hang up."""


class Sink(Watcher):
    """A viewer that sends, at each clock tick m, the frame and audio of slot m - D (as the tracks do)."""

    id = "sink"

    def __init__(self, session: AvatarSession) -> None:
        self.session = session
        self.sent: list[tuple[int, float | None, float]] = []  # (slot, its frame's mouth_open or None, audio rms)

    async def run(self, seconds: float | None = None) -> None:
        """Send the slots of the next ``seconds`` of ticks (25 a second); None: until cancelled."""
        s = self.session
        clock = s.clock
        assert clock is not None
        end = None if seconds is None else clock.current_frame() + int(seconds * 25)
        tick = clock.current_frame() + 1
        while end is None or tick < end:
            await clock.sleep_until(clock.frame_time(tick))
            c = tick - s.delay_frames
            slot = s.output_at(c)
            if slot is not None:
                rms = float(np.sqrt(np.mean(slot.audio.astype(np.float64) ** 2)))
                self.sent.append((c, slot.frame.mouth_open if slot.frame else None, rms))
            tick += 1

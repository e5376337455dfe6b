"""A viewer for session tests that only counts as watching (the session renders for it; nothing is sent)."""

from __future__ import annotations

from avatarstream.realtime.transports.base import ViewerStats


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

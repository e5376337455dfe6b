"""Recently ended WHEP resources, so that their DELETE stays idempotent.

A player closes its peer connection and then DELETEs its resource; by then the server has often
dropped the viewer (the connection closed), or the whole session ended. The resource URL of such
a viewer is remembered here for ``window_s`` seconds with the token that could end it, and its
DELETE answers as if it had ended it (200/204); an id that never existed stays 404.

Memory is bounded: at most ``capacity`` entries (least recently ended dropped first), and an
entry older than the window is gone. The clock is passed in (``time.monotonic`` by default).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

ENDED_WINDOW_S = 60.0
ENDED_CAPACITY = 4096  # ~100 bytes each: under 1 MiB however many players hang up


@dataclass(frozen=True)
class EndedResource:
    """A viewer resource that ended at ``ended_at`` (the store's clock); ``token`` is the session
    token its DELETE needed, ``legacy`` whether it was made by ``POST /whep`` (no token without an API key)."""

    path: str
    token: str
    legacy: bool
    ended_at: float


class EndedResources:
    """A bounded LRU of ended resource paths (``/whep/{id}``, ``/v1/sessions/{id}/whep/{viewer}``)."""

    def __init__(self, *, window_s: float = ENDED_WINDOW_S, capacity: int = ENDED_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError(f"window_s must be > 0 and capacity >= 1, got {window_s}, {capacity}")
        self.window_s = window_s
        self.capacity = capacity
        self._clock = clock
        self._ended: OrderedDict[str, EndedResource] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, path: str, token: str, *, legacy: bool = False) -> None:
        """Remember that ``path`` ended now (again: its time is renewed)."""
        now = self._clock()
        self._ended.pop(path, None)
        self._ended[path] = EndedResource(path, token, legacy, now)
        self._expire(now)
        while len(self._ended) > self.capacity:
            self._ended.popitem(last=False)

    def get(self, path: str) -> EndedResource | None:
        """The resource at ``path`` if it ended within the window, else None."""
        self._expire(self._clock())
        return self._ended.get(path)

    def _expire(self, now: float) -> None:
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if now - oldest.ended_at <= self.window_s:
                break
            self._ended.popitem(last=False)

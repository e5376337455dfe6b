"""The WHEP resources this server handed out, so that their DELETE stays idempotent.

A player closes its peer connection and then DELETEs its resource; by then the server has often
dropped the viewer (the connection closed), or the whole session ended. Every resource URL given in
a ``Location`` is recorded here with the token that may end it (``issue``); when its viewer or
session ends, the record is kept ``window_s`` seconds more (``end``). A DELETE whose resource is no
longer found but is recorded here answers as if it had ended it (200/204), whether the ending has
finished or is still under way; an id that was never handed out stays 404.

Memory is bounded: live records follow the live viewers (each one ends with its viewer), ended
ones are at most ``capacity`` (least recently ended dropped first) and none older than the window.
The clock is passed in (``time.monotonic`` by default).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

ENDED_WINDOW_S = 60.0
ENDED_CAPACITY = 4096  # ~200 bytes each: under 1 MiB however many players hang up


@dataclass(frozen=True)
class IssuedResource:
    """A viewer resource URL; ``token`` is the session token its DELETE needs (or the API key), ``legacy``
    whether ``POST /whep`` made it (no token needed without an API key); ``ended_at`` None while live."""

    path: str
    token: str
    legacy: bool = False
    ended_at: float | None = None


class IssuedResources:
    """Live and recently ended resource paths (``/whep/{id}``, ``/v1/sessions/{id}/whep/{viewer}``)."""

    def __init__(self, *, window_s: float = ENDED_WINDOW_S, capacity: int = ENDED_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError(f"window_s must be > 0 and capacity >= 1, got {window_s}, {capacity}")
        self.window_s = window_s
        self.capacity = capacity
        self._clock = clock
        self._live: dict[str, IssuedResource] = {}
        self._ended: OrderedDict[str, IssuedResource] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live) + len(self._ended)

    def issue(self, path: str, token: str, *, legacy: bool = False) -> None:
        """``path`` was handed out in a ``Location``."""
        self._live[path] = IssuedResource(path, token, legacy)

    def end(self, path: str) -> None:
        """The viewer or session behind ``path`` ended now (idempotent; an unknown path is ignored)."""
        record = self._live.pop(path, None)
        if record is None:
            return
        now = self._clock()
        self._ended[path] = IssuedResource(record.path, record.token, record.legacy, now)
        self._expire(now)
        while len(self._ended) > self.capacity:
            self._ended.popitem(last=False)

    def get(self, path: str) -> IssuedResource | None:
        """The record of ``path`` if it is live or ended within the window, else None."""
        self._expire(self._clock())
        return self._live.get(path) or self._ended.get(path)

    def _expire(self, now: float) -> None:
        while self._ended:
            oldest = next(iter(self._ended.values()))
            assert oldest.ended_at is not None
            if now - oldest.ended_at <= self.window_s:
                break
            self._ended.popitem(last=False)

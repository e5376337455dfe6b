"""Session events: their names (defined here once, shared by the server, the transports and the
client), the event record, and a bus that fans them out to bounded subscriber queues.

An event belongs to a content frame and is emitted at the clock tick that *sends* that frame,
i.e. when its audio actually leaves on the viewers' tracks, not when the audio was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any


class EventType(str, Enum):
    PLAYBACK_STARTED = "playback_started"  # {utterance}
    PLAYBACK_FINISHED = "playback_finished"  # {utterance, playback_position (s), interrupted}
    SPEAKING_STARTED = "speaking_started"  # the engine judged the sent frame to be speech
    SPEAKING_STOPPED = "speaking_stopped"
    ERROR = "error"  # {message}: the session failed and is closing

    def __str__(self) -> str:
        return self.value


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)


@dataclass(frozen=True)
class SessionEvent:
    type: str  # an EventType value
    data: dict[str, Any]
    frame: int  # content frame index the event belongs to
    wall_time: float  # time.time() when emitted


class EventBus:
    """Fan-out of SessionEvents to any number of subscribers, each a bounded queue.

    A slow subscriber loses its oldest events (never blocks the clock); ``None`` in a queue
    means the session is over.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._queues: list[asyncio.Queue[SessionEvent | None]] = []
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue[SessionEvent | None]:
        q: asyncio.Queue[SessionEvent | None] = asyncio.Queue(maxsize=self.maxsize)
        if self._closed:
            q.put_nowait(None)
        else:
            self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[SessionEvent | None]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)

    def emit(self, type_: EventType | str, data: dict[str, Any], frame: int) -> SessionEvent:
        ev = SessionEvent(str(type_), data, frame, time.time())
        for q in self._queues:
            self._put(q, ev)
        return ev

    def close(self) -> None:
        """Tell every subscriber the session is over."""
        self._closed = True
        for q in self._queues:
            self._put(q, None)
        self._queues.clear()

    @staticmethod
    def _put(q: asyncio.Queue[SessionEvent | None], item: SessionEvent | None) -> None:
        if q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
        q.put_nowait(item)

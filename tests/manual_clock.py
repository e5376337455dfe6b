"""Virtual time for session tests: a clock the test moves, and the engine's worker on that clock.

``ManualClock`` is a session's ``clock`` (call it for the time) and ``sleep``: a sleeper returns
when the test has moved the clock past its deadline; ``advance`` wakes due sleepers and timers in
deadline order, each at its deadline + 1 us (as a real loop wakes a little after; a wake-up exactly
on a frame boundary would leave the floor of ``(now - t0) / 40 ms`` to float rounding). Between two
wake-ups the event loop runs until it is idle, so what a session does at each instant is exact and
independent of this machine's speed.

``VirtualWorker`` stands for the engine pump's worker thread: a call runs at once and its result is
delivered ``cost`` seconds of the manual clock later (a render that takes 12 ms, 70 ms ...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
from collections.abc import Callable
from typing import Any

WAKE_AFTER_S = 1e-6
SETTLE_STEPS = 50  # loop iterations that let every task woken at one instant run to its next wait


async def settle() -> None:
    for _ in range(SETTLE_STEPS):
        await asyncio.sleep(0)


class ManualClock:
    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.t

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (deadline, next(self._seq), callback))

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.call_at(self.t + seconds, lambda: fut.done() or fut.set_result(None))
        await fut

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self.t + seconds)

    async def advance_to(self, t: float) -> None:
        """Move to ``t``, waking every sleeper and timer due by then in deadline order."""
        await settle()
        while self._timers and self._timers[0][0] + WAKE_AFTER_S <= t:
            deadline, _, callback = heapq.heappop(self._timers)
            self.t = max(self.t, deadline + WAKE_AFTER_S)
            callback()
            await settle()
        self.t = max(self.t, t)
        await settle()

    def spend(self, seconds: float) -> None:
        """Time passes with the event loop blocked (nothing is woken until the next ``advance``)."""
        self.t += seconds


class VirtualWorker(concurrent.futures.Executor):
    """The engine's worker thread on a ``ManualClock``: ``feed`` calls take ``feed_s`` seconds of it
    (settable between calls), every other call none; ``blocked`` holds every feed's result back."""

    def __init__(self, clock: ManualClock, feed_s: float = 0.0) -> None:
        self.clock = clock
        self.feed_s = feed_s
        self.blocked = False
        self.calls: list[str] = []
        self._held: list[Callable[[], None]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        name = getattr(fn, "__name__", "call")
        self.calls.append(name)
        try:
            result = fn(*args, **kwargs)
            deliver = lambda: fut.set_result(result)  # noqa: E731
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting task, as a thread would
            deliver = lambda err=exc: fut.set_exception(err)  # type: ignore[misc]  # noqa: E731
        cost = self.feed_s if name == "feed" else 0.0
        if self.blocked and name == "feed":
            self._held.append(deliver)
        elif cost > 0:
            self.clock.call_at(self.clock.t + cost, deliver)
        else:
            deliver()
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._held.clear()

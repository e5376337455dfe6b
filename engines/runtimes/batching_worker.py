"""``BatchingWorker``: one thread that runs a shared network for several sessions, their work batched together.

The skeleton of the shared GPU workers (``engines.liveportrait.render_worker``, ``engines.joyvasa.motion_worker``),
written once; a worker says only how it batches.

* **Queue**: each session's requests wait in their own FIFO; a request holds ``units`` (frames, windows) that
  may go into different batches. At most ``max_pending`` units wait: a submit beyond that blocks up to its timeout
  and then raises the worker's ``queue_full`` error; a request larger than the whole queue is refused at once.
* **Fairness**: a free batch slot goes to the session with the fewest units in flight (those taken and not yet
  released), ties in round-robin order, so a session with a backlog never starves the others.
* **Deadline**: with nothing in flight, the worker waits at most ``max_wait_ms`` after the first unit for
  ``_batch_target()`` units to gather (other sessions joining the batch), then takes what is there.
* **Clock**: the deadline and when each session was last seen are read on ``clock`` (seconds, monotonic;
  default ``time.monotonic``): a test passes its own and the batching decisions no longer depend on this
  machine's speed. The waits themselves are real condition waits, re-checked against ``clock`` as they end
  (on a clock that stands still the deadline never comes: only the awaited units end the wait). The submit
  timeout (a full queue) is real time: it bounds how long a caller's thread blocks.
* **Cancel**: a leaving session's queued requests are dropped and their futures cancelled; in-flight work is
  the worker's to drop (``_cancel_in_flight``). **Close**: stop taking work, fail what is queued with "the ...
  worker is closed", join the thread, fail what is in flight (``_fail_in_flight``).

A subclass implements ``_process(taken)``: the (request, unit index) pairs just taken, run on the worker thread
outside the lock; it calls ``_release(session)`` once per unit as each finishes (the fairness count). Continuous
batching (units that stay in flight across loop turns) overrides ``_busy`` and ``_room``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, Hashable, TypeVar

from avatarstream.engines.base import EngineError

P = TypeVar("P")


@dataclass(eq=False)
class QueuedRequest(Generic[P]):
    """One submit: ``units`` pieces of work of one session (``payload`` says what), answered by ``future``."""

    session: Hashable
    payload: P
    units: int
    future: Future = field(default_factory=Future)
    taken: int = 0  # units already put into a batch (the next unit's index)

    @property
    def remaining(self) -> int:
        return self.units - self.taken


def resolve_future(future: Future, value: Any) -> None:
    """Set ``future``'s result unless its session cancelled it meanwhile."""
    try:
        future.set_result(value)
    except InvalidStateError:
        pass


def fail_future(future: Future, exc: BaseException) -> None:
    """Set ``future``'s exception unless it is already done (cancelled or answered)."""
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass


class BatchingWorker(Generic[P]):
    """Queue, fairness, deadline, cancel and close of a shared batching worker; see the module docstring."""

    label: ClassVar[str] = "batching"  # "the <label> queue stayed full", "the <label> worker is closed"
    unit: ClassVar[str] = "units"  # what a request's units are, in messages ("frames", "windows")
    queue_full: ClassVar[type[EngineError]] = EngineError  # raised when the queue stays full for a submit's timeout

    def __init__(self, *, max_batch: int, max_wait_ms: float, max_pending: int, name: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Starts the worker thread: a subclass sets its own state first, then calls this."""
        self.clock = clock
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_pending = max_pending
        self._queues: OrderedDict[Hashable, deque[QueuedRequest[P]]] = OrderedDict()  # session -> FIFO
        self._pending = 0  # units queued, not yet taken
        self._in_flight: dict[Hashable, int] = {}  # session -> units taken and not released (under the lock)
        self._last_seen: dict[Hashable, float] = {}  # session -> its last submit or released unit (under the lock)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- sessions' side ------------------------------------------------------------------------

    def _enqueue(self, request: QueuedRequest[P], timeout: float) -> Future:
        """Queue ``request`` (blocking up to ``timeout`` seconds for room); returns its future."""
        if request.units > self.max_pending:
            raise EngineError(f"{request.units} {self.unit} in one request exceed the {self.label} queue "
                              f"({self.max_pending})")
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._pending + request.units > self.max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.queue_full(f"the {self.label} queue stayed full ({self._pending} {self.unit}) "
                                          f"for {timeout:.1f} s")
                self._cond.wait(left)
            if self._closed:
                raise EngineError(f"the {self.label} worker is closed")
            self._queues.setdefault(request.session, deque()).append(request)
            self._pending += request.units
            self._last_seen[request.session] = self.clock()
            self._cond.notify_all()
        return request.future

    def cancel(self, session: Hashable) -> int:
        """Drop a leaving session's queued units (futures cancelled) and what ``_cancel_in_flight`` drops of its
        work in flight; returns how many units."""
        with self._cond:
            requests = self._queues.pop(session, deque())
            dropped = sum(r.remaining for r in requests)
            self._pending -= dropped
            self._last_seen.pop(session, None)
            self._cond.notify_all()
        for r in requests:
            r.future.cancel()
        return dropped + self._cancel_in_flight(session)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, fail what is queued, join the worker thread, fail what is still in flight."""
        with self._cond:
            self._closed = True
            queued = [r for q in self._queues.values() for r in q]
            self._queues.clear()
            self._pending = 0
            self._cond.notify_all()
        for r in queued:
            fail_future(r.future, EngineError(f"the {self.label} worker is closed"))
        self._thread.join(timeout)
        self._fail_in_flight(EngineError(f"the {self.label} worker is closed"))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- how a worker batches (overridden) ------------------------------------------------------

    def _process(self, taken: list[tuple[QueuedRequest[P], int]]) -> None:
        """Run the units just taken (worker thread, outside the lock); ``_release`` each as it finishes."""
        raise NotImplementedError

    def _busy(self) -> bool:
        """Units stay in flight across loop turns (continuous batching): the loop runs without new work."""
        return False

    def _room(self) -> int:
        """How many units the next batch may take."""
        return self.max_batch

    def _batch_target(self) -> int:
        """How many queued units the idle worker waits for, at most ``max_wait_ms`` (under the lock)."""
        return self.max_batch

    def _cancel_in_flight(self, session: Hashable) -> int:
        """Drop ``session``'s work in flight; returns how many units (default: in-flight work completes)."""
        return 0

    def _fail_in_flight(self, exc: EngineError) -> None:
        """After close: fail what is still in flight (default: nothing stays in flight)."""

    # -- for subclasses -------------------------------------------------------------------------

    def _release(self, *sessions: Hashable) -> None:
        """One unit of each of ``sessions`` finished (or failed): it no longer counts as in flight."""
        now = self.clock()
        with self._cond:
            for session in sessions:
                if session in self._last_seen:  # not after a cancel
                    self._last_seen[session] = now
                left = self._in_flight.get(session, 0) - 1
                if left > 0:
                    self._in_flight[session] = left
                else:
                    self._in_flight.pop(session, None)

    def _recent_sessions(self, within_s: float) -> int:
        """How many sessions submitted or got work back in the last ``within_s`` seconds (under the lock)."""
        now = self.clock()
        for session in [s for s, t in self._last_seen.items() if now - t > within_s]:
            del self._last_seen[session]
        return len(self._last_seen)

    # -- the worker thread ----------------------------------------------------------------------

    def _take(self, room: int) -> list[tuple[QueuedRequest[P], int]]:
        """Up to ``room`` units, fewest-in-flight session first, ties round-robin. Caller holds the lock."""
        taken: list[tuple[QueuedRequest[P], int]] = []
        counts = dict(self._in_flight)
        while len(taken) < room and self._queues:
            order = list(self._queues)
            session = order[min(range(len(order)), key=lambda i: (counts.get(order[i], 0), i))]
            queue = self._queues[session]
            request = queue[0]
            if request.future.cancelled():  # cancelled by its caller: none of its units run
                self._pending -= request.remaining
                request.taken = request.units
            else:
                taken.append((request, request.taken))
                request.taken += 1
                self._pending -= 1
                counts[session] = counts.get(session, 0) + 1
                self._in_flight[session] = self._in_flight.get(session, 0) + 1
            if request.remaining == 0:
                queue.popleft()
            if not queue:
                del self._queues[session]
            else:
                self._queues.move_to_end(session)
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queues and not self._busy():
                    self._cond.wait()
                if self._closed:
                    return
                if not self._busy():  # nothing in flight: let other sessions join the batch for a short while
                    until = self.clock() + self.max_wait_s
                    target = self._batch_target()
                    while not self._closed and self._pending < target:
                        left = until - self.clock()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._closed:
                        return
                taken = self._take(self._room())
                self._cond.notify_all()  # room in the queue
            self._process(taken)

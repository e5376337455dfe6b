"""The batching worker base (engines/runtimes/batching_worker.py) on its own: a worker that only records its
batches, so queue, fairness, deadline, cancel and close are checked without a network (the render and motion
workers' own tests check them with theirs)."""

from __future__ import annotations

import threading
import time

import pytest

from avatarstream.engines.base import EngineError
from avatarstream.engines.runtimes.batching_worker import BatchingWorker, QueuedRequest, resolve_future


class Full(EngineError):
    pass


class Recorder(BatchingWorker[str]):
    """Each unit's result is its request's payload and index; a batch waits for ``gate`` before running."""

    label = "test"
    unit = "items"
    queue_full = Full

    def __init__(self, **kw) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        super().__init__(name="test-worker", **kw)

    def submit(self, session: str, payload: str, units: int = 1, timeout: float = 5.0):
        return self._enqueue(QueuedRequest(session, payload, units), timeout)

    def _process(self, taken) -> None:
        self.entered.set()
        self.gate.wait(30)
        self.batches.append([f"{r.payload}{i}" for r, i in taken])
        for r, i in taken:
            if i == r.units - 1:
                resolve_future(r.future, r.payload)
        self._release(*(r.session for r, _ in taken))


def test_units_of_waiting_sessions_are_taken_one_per_session_in_turn():
    worker = Recorder(max_batch=4, max_wait_ms=0, max_pending=32)
    try:
        worker.gate.clear()
        first = worker.submit("a", "x")  # the worker blocks on this batch
        assert worker.entered.wait(5)
        hog = worker.submit("a", "a", units=6)
        newcomer = worker.submit("b", "b", units=2)
        worker.gate.set()
        for f in (first, hog, newcomer):
            f.result(5)
    finally:
        worker.close()
    # b, queued after a's six units, shares the first batch after the blocked one: one unit per session in turn
    assert worker.batches[1] == ["a0", "b0", "a1", "b1"], worker.batches
    assert [u for batch in worker.batches for u in batch].count("a5") == 1


def test_an_idle_worker_waits_its_deadline_for_company_then_runs_alone():
    """On an injected clock: the lone unit waits until the clock reaches its deadline, however long that takes
    in real time; two units submitted one after the other share a batch, however far apart they come."""
    now = [1000.0]
    worker = Recorder(max_batch=2, max_wait_ms=300, max_pending=8, clock=lambda: now[0])
    try:
        alone = worker.submit("a", "a")
        time.sleep(0.4)  # more than the deadline in real time: the worker's clock has not moved
        assert not alone.done() and worker.batches == []
        now[0] += 0.3  # the deadline: the worker sees it at its next check (a real wait of at most 0.3 s)
        alone.result(10)
        first = worker.submit("a", "a")
        time.sleep(0.4)  # the second arrives 'late' in real time, within the deadline on the worker's clock
        second = worker.submit("b", "b")
        for f in (first, second):
            f.result(10)
    finally:
        worker.close()
    assert worker.batches == [["a0"], ["a0", "b0"]], worker.batches


def test_bounded_queue_cancel_and_close():
    worker = Recorder(max_batch=1, max_wait_ms=0, max_pending=3)
    worker.gate.clear()
    try:
        running = worker.submit("a", "r")
        assert worker.entered.wait(5)
        with pytest.raises(EngineError, match="4 items in one request exceed the test queue"):
            worker.submit("a", "big", units=4)
        queued = worker.submit("a", "q", units=2)
        other = worker.submit("b", "o")
        with pytest.raises(Full, match=r"the test queue stayed full \(3 items\) for 0.1 s"):
            worker.submit("c", "c", timeout=0.1)
        assert worker.cancel("a") == 2 and queued.cancelled()
        room = worker.submit("c", "c", units=2, timeout=0.1)  # cancel made room
        closer = threading.Thread(target=worker.close)
        closer.start()
        time.sleep(0.1)
        worker.gate.set()
        closer.join(10)
    finally:
        worker.gate.set()
        worker.close()
    assert running.result(1) == "r"  # the batch in flight completes
    for f in (other, room):
        with pytest.raises(EngineError, match="the test worker is closed"):
            f.result(1)
    assert not worker.alive
    with pytest.raises(EngineError, match="closed"):
        worker.submit("d", "d")

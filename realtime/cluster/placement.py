"""The front's view of the cluster: which workers are up with how many free slots, which session
lives where, and which sessions were lost with their worker. Pure bookkeeping (no Ray, no I/O),
used from the front's event loop only.

* A worker is known from its status reports (``WorkerStatus``, polled through Ray by
  ``membership.py``). Its used slots are the union of the sessions it reported and the sessions
  this front placed there since, plus the creations in flight; a worker that is down,
  unresponsive or draining takes no new session.
* ``choose`` picks the placeable worker with the most free slots (ties: the one placed on least
  recently), so sessions spread over the workers.
* A session is lost when its worker dies, disappears from Ray, or comes back as a new
  incarnation (Ray restarted the actor: its sessions died with the old process). A lost session
  answers 410 ``session_lost`` for ``LOST_KEEP`` entries; a session missing from its worker's
  report of the same incarnation ended normally (deleted, idle) and is forgotten (404).
* A session a worker reports that this front does not know (it was placed by a front that has
  since restarted, or created on the worker directly) is adopted: the worker reports each
  session's token digest (``token_digest``), so the front authorises its routes again without
  ever having seen the token. Adopted and placed sessions are one table: none is counted twice.
* ``watch(session_id)`` is a future resolved with ``"session_lost"`` or ``"session_ended"``
  (the front's event stream).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

LOST_KEEP = 10_000  # lost sessions remembered (410) before the oldest is forgotten (404)
LOST = "session_lost"
ENDED = "session_ended"


def token_digest(token: str) -> str:
    """What the front keeps of a session's token (and a worker reports): its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker reports (``worker.py``)."""

    worker_id: str
    url: str  # base URL of its HTTP server (sessions' WHEP, agent and watch URLs)
    slots: int  # concurrent sessions it may run
    incarnation: str  # new for every (re)start of the worker process
    sessions: tuple[str, ...]  # ids of its running sessions
    draining: bool
    pid: int
    node_ip: str
    capacity: dict = field(default_factory=dict)  # the admission snapshot (/health "capacity")
    token_digests: dict[str, str] = field(default_factory=dict)  # session id -> token_digest(its token)


@dataclass
class WorkerState:
    status: WorkerStatus
    alive: bool = True  # False: Ray reports it dead or restarting
    responsive: bool = True  # False: its last status call timed out
    last_report: float = 0.0  # monotonic time of the last status
    pending: int = 0  # creations in flight through this front
    placed: set[str] = field(default_factory=set)  # sessions placed here by this front since its incarnation
    last_placed: float = 0.0

    @property
    def worker_id(self) -> str:
        return self.status.worker_id

    @property
    def used(self) -> int:
        return len(set(self.status.sessions) | self.placed) + self.pending

    @property
    def free(self) -> int:
        return max(0, self.status.slots - self.used)

    @property
    def placeable(self) -> bool:
        return self.alive and self.responsive and not self.status.draining and self.free > 0


@dataclass(frozen=True)
class SessionRoute:
    session_id: str
    worker_id: str
    incarnation: str
    token: str  # token_digest of the session's token (the front authorises session routes itself)
    url: str  # the worker's base URL
    created: float  # monotonic
    adopted: bool = False  # learnt from the worker's report, not placed by this front


@dataclass(frozen=True)
class LostSession:
    session_id: str
    worker_id: str
    token: str  # token_digest
    reason: str
    at: float  # time.time()


class PlacementTable:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.routes: dict[str, SessionRoute] = {}
        self.lost: OrderedDict[str, LostSession] = OrderedDict()
        self.lost_total = 0
        self.adopted_total = 0  # sessions learnt from workers' reports (a restarted front)
        self.placements: dict[str, int] = {}  # worker id -> sessions placed there by this front
        self._watchers: dict[str, list[asyncio.Future[str]]] = {}

    # -- worker reports ------------------------------------------------------------------------
    def update(self, status: WorkerStatus, polled_at: float) -> list[str]:
        """A status taken at or after ``polled_at`` (monotonic, before the call). Returns sessions lost."""
        state = self.workers.get(status.worker_id)
        lost: list[str] = []
        if state is None:
            state = self.workers[status.worker_id] = WorkerState(status)
        elif state.status.incarnation != status.incarnation:
            lost = self._lose_worker_sessions(status.worker_id, "the worker restarted; its sessions ended with it")
            state.status, state.placed = status, set()
        else:
            state.status = status
        state.alive, state.responsive, state.last_report = True, True, time.monotonic()
        running = set(status.sessions)
        for sid, route in list(self.routes.items()):
            if route.worker_id == status.worker_id and sid not in running and route.created < polled_at:
                self.forget(sid)  # ended on the worker (deleted there, idle timeout, failure)
        for sid in status.sessions:
            digest = status.token_digests.get(sid)
            if sid not in self.routes and sid not in self.lost and digest is not None:
                self.routes[sid] = SessionRoute(sid, status.worker_id, status.incarnation, digest, status.url,
                                                time.monotonic(), adopted=True)
                self.adopted_total += 1
        state.placed &= set(self.routes)
        return lost

    def mark_dead(self, worker_id: str, reason: str) -> list[str]:
        """Ray reports the worker dead or restarting: stop placing there; its sessions are lost."""
        state = self.workers.get(worker_id)
        if state is not None:
            state.alive = False
            state.placed = set()
        return self._lose_worker_sessions(worker_id, reason)

    def mark_unresponsive(self, worker_id: str) -> None:
        """A status call timed out: no new sessions there until it answers again."""
        state = self.workers.get(worker_id)
        if state is not None:
            state.responsive = False

    def remove(self, worker_id: str, reason: str) -> list[str]:
        """The worker left the cluster."""
        lost = self._lose_worker_sessions(worker_id, reason)
        self.workers.pop(worker_id, None)
        return lost

    def _lose_worker_sessions(self, worker_id: str, reason: str) -> list[str]:
        lost = [sid for sid, r in self.routes.items() if r.worker_id == worker_id]
        for sid in lost:
            route = self.routes.pop(sid)
            self.lost[sid] = LostSession(sid, worker_id, route.token, reason, time.time())
            self.lost_total += 1
            self._resolve(sid, LOST)
        while len(self.lost) > LOST_KEEP:
            self.lost.popitem(last=False)
        return lost

    # -- placement -----------------------------------------------------------------------------
    def choose(self, exclude: set[str] | frozenset[str] = frozenset()) -> WorkerState | None:
        """The placeable worker with the most free slots (ties: least recently placed on), or None."""
        candidates = [w for w in self.workers.values() if w.placeable and w.worker_id not in exclude]
        if not candidates:
            return None
        return max(candidates, key=lambda w: (w.free, -w.last_placed, w.worker_id))

    def record(self, session_id: str, worker: WorkerState, token: str) -> SessionRoute:
        """A session this front placed on ``worker`` (``token``: the session's token, kept as its digest)."""
        route = SessionRoute(session_id, worker.worker_id, worker.status.incarnation, token_digest(token),
                             worker.status.url, time.monotonic())
        self.routes[session_id] = route
        worker.placed.add(session_id)
        worker.last_placed = time.monotonic()
        self.placements[worker.worker_id] = self.placements.get(worker.worker_id, 0) + 1
        return route

    def forget(self, session_id: str) -> None:
        """The session ended (deleted through the front, or gone from its worker's report)."""
        route = self.routes.pop(session_id, None)
        if route is not None:
            state = self.workers.get(route.worker_id)
            if state is not None:  # its slot is free now, not at the worker's next report
                state.placed.discard(session_id)
                if session_id in state.status.sessions:
                    state.status = replace(state.status,
                                           sessions=tuple(s for s in state.status.sessions if s != session_id))
            self._resolve(session_id, ENDED)

    @property
    def free_slots(self) -> int:
        return sum(w.free for w in self.workers.values() if w.placeable)

    # -- the event stream ----------------------------------------------------------------------
    def watch(self, session_id: str) -> asyncio.Future[str]:
        """Resolved with ``session_lost`` or ``session_ended`` when the session goes."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if session_id in self.lost:
            future.set_result(LOST)
        elif session_id not in self.routes:
            future.set_result(ENDED)
        else:
            self._watchers.setdefault(session_id, []).append(future)
        return future

    def unwatch(self, session_id: str, future: asyncio.Future[str]) -> None:
        futures = self._watchers.get(session_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._watchers.pop(session_id, None)

    def _resolve(self, session_id: str, kind: str) -> None:
        for future in self._watchers.pop(session_id, []):
            if not future.done():
                future.set_result(kind)

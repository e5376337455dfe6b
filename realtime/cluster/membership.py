"""Watches the cluster's workers through Ray and keeps the placement table current.

Every ``interval`` seconds: list the named worker actors of the ``avatarstream`` namespace, and
call ``status()`` on each (one call in flight per worker). Ray's answer decides:

* a status: the worker is up (a new incarnation means Ray restarted it: its old sessions are lost);
* ``RayActorError`` (the actor died, or is restarting after its process died): its sessions are
  lost now, and it takes no new session until a status comes back;
* no answer within ``call_timeout``: no new sessions there; its sessions are kept (a busy worker
  is not a dead one);
* its name gone from Ray: it left the cluster (its owner stopped it, or Ray declared its node dead
  and the actor died with it: the reason says which); its sessions are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from avatarstream.realtime.cluster.placement import PlacementTable, WorkerStatus
from avatarstream.realtime.cluster.worker import ACTOR_PREFIX, NAMESPACE

log = logging.getLogger(__name__)


class WorkerWatcher:
    def __init__(self, table: PlacementTable, *, interval: float = 1.0, call_timeout: float = 3.0,
                 on_lost: Callable[[list[str]], None] | None = None) -> None:
        self.table = table
        self.interval = interval
        self.call_timeout = call_timeout
        self._on_lost = on_lost
        self._handles: dict[str, ActorHandle] = {}
        self._in_flight: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None
        self.polls = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-watcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None
        self._in_flight.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # Ray briefly unreachable: keep watching
                log.exception("cluster watcher: poll failed")
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        names = await loop.run_in_executor(None, lambda: ray.util.list_named_actors(all_namespaces=True))
        current = {e["name"][len(ACTOR_PREFIX):] for e in names
                   if e.get("namespace") == NAMESPACE and e["name"].startswith(ACTOR_PREFIX)}
        gone = [w for w in set(self.table.workers) | set(self._handles) if w not in current]
        dead_ips = await loop.run_in_executor(None, _dead_node_ips) if gone else set()
        for worker_id in gone:
            self._handles.pop(worker_id, None)
            state = self.table.workers.get(worker_id)
            if state is not None and state.status.node_ip in dead_ips:
                reason = f"Ray declared the worker's node ({state.status.node_ip}) dead"
            else:
                reason = "the worker left the cluster"
            self._lost(self.table.remove(worker_id, reason))
        for worker_id in current:
            if worker_id not in self._handles:
                name = ACTOR_PREFIX + worker_id
                try:
                    self._handles[worker_id] = await loop.run_in_executor(
                        None, functools.partial(ray.get_actor, name, namespace=NAMESPACE))
                except ValueError:  # gone between the listing and now
                    continue
            task = self._in_flight.get(worker_id)
            if task is None or task.done():
                self._in_flight[worker_id] = loop.create_task(self._poll(worker_id), name=f"poll-{worker_id}")
        await asyncio.sleep(0)
        self.polls += 1

    async def _poll(self, worker_id: str) -> None:
        handle = self._handles.get(worker_id)
        if handle is None:
            return
        polled_at = time.monotonic()
        call = asyncio.ensure_future(_await(handle.status.remote()))
        try:
            done, _ = await asyncio.wait({call}, timeout=self.call_timeout)
            if not done:  # no new sessions there meanwhile; the same call is awaited on (no pile-up)
                self.table.mark_unresponsive(worker_id)
            status = await call
        except RayActorError as exc:
            log.warning("worker %s is down (%s)", worker_id, type(exc).__name__)
            self._lost(self.table.mark_dead(worker_id, f"the worker died ({type(exc).__name__})"))
            return
        except Exception as exc:  # its status() raised (e.g. its server cannot bind), or Ray failed the call
            log.warning("worker %s did not report: %s", worker_id, exc)
            self.table.mark_unresponsive(worker_id)
            return
        finally:
            call.cancel()
        self._lost(self.table.update(status, polled_at))

    def _lost(self, session_ids: list[str]) -> None:
        if session_ids:
            log.warning("sessions lost: %s", ", ".join(session_ids))
            if self._on_lost is not None:
                self._on_lost(session_ids)

    async def drain(self, worker_id: str, draining: bool) -> WorkerStatus | None:
        """Set a worker's draining flag; None if no such worker."""
        handle = self._handles.get(worker_id)
        if handle is None:
            return None
        polled_at = time.monotonic()
        status: WorkerStatus = await asyncio.wait_for(_await(handle.drain.remote(draining)), self.call_timeout * 4)
        self._lost(self.table.update(status, polled_at))
        return status


def _dead_node_ips() -> set[str]:
    """Addresses of the nodes Ray lists as dead (and of none alive there: a machine that rejoined)."""
    nodes = ray.nodes()
    alive = {n["NodeManagerAddress"] for n in nodes if n.get("Alive")}
    return {n["NodeManagerAddress"] for n in nodes if not n.get("Alive")} - alive


async def _await(ref: ray.ObjectRef) -> WorkerStatus:
    return await ref

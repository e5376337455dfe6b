"""A cluster worker: a Ray actor that runs today's server (``realtime/http/app.py``) in-process on
its own HTTP address, so media (WebRTC, the agent WebSocket) goes straight to it, never through
the front.

The actor is an async Ray actor: its methods and the aiohttp server share the actor's event loop.
The server starts on the first ``start()``/``status()`` call (the front polls ``status()`` every
second, so a worker Ray restarted after a crash comes back by itself, as a new ``incarnation``).
One worker per GPU (``num_gpus=1``) or, for the lite engine, per group of CPU slots; ``slots`` is
its session cap (``ServerConfig.max_sessions``). ``drain()`` sets the registry's draining flag:
no new sessions (503), the running ones go on.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import ray
from aiohttp import web
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from avatarstream.realtime.cluster.placement import WorkerStatus, token_digest
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.app import PathOnlyAccessLogger, create_app
from avatarstream.realtime.http.keys import REGISTRY

NAMESPACE = "avatarstream"  # Ray namespace of the worker actors (named, so the front finds them)
ACTOR_PREFIX = "avatar-worker-"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: str  # unique in the cluster; the actor is named ACTOR_PREFIX + worker_id
    slots: int  # concurrent sessions (the server's max_sessions)
    host: str = "127.0.0.1"  # address the HTTP server binds
    port: int = 0  # 0: a free port (a restarted worker may get another)
    advertise_host: str | None = None  # host in the sessions' URLs; default: host, or the node's IP for 0.0.0.0
    num_gpus: float = 0.0  # Ray GPUs the actor holds (1 for a neural engine on its own GPU)
    server: dict[str, Any] = field(default_factory=dict)  # further ServerConfig fields (engine, image, api_key ...)

    def __post_init__(self) -> None:
        if not self.worker_id or not all(c.isalnum() or c in "-_." for c in self.worker_id):
            raise ValueError(f"worker id must be letters, digits, '-', '_' or '.', got {self.worker_id!r}")
        if self.slots < 1:
            raise ValueError(f"a worker needs at least 1 slot, got {self.slots}")
        reserved = {"max_sessions", "host", "port", "portrait", "engine_loader"} & set(self.server)
        if reserved:
            raise ValueError(f"set {', '.join(sorted(reserved))} through the worker spec, not its server options")

    def config(self) -> ServerConfig:
        return ServerConfig(max_sessions=self.slots, host=self.host, port=self.port, **self.server)


def actor_name(worker_id: str) -> str:
    return ACTOR_PREFIX + worker_id


class AvatarWorker:
    """The actor's class (``WorkerActor`` is its Ray form)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.incarnation = uuid.uuid4().hex[:12]
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> WorkerStatus:
        """Start the HTTP server if it is not running (idempotent); returns the status."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._runner is None:
                runner = web.AppRunner(create_app(self.spec.config()), access_log_class=PathOnlyAccessLogger)
                await runner.setup()  # loads the engine and prepares the portrait (on_startup)
                site = web.TCPSite(runner, self.spec.host, self.spec.port)
                await site.start()
                port = runner.addresses[0][1]
                host = self.spec.advertise_host or self.spec.host
                if host in WILDCARD_HOSTS:
                    host = ray.util.get_node_ip_address()
                self._url = f"http://{_url_host(host)}:{port}"
                self._runner = runner
        return self._status()

    async def status(self) -> WorkerStatus:
        return await self.start()

    async def drain(self, draining: bool = True) -> WorkerStatus:
        """Take no new sessions (``draining``) or take them again; running sessions go on."""
        await self.start()
        assert self._runner is not None
        self._runner.app[REGISTRY].draining = draining
        return self._status()

    async def stop(self) -> None:
        """Close every session and the HTTP server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _status(self) -> WorkerStatus:
        assert self._runner is not None and self._url is not None
        registry = self._runner.app[REGISTRY]
        running = [s for s in registry if not s.closed]
        return WorkerStatus(worker_id=self.spec.worker_id, url=self._url, slots=self.spec.slots,
                            incarnation=self.incarnation, sessions=tuple(s.id for s in running),
                            draining=registry.draining, pid=os.getpid(), node_ip=ray.util.get_node_ip_address(),
                            capacity=registry.load.snapshot(),
                            token_digests={s.id: token_digest(s.token) for s in running})


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


WorkerActor = ray.remote(AvatarWorker)


def start_worker(spec: WorkerSpec, *, node_id: str | None = None, max_restarts: int = -1) -> ActorHandle:
    """Create the worker actor (Ray restarts it up to ``max_restarts`` times, -1: always) in the
    ``avatarstream`` namespace; ``node_id`` pins it to a node (``avatar cluster worker`` pins it to
    the machine it runs on). The actor lives as long as the process that created it."""
    strategy: Any = NodeAffinitySchedulingStrategy(node_id, soft=False) if node_id else "DEFAULT"
    handle = WorkerActor.options(
        name=actor_name(spec.worker_id), namespace=NAMESPACE, max_restarts=max_restarts, max_task_retries=0,
        num_cpus=0, num_gpus=spec.num_gpus, scheduling_strategy=strategy).remote(spec)
    return cast(ActorHandle, handle)

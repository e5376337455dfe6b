"""``avatar cluster``: sessions across machines on Ray (docs/scale-out.md; needs the ``cluster`` extra).

    avatar cluster head [--address ADDR] [--workers N --slots S]   the front (and a Ray head unless --address)
    avatar cluster worker --address ADDR --slots N [--join]         a worker actor on this machine
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from avatarstream.cli.backend_options import resolve_size
from avatarstream.cli.serve import add_capacity_arguments, capacity_options
from avatarstream.engines.base import EngineError
from avatarstream.engines.registry import engine_capabilities
from avatarstream.realtime.config import API_KEY_ENV, DEFAULT_ENGINE

NEEDS_RAY = "avatar cluster needs Ray: pip install 'avatarstream[cluster]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="role", metavar="ROLE", required=True)
    head = sub.add_parser("head", help="the front (same HTTP API as avatar serve) placing sessions on the workers")
    head.add_argument("--address", default=None,
                      help="Ray cluster to join (e.g. auto, or HOST:6379 of 'ray start --head'); "
                           "default: start Ray in this process (other machines join its printed address)")
    head.add_argument("--num-cpus", type=int, default=None, help="CPUs of the in-process Ray node (default: all)")
    head.add_argument("--host", default="127.0.0.1", help="front address (default: %(default)s)")
    head.add_argument("--port", type=int, default=8080, help="front port (default: %(default)s)")
    head.add_argument("--node-ip-address", default=None,
                      help="this machine's address in the Ray cluster, with --address (default: --host when it is "
                           "an IP address other than 0.0.0.0, else Ray's guess)")
    head.add_argument("--poll-interval", type=float, default=1.0,
                      help="seconds between the front's status calls to each worker (default: %(default)s)")
    head.add_argument("--call-timeout", type=float, default=3.0,
                      help="seconds a status call may take before the worker takes no new sessions "
                           "(default: %(default)s)")
    head.add_argument("--workers", type=int, default=0,
                      help="also start this many worker actors on this machine (default: %(default)s)")
    _add_common(head)

    worker = sub.add_parser("worker", help="start a worker actor on this machine (one per GPU, or per CPU slot group)")
    worker.add_argument("--address", required=True, help="the Ray cluster (HOST:6379, or auto)")
    worker.add_argument("--join", action="store_true",
                        help="first add this machine to the cluster ('ray start --address ADDR'); "
                             "without it a Ray node must already run here (ray start, KubeRay)")
    worker.add_argument("--worker-id", default=None, help="unique worker name (default: HOSTNAME-PID)")
    worker.add_argument("--host", default="127.0.0.1",
                        help="address the worker's HTTP server binds (0.0.0.0 for other machines; needs an API key)")
    worker.add_argument("--port", type=int, default=0, help="its port (default: a free one)")
    worker.add_argument("--advertise-host", default=None,
                        help="host put in the sessions' URLs (default: --host, or this node's IP for 0.0.0.0)")
    worker.add_argument("--node-ip-address", default=None,
                        help="this machine's address in the Ray cluster (default: --advertise-host when it is an "
                             "IP address, else Ray's guess from the default route)")
    worker.add_argument("--num-gpus", type=float, default=0.0, help="GPUs the worker holds (default: %(default)s)")
    worker.add_argument("--drain-timeout", type=float, default=600.0,
                        help="on SIGTERM/Ctrl-C: drain, then wait this long for sessions to end (default: %(default)s)")
    _add_common(worker)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slots", type=int, default=4, help="sessions per worker (default: %(default)s)")
    p.add_argument("--engine", default=DEFAULT_ENGINE, help="engine of the workers (default: %(default)s)")
    p.add_argument("--image", default=None, help="the workers' default portrait (file or demo name)")
    p.add_argument("--weights", default=None, help="checkpoint directory for neural engines")
    p.add_argument("--size", type=int, default=None, help="video width and height (default: the engine's)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN/TURN server URL the workers offer their viewers (repeatable)")
    p.add_argument("--api-key", default=None,
                   help=f"API key of the front and the workers (default: ${API_KEY_ENV}; none on loopback)")
    p.add_argument("--insecure", action="store_true", help="serve beyond loopback without an API key")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_capacity_arguments(p)


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields of the workers."""
    size = resolve_size(engine_capabilities(args.engine), args.size)
    options: dict[str, Any] = {"engine": args.engine, "image": args.image, "size": size,
                               "ice_servers": list(args.ice_server), "api_key": args.api_key or "",
                               **capacity_options(args)}
    if args.weights:
        options["weights"] = args.weights
    return options


def _api_key(args: argparse.Namespace) -> None:
    args.api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key and not args.insecure:
        raise EngineError(f"--host {args.host} makes the server reachable from other machines: set an API key "
                          f"(--api-key or ${API_KEY_ENV}), or pass --insecure")
    if args.slots < 1:
        raise EngineError("--slots must be at least 1")


def run(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401  (the cluster extra)
    except ImportError:
        raise EngineError(NEEDS_RAY) from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _api_key(args)
    return _head(args) if args.role == "head" else _worker(args)


def _head(args: argparse.Namespace) -> int:
    import asyncio

    import ray
    from aiohttp import web

    from avatarstream.realtime.cluster.front import FrontConfig, create_front_app
    from avatarstream.realtime.cluster.worker import NAMESPACE, WorkerSpec, start_worker
    from avatarstream.realtime.http.app import PathOnlyAccessLogger

    server = _server_options(args)
    if args.address:
        node_ip = args.node_ip_address or (_ip_literal(args.host) if args.host not in ("0.0.0.0", "::") else None)
        ray.init(address=args.address, namespace=NAMESPACE, configure_logging=False, _node_ip_address=node_ip)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, namespace=NAMESPACE, configure_logging=False)
        print(f"avatar cluster head: Ray started here; workers join with "
              f"'avatar cluster worker --join --address {ray.get_runtime_context().gcs_address}'", flush=True)
    handles = [start_worker(WorkerSpec(f"{socket.gethostname()}-{i}", slots=args.slots, server=server))
               for i in range(args.workers)]
    app = create_front_app(FrontConfig(host=args.host, port=args.port, api_key=args.api_key or "",
                                       insecure=args.insecure, poll_interval=args.poll_interval,
                                       call_timeout=args.call_timeout))
    print(f"avatar cluster head: front on http://{args.host}:{args.port}/ ({len(handles)} local worker(s))",
          flush=True)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, loop=asyncio.new_event_loop(),
                    access_log_class=PathOnlyAccessLogger)
    finally:
        for h in handles:
            ray.kill(h, no_restart=True)
        ray.shutdown()
    return 0


def _ip_literal(host: str | None) -> str | None:
    """``host`` when it is an IP address (a name is left to Ray to resolve)."""
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


REJOIN_WAIT_S = 2.0  # --join: seconds between tries to join the cluster again
LIVENESS_S = 2.0  # the worker command checks its actor this often
NODE_LOST = 75  # exit code of a worker command whose actor Ray declared dead (its node was lost)
RAYLET_EXIT_WAIT_S = 60.0  # then wait this long at most for this machine's old raylet to exit before joining


def _worker(args: argparse.Namespace) -> int:
    args.worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"  # the same after a rejoin
    node_ip = args.node_ip_address or _ip_literal(args.advertise_host)
    return _supervise(args, node_ip) if args.join else _serve_worker(args, node_ip)


def _supervise(args: argparse.Namespace, node_ip: str | None) -> int:
    """``--join``: add this machine to the cluster (``ray start``) and run the worker in a child
    process; when the cluster lost this machine (a partition longer than Ray's failure detection:
    the head declares the node dead, its raylet exits once it hears so, the actor is gone), join
    again as a new node and start the worker again (a new incarnation of the same worker id)."""
    import multiprocessing

    stop = threading.Event()
    child: Any = None

    def on_signal(*_: object) -> None:
        stop.set()
        if child is not None and child.pid is not None and child.exitcode is None:
            os.kill(child.pid, signal.SIGTERM)  # the child drains

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    spawn = multiprocessing.get_context("spawn")
    while not stop.is_set():
        if not _local_raylet_alive(node_ip) and not _join(args, node_ip):
            stop.wait(REJOIN_WAIT_S)
            continue
        child = spawn.Process(target=_serve_worker_child, args=(args, node_ip), name=f"worker-{args.worker_id}")
        child.start()
        child.join()
        if stop.is_set():
            break
        print(f"avatar cluster worker {args.worker_id}: the cluster lost this worker (exit {child.exitcode}); "
              f"joining again", flush=True)
        if child.exitcode == NODE_LOST:  # the old raylet exits once it hears it was declared dead (after a heal)
            deadline = time.monotonic() + RAYLET_EXIT_WAIT_S
            while _local_raylet_alive(node_ip) and time.monotonic() < deadline and not stop.wait(0.5):
                pass  # the condition itself waits (0.5 s a turn) until the old raylet is gone or time is up
        stop.wait(REJOIN_WAIT_S)
    return 0


def _join(args: argparse.Namespace, node_ip: str | None) -> bool:
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_cli, "start", "--address", args.address, "--disable-usage-stats"]
    if node_ip:
        cmd += ["--node-ip-address", node_ip]
    if args.num_gpus:
        cmd += ["--num-gpus", str(int(args.num_gpus))]
    return subprocess.run(cmd).returncode == 0


def _local_raylet_alive(node_ip: str | None) -> bool:
    """A raylet of this machine's node runs here (``/proc``: it is no child of ours, ``ray start`` daemonises it;
    only processes in this network namespace count: containers or test machines may share the process table)."""
    own_net = os.stat("/proc/self/ns/net").st_ino
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if os.stat(f"/proc/{pid}/ns/net").st_ino != own_net:
                continue
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"raylet" and (
                node_ip is None or f"--node_ip_address={node_ip}".encode() in argv):
            return True
    return False


def _serve_worker_child(args: argparse.Namespace, node_ip: str | None) -> None:
    code = _serve_worker(args, node_ip)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not through Ray's exit handlers: with this machine's node gone they never return


def _serve_worker(args: argparse.Namespace, node_ip: str | None) -> int:
    """The worker actor on this machine's Ray node, until SIGTERM/SIGINT (drain, wait, stop) or until
    Ray declares it dead (exit ``NODE_LOST``)."""
    import ray
    from ray.exceptions import ActorDiedError, GetTimeoutError

    from avatarstream.realtime.cluster.worker import NAMESPACE, WorkerSpec, actor_name, start_worker

    spec = WorkerSpec(args.worker_id, slots=args.slots, host=args.host, port=args.port,
                      advertise_host=args.advertise_host, num_gpus=args.num_gpus, server=_server_options(args))
    ray.init(address=args.address, namespace=NAMESPACE, configure_logging=False, _node_ip_address=node_ip)
    with contextlib.suppress(ValueError):  # a dead incarnation still holding the name (its node was lost)
        ray.kill(ray.get_actor(actor_name(spec.worker_id), namespace=NAMESPACE), no_restart=True)
    handle = start_worker(spec, node_id=ray.get_runtime_context().get_node_id())
    status = ray.get(handle.status.remote())
    print(f"avatar cluster worker {spec.worker_id}: {spec.slots} slot(s) at {status.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(LIVENESS_S):
        if not _local_raylet_alive(node_ip):  # this machine's node is gone (its raylet exits once declared dead)
            print(f"avatar cluster worker {spec.worker_id}: this machine's Ray node is gone", flush=True)
            return NODE_LOST
        try:
            ray.get(handle.status.remote(), timeout=10 * LIVENESS_S)
        except ActorDiedError as exc:  # not restarting: Ray gave it up (its node was declared dead)
            print(f"avatar cluster worker {spec.worker_id}: Ray declared the worker dead ({exc.__class__.__name__})",
                  flush=True)
            return NODE_LOST
        except (GetTimeoutError, ray.exceptions.RayActorError):
            continue  # busy, or restarting after a crash: Ray decides
    print(f"avatar cluster worker {spec.worker_id}: draining", flush=True)
    deadline = time.monotonic() + args.drain_timeout
    status = ray.get(handle.drain.remote(True))
    while status.sessions and time.monotonic() < deadline:
        time.sleep(1.0)
        status = ray.get(handle.status.remote())
    ray.get(handle.stop.remote())
    ray.kill(handle, no_restart=True)
    ray.shutdown()
    return 0

"""Several "machines" on this one: network namespaces joined by a private bridge.

Each machine is a network namespace with ``lo`` up and one interface, ``eth0``, holding its own
address on a private subnet (default ``10.231.0.0/24``: machine ``i`` is ``.(i + 1)``). The
``eth0`` of every machine is one end of a veth pair whose other end (``m<i>``) is a port of a
bridge that lives in a namespace of its own, so nothing is added to this machine's real network:
the root namespace sees no new interface, route or address, and the subnet exists only inside
the namespaces (two runs at once each have their own bridge and may use the same subnet).

    with Network(3) as net:
        proc = net.start(net.machines[0], ["python", "-m", "http.server"])   # a process "on" machine 0
        with net.entered(net.machines[2]):       # sockets this thread creates now live on machine 2
            ...
        net.cut(net.machines[0]); net.restore(net.machines[0])   # pull and plug its cable
        net.kill(net.machines[0])                # every process in its namespace, SIGKILL

Commands started on a machine also get their own /tmp/ray (``Machine.tmp`` bound there in a private
mount namespace): two Ray nodes on one real machine would otherwise race for the same socket names.
The rest of /tmp stays shared, so a checkout (and its .venv) under /tmp is seen on every machine.

``cut`` sets the bridge's port of that machine down (the cable pulled at the switch): the machine
keeps its address and routes, its packets go nowhere and nothing answers it; ``restore`` sets it
up again. Namespaces are named ``avs<pid>x<run>-<role>`` (pid: the creating process) and removed
on ``close`` (the context manager, ``atexit`` for a process that exits without closing; a later
``Network`` removes those of processes that no longer exist, e.g. killed by SIGKILL). Needs root
and ``ip`` (iproute2) with veth and bridge support: ``unavailable()`` says why not, for skips.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "avs"
DEFAULT_SUBNET = "10.231.0.0/24"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]+-")


@dataclass(frozen=True)
class Machine:
    index: int
    namespace: str  # its network namespace (``ip netns exec NAMESPACE ...``)
    address: str  # its IPv4 address on the private subnet
    port: str  # its port on the bridge (in the bridge's namespace): cut/restore set it down/up
    tmp: str  # its own /tmp/ray: commands started on it see this directory there

    def __str__(self) -> str:
        return f"machine {self.index} ({self.address})"


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None when they can."""
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"the {tool} command (iproute2, util-linux) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    probe = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    try:
        for kind, args in (("bridge", ("b0", "type", "bridge")), ("veth", ("v0", "type", "veth", "peer", "v1"))):
            result = _ip("-n", probe, "link", "add", *args, check=False)
            if result.returncode != 0:
                return f"cannot create a {kind} interface: {result.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Network:
    """``count`` machines on one private bridge; a context manager (see the module docstring)."""

    def __init__(self, count: int, subnet: str = DEFAULT_SUBNET) -> None:
        net = ipaddress.ip_network(subnet)
        if count < 1 or count > net.num_addresses - 3:
            raise ValueError(f"{count} machines do not fit in {subnet}")
        self.subnet = net
        self.name = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.bridge_namespace = f"{self.name}-br"
        hosts = list(net.hosts())
        self.root = os.path.join(tempfile.gettempdir(), self.name)
        self.machines = tuple(Machine(i, f"{self.name}-m{i}", str(hosts[i]), f"m{i}", os.path.join(self.root, f"m{i}"))
                              for i in range(count))
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []
        self._closed = False

    # -- making and removing ------------------------------------------------------------------
    def __enter__(self) -> Network:
        remove_stale()
        _LIVE.add(self)
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        br = self.bridge_namespace
        self._add_namespace(br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        prefix = self.subnet.prefixlen
        for m in self.machines:
            os.makedirs(m.tmp, mode=0o1777, exist_ok=True)
            self._add_namespace(m.namespace)
            _ip("-n", br, "link", "add", m.port, "type", "veth", "peer", "name", "eth0", "netns", m.namespace)
            _ip("-n", br, "link", "set", m.port, "master", "br0")
            _ip("-n", br, "link", "set", m.port, "up")
            _ip("-n", m.namespace, "link", "set", "lo", "up")
            # IPv4 only: no link-local IPv6 addresses (ICE would offer them as candidates too)
            _sysctl(m.namespace, "net.ipv6.conf.all.disable_ipv6", "1")
            _ip("-n", m.namespace, "addr", "add", f"{m.address}/{prefix}", "dev", "eth0")
            _ip("-n", m.namespace, "link", "set", "eth0", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def close(self) -> None:
        """Kill every process on the machines and remove the namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for name in reversed(self._made):
            _kill_namespace(name)
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        _LIVE.discard(self)

    # -- using it ------------------------------------------------------------------------------
    def start(self, machine: Machine, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Run ``argv`` on ``machine``: in its network namespace, with its own /tmp/ray (a private mount
        namespace binds ``machine.tmp`` there, so Ray's node sockets and its current-cluster file keep to
        their machine; the rest of /tmp, where a checkout may live, stays shared). ``ip``, ``unshare`` and
        ``sh`` each exec the next,
        so the Popen's pid is the command's; keyword arguments go to ``subprocess.Popen``."""
        proc = subprocess.Popen(_on(machine, argv), **popen)
        self._procs.append(proc)
        return proc

    def run(self, machine: Machine, argv: Sequence[str], timeout: float = 60.0,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``machine`` to its end (``subprocess.run``), as ``start`` does."""
        return subprocess.run(_on(machine, argv), timeout=timeout, **kwargs)

    def cut(self, machine: Machine) -> None:
        """Disconnect ``machine`` from the bridge (its address and processes stay)."""
        _ip("-n", self.bridge_namespace, "link", "set", machine.port, "down")

    def restore(self, machine: Machine) -> None:
        """Connect ``machine`` to the bridge again."""
        _ip("-n", self.bridge_namespace, "link", "set", machine.port, "up")

    def pids(self, machine: Machine) -> list[int]:
        """Processes running on ``machine`` (in its network namespace)."""
        return _namespace_pids(machine.namespace)

    def kill(self, machine: Machine, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process on ``machine`` (again until none is left: forks); returns their pids."""
        killed = _kill_namespace(machine.namespace, timeout)
        for proc in self._procs:
            if proc.pid in killed:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
        return killed

    @contextlib.contextmanager
    def entered(self, machine: Machine) -> Iterator[None]:
        """The calling thread is on ``machine`` inside the block: sockets it creates there belong to
        the machine's namespace (and stay there after the block); threads it starts inherit it."""
        with entered_namespace(machine.namespace):
            yield


@contextlib.contextmanager
def entered_namespace(namespace: str) -> Iterator[None]:
    """``setns(2)`` the calling thread into a named network namespace, and back afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/var/run/netns/{namespace}", "rb") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")


# -- cleanup ---------------------------------------------------------------------------------------
_LIVE: weakref.WeakSet[Network] = weakref.WeakSet()
_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    for net in list(_LIVE):
        net.close()


def remove_stale() -> list[str]:
    """Remove namespaces of this harness whose creating process no longer exists."""
    removed = []
    with _LOCK:
        for name in list_namespaces():
            match = _NAME.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            _kill_namespace(name)
            _ip("netns", "del", name, check=False)
            shutil.rmtree(os.path.join(tempfile.gettempdir(), name.rsplit("-", 1)[0]), ignore_errors=True)
            removed.append(name)
    return removed


def list_namespaces() -> list[str]:
    result = _ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(namespace: str) -> list[int]:
    result = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill_namespace(namespace: str, timeout: float = 10.0) -> list[int]:
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    own = os.getpid()
    while True:
        pids = [p for p in _namespace_pids(namespace) if p != own]
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.05)


def _on(machine: Machine, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", machine.namespace, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mkdir -p /tmp/ray && mount --bind "$0" /tmp/ray && exec "$@"', machine.tmp, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _sysctl(namespace: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw", f"{key}={value}"],
                   capture_output=True, timeout=30, check=True)

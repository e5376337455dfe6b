"""Pytest plugin: the suite runs in a private network, and a test that addresses anything else fails.

When tests/conftest.py imports this plugin (the main thread, before other conftests, plugins or tests can start a
thread; threads started earlier would stay outside) the test process enters the private network of
``avatarstream.bench.private_network``: a namespace with loopback and 10.230.0.1 on a veth pair, nothing else.
Servers, clients, Chromium, Ray nodes and ``ip netns`` machines started by tests inherit it, so WebRTC media meets
on 10.230.0.1 and can never go to this machine's outward address.

The check: an audit hook (``sys.addaudithook``) sees every ``socket.connect``, ``socket.sendto`` and
``socket.sendmsg`` of this process, in any thread, and records each IPv4/IPv6 destination that is not local
(loopback, the test subnets 10.230.0.0/16 and 10.231.0.0/16, link-local multicast) with the stack that did it.
Host names are resolved; ``localhost`` counts as loopback. The test during whose setup, call or teardown a
destination was recorded fails at teardown with the addresses and stacks; records made outside any test fail
the session. Child processes are not audited (the namespace is what holds them).

With ``-v`` the summary also lists, per test, the sends to outside addresses the namespace refused (the kernel's
``OutNoRoutes``, any process: Chromium's background requests, DNS, Ray's route probe); listed, never failed.

Modes (``AVATARSTREAM_NETWORK_GUARD``): ``fail`` (the default inside the private network), ``report`` (the
default where the namespace cannot be made, e.g. not root: tests run on the machine's network as before and the
terminal summary lists what went outside), ``off``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, field

import pytest

from avatarstream.bench.private_network import PrivateNetwork, enter_private_network, is_local, no_route_count

MODE_ENV = "AVATARSTREAM_NETWORK_GUARD"
WATCHED = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
INET = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class OutsideAddress:
    event: str  # the audit event: socket.connect, socket.sendto or socket.sendmsg
    host: str  # as the code passed it
    port: int
    note: str  # "outside", or what a name resolved to
    kind: str  # "udp", "tcp" or the socket type
    thread: str
    stack: str  # the innermost frames that made the call

    @property
    def destination(self) -> str:
        return f"{self.host} ({self.note})"

    def __str__(self) -> str:
        return f"{self.event} {self.kind} -> {self.host}:{self.port} ({self.note}, thread {self.thread})\n{self.stack}"


class NetworkGuard:
    """Records socket destinations outside the local networks; ``audit`` is the hook."""

    def __init__(self) -> None:
        self._found: list[OutsideAddress] = []
        self._lock = threading.Lock()
        self._verdicts: dict[str, str] = {}  # host -> "" (local) or why not
        self._busy = threading.local()

    def audit(self, event: str, args: tuple) -> None:
        if event not in WATCHED or getattr(self._busy, "on", False):
            return
        sock, address = args[0], args[1]
        try:
            family = sock.family
        except (AttributeError, OSError):
            return
        if family not in INET or not isinstance(address, tuple) or not address:
            return
        host = address[0]
        verdict = self._verdicts.get(host)
        if verdict is None:
            self._busy.on = True  # resolving a name audits socket.getaddrinfo, not a watched event; be sure
            try:
                verdict = self._verdicts[host] = _judge(host)
            finally:
                self._busy.on = False
        if verdict:
            kind = {socket.SOCK_DGRAM: "udp", socket.SOCK_STREAM: "tcp"}.get(sock.type, str(sock.type))
            stack = "".join(traceback.format_list(traceback.extract_stack(sys._getframe(1))[-8:]))
            found = OutsideAddress(event, host, address[1], verdict, kind, threading.current_thread().name, stack)
            with self._lock:
                if len(self._found) < 50:
                    self._found.append(found)

    def take(self) -> list[OutsideAddress]:
        """The records made since the last ``take``."""
        with self._lock:
            found, self._found = self._found, []
        return found


def _judge(host: str) -> str:
    """"" when every address ``host`` names is local, else a note naming the outside address."""
    with contextlib.suppress(ValueError):  # not an address literal: judged by name below
        return "" if is_local(host) else "outside"
    if host == "localhost" or host.endswith(".localhost"):
        return ""
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return "a name that does not resolve here"
    outside = sorted(a for a in resolved if not is_local(a))
    return f"resolves to {', '.join(outside)}" if outside else ""


@dataclass
class GuardRun:
    """This pytest run's network, the guard's mode, and what it found."""

    network: PrivateNetwork
    mode: str  # fail, report or off
    reported: list[tuple[str, list[OutsideAddress]]] = field(default_factory=list)  # report mode, outside tests
    refused: dict[str, int] = field(default_factory=dict)  # test -> sends the namespace refused (no route)
    refused_before: int = 0
    configured: bool = False


GUARD = NetworkGuard()
RUN = GuardRun(enter_private_network(), "off")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if RUN.configured:  # once per process: the audit hook cannot be removed
        return
    RUN.configured = True
    mode = os.environ.get(MODE_ENV) or ("fail" if RUN.network.private else "report")
    if mode not in ("fail", "report", "off"):
        raise pytest.UsageError(f"{MODE_ENV} must be fail, report or off, not {mode!r}")
    RUN.mode = mode
    RUN.refused_before = no_route_count()
    if mode != "off":
        sys.addaudithook(GUARD.audit)


def pytest_report_header(config: pytest.Config) -> str:
    network = RUN.network
    where = (f"private namespace ({network.how}), host address {network.address}" if network.private
             else f"this machine's network ({network.reason})")
    return f"network: {where}; guard: {RUN.mode}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if call.when != "teardown" or RUN.mode == "off":
        return
    if RUN.network.private:
        now = no_route_count()
        if now > RUN.refused_before:
            RUN.refused[item.nodeid] = now - RUN.refused_before
        RUN.refused_before = now
    found = GUARD.take()
    if not found:
        return
    if RUN.mode == "fail":
        report = outcome.get_result()
        report.outcome = "failed"
        report.longrepr = f"network guard: {item.nodeid} addressed outside the test networks:\n{_describe(found)}"
    else:
        RUN.reported.append((item.nodeid, found))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if RUN.mode == "off":
        return
    found = GUARD.take()
    if found:
        RUN.reported.append(("(outside any test)", found))
        if RUN.mode == "fail":
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    verbose = terminalreporter.config.getoption("verbose") > 0
    if RUN.reported:
        terminalreporter.section("network guard: destinations outside the test networks")
        for nodeid, found in RUN.reported:
            terminalreporter.write_line(f"{nodeid}: {', '.join(sorted({f.destination for f in found}))}")
            if RUN.mode == "fail" or verbose:
                terminalreporter.write_line(_describe(found))
    if RUN.refused and verbose:
        # Any process in the namespace (Chromium's background requests, DNS, Ray's route probe): refused by the
        # kernel before a packet was made; listed, not failed.
        terminalreporter.section("network guard: sends to outside addresses the private network refused (no route)")
        for nodeid, count in RUN.refused.items():
            terminalreporter.write_line(f"{nodeid}: {count}")


def _describe(found: list[OutsideAddress]) -> str:
    seen: dict[tuple[str, str], OutsideAddress] = {}
    for f in found:
        seen.setdefault((f.event, f.host), f)
    return "\n".join(str(f) for f in seen.values())

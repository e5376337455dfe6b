"""The namespace harness (bench/netns.py): machines with their own addresses that reach each
other through the private bridge, a cut link that blocks them, a restored one that heals, a kill
that empties a machine, and nothing left behind in this machine's real network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from avatarstream.bench import netns

NETNS_MISSING = netns.unavailable()  # asked once: each call makes and deletes a probe namespace
pytestmark = pytest.mark.skipif(NETNS_MISSING is not None, reason=str(NETNS_MISSING))

ECHO = """
import socket, sys
s = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100).upper())
    c.close()
"""


def echo(net: netns.Network, client: netns.Machine, server: netns.Machine, timeout: float) -> bytes:
    """One round trip from ``client`` (this thread, entered there) to the echo server on ``server``."""
    with net.entered(client), socket.create_connection((server.address, 7000), timeout=timeout) as s:
        assert s.getsockname()[0] == client.address  # the client's own address, not this machine's
        s.sendall(b"ping")
        return s.recv(100)


def root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_machines_talk_through_the_bridge_and_a_cut_link_blocks_until_restored():
    links_before = root_links()
    with netns.Network(2) as net:
        a, b = net.machines
        assert (a.address, b.address) == ("10.231.0.1", "10.231.0.2")
        assert root_links() == links_before  # every interface lives in the run's namespaces
        server = net.start(b, [sys.executable, "-c", ECHO, b.address], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        assert echo(net, a, b, timeout=5) == b"PING"

        net.cut(b)
        with pytest.raises(OSError):  # no answer while the cable is out (times out)
            echo(net, a, b, timeout=1.0)
        net.restore(b)
        t0 = time.monotonic()
        while True:  # the port forwards again at once; allow for the bridge relearning the address
            try:
                assert echo(net, a, b, timeout=1.0) == b"PING"
                break
            except OSError:
                assert time.monotonic() - t0 < 10, "the restored link did not heal"

        assert server.pid in net.pids(b)
        # each machine has its own /tmp/ray (Ray's sockets); the rest of /tmp, where a checkout may live, is shared
        net.run(a, ["sh", "-c", "echo a > /tmp/ray/mark"], check=True)
        assert open(f"{a.tmp}/mark").read() == "a\n" and not os.path.exists(f"{b.tmp}/mark")
        killed = net.kill(b)
        assert server.pid in killed and net.pids(b) == []
        assert server.wait(timeout=5) == -9
        with pytest.raises(OSError):  # refused: nothing listens on b any more
            echo(net, a, b, timeout=2.0)
        names = [m.namespace for m in net.machines] + [net.bridge_namespace]
        assert set(names) <= set(netns.list_namespaces())
    assert not set(names) & set(netns.list_namespaces())  # removed on exit
    assert root_links() == links_before


def test_namespaces_are_removed_when_the_block_fails_and_runs_do_not_collide():
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Network(1) as first, netns.Network(1) as second:  # same subnet, two bridges
            assert first.machines[0].address == second.machines[0].address
            assert first.machines[0].namespace != second.machines[0].namespace
            made = [first.machines[0].namespace, second.machines[0].namespace]
            raise RuntimeError("boom")
    assert not set(made) & set(netns.list_namespaces())


def test_a_killed_runs_namespaces_are_removed_by_the_next_run():
    code = ("import sys, time; from avatarstream.bench import netns; net = netns.Network(1).__enter__(); "
            "print(net.machines[0].namespace, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    assert name in netns.list_namespaces()
    proc.kill()  # no atexit, no close
    proc.wait()
    assert name in netns.remove_stale() and name not in netns.list_namespaces()

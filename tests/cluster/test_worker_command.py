"""``avatar cluster worker --join`` rejoins only when this machine's own raylet is gone: a raylet of
another machine sharing the process table (containers, the test machines of bench/netns.py, even
with the same address on another private network) does not count."""

from __future__ import annotations

import sys
import time

import pytest

from avatarstream.bench import netns

NETNS_MISSING = netns.unavailable()  # asked once: each call makes and deletes a probe namespace
pytestmark = pytest.mark.skipif(NETNS_MISSING is not None, reason=str(NETNS_MISSING))

PROBE = "from avatarstream.cli.cluster import _local_raylet_alive as a; import sys; print(a(sys.argv[1]), a(None))"


def alive_on(net: netns.Network, machine: netns.Machine, ip: str) -> str:
    return net.run(machine, [sys.executable, "-c", PROBE, ip], capture_output=True, text=True,
                   check=True).stdout.strip()


def test_only_a_raylet_in_this_machines_network_counts():
    with netns.Network(2) as net:
        a, b = net.machines
        # a process whose argv[0] is "raylet" with this node's address, as `ray start` leaves one
        fake = net.start(a, ["bash", "-c", f'exec -a raylet {sys.executable} -c "import time; time.sleep(60)" '
                                           f"--node_ip_address={a.address}"])
        try:
            deadline = time.monotonic() + 10
            while alive_on(net, a, a.address) != "True True":
                assert time.monotonic() < deadline, "the raylet on machine a was not seen there"
                time.sleep(0.1)
            assert alive_on(net, a, b.address) == "False True"  # another node's address
            assert alive_on(net, b, a.address) == "False False"  # another machine
        finally:
            fake.kill()
            fake.wait()
        assert alive_on(net, a, a.address) == "False False"

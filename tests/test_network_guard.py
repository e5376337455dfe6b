"""The suite's private network and its guard (tests/network_guard.py, avatarstream.bench.private_network): media
between peers started here meets on 10.230.0.1 inside a namespace, and a test that addresses anything outside
the test networks fails."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avatarstream.bench.private_network import (TEST_ADDRESS, enter_private_network, is_local, no_route_count,
                                                outward_addresses)
from network_guard import GUARD

TESTS = Path(__file__).resolve().parent
OUTSIDE = "198.51.100.7"  # TEST-NET-2: no machine here has it


def needs_private_network() -> None:
    network = enter_private_network()
    if not network.private:
        pytest.skip(f"the private network namespace could not be made: {network.reason}")


def test_local_means_loopback_test_subnets_or_link_local_multicast():
    for address in ("127.0.0.1", "127.0.1.1", "::1", "10.230.0.1", "10.231.2.3", "224.0.0.251", "ff02::fb",
                    "0.0.0.0"):
        assert is_local(address), address
    for address in ("192.0.2.2", "::ffff:192.0.2.2", "fd00::2", "8.8.8.8", "10.229.0.1", "10.0.0.1",
                    "fe80::1%eth0"):
        assert not is_local(address), address


def test_the_suite_runs_where_no_outward_address_exists():
    needs_private_network()
    assert outward_addresses() == []
    addresses = {a for _, a in _host_addresses()}
    assert TEST_ADDRESS in addresses or enter_private_network().how == "inherited"


def test_an_outside_datagram_is_recorded_with_its_stack_and_cannot_leave():
    needs_private_network()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"local", (TEST_ADDRESS, 9))
        s.sendto(b"local", ("127.0.0.1", 9))
        s.sendto(b"local", ("localhost", 9))
        assert GUARD.take() == []
        refused = no_route_count()
        with pytest.raises(OSError) as unreachable:
            s.sendto(b"probe", (OUTSIDE, 9))
    found = GUARD.take()  # taken here, so that this test itself passes
    assert unreachable.value.errno == errno.ENETUNREACH  # no route out of the namespace
    assert no_route_count() >= refused + 1  # the kernel's count of such refusals, for every process here
    assert [(f.event, f.host, f.port, f.kind) for f in found] == [("socket.sendto", OUTSIDE, 9, "udp")]
    assert "test_an_outside_datagram_is_recorded" in found[0].stack


def test_a_test_that_addresses_outside_fails_at_teardown(tmp_path):
    """A real pytest run with the plugin: the test sending outside errors at teardown naming the address and
    the line; the test sending to the test address passes."""
    needs_private_network()
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(f"""
        import socket

        def test_sends_outside():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(b"probe", ("{OUTSIDE}", 9))
                except OSError:
                    pass  # swallowed, as a library would

        def test_sends_inside():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"probe", ("{TEST_ADDRESS}", 9))
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "network_guard", "-p", "no:cacheprovider",
                           "-q", "-rA", str(tmp_path / "test_probe.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=_env_with_tests_on_path())
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "ERROR at teardown of test_sends_outside" in out and f"{OUTSIDE}:9 (outside" in out, out
    assert 's.sendto(b"probe", ("198.51.100.7", 9))' in out, out
    assert "PASSED test_probe.py::test_sends_inside" in out and "1 error" in out, out


def _env_with_tests_on_path() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("AVATARSTREAM_NETWORK_GUARD", None)
    return env


def _host_addresses() -> list[tuple[str, str]]:
    import ifaddr

    return [(a.nice_name, ip.ip) for a in ifaddr.get_adapters() for ip in a.ips if isinstance(ip.ip, str)]

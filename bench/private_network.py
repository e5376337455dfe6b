"""A private network for the tests and benches that send WebRTC media between a server and a client started here.

aioice leaves 127.0.0.1 out of its host candidates, so two peers on one machine meet on the machine's outward
address (eth0) unless another address exists. ``enter_private_network()`` moves the calling process into a new
network namespace (``unshare(CLONE_NEWNET)``) holding only loopback and a veth pair, ``avt0`` (``TEST_ADDRESS``,
10.230.0.1/24) and ``avt1`` (no address), both up: aioice and Chromium find 10.230.0.1 as their host candidate,
and nothing in the namespace has a route anywhere else, so no packet can reach the machine's outward address.
Every thread and child process started afterwards (servers, Chromium, Ray nodes, ``ip netns`` machines) inherits
the namespace; threads that ran before it do not, so it must be entered while the process has one thread.

It needs Linux, root (CAP_NET_ADMIN) and iproute2's ``ip``. Where it cannot be entered the caller runs on the
machine's network as before and ``PrivateNetwork.entered`` says why not. ``AVATARSTREAM_PRIVATE_NETWORK=0``
turns it off (to compare with the machine's network).

Test subnets (``TEST_SUBNETS``): 10.230.0.0/16 for this namespace, 10.231.0.0/16 for the namespace harness's
machines (``ip netns``, bench/netns.py). Addresses in them exist only inside namespaces the tests make.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

import ifaddr

CLONE_NEWNET = 0x40000000
TEST_ADDRESS = "10.230.0.1"
TEST_PREFIX = 24
NOWHERE_ADDRESS = "10.230.0.254"  # on the private link, held by nothing: packets to it go nowhere
VETH = ("avt0", "avt1")
TEST_SUBNETS = (ipaddress.ip_network("10.230.0.0/16"), ipaddress.ip_network("10.231.0.0/16"))
# Destinations that never leave the machine's own namespaces: loopback, the test subnets, and link-local
# multicast (mDNS at 224.0.0.251 / ff02::fb, which aioice uses to resolve a browser's ".local" candidates).
LOCAL_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
                  ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128"),
                  ipaddress.ip_network("224.0.0.0/24"), ipaddress.ip_network("ff02::/16"), *TEST_SUBNETS)
DISABLE_ENV = "AVATARSTREAM_PRIVATE_NETWORK"


@dataclass(frozen=True)
class PrivateNetwork:
    """Which network this process runs on: ``entered`` (the namespace was made here), ``inherited`` (the
    process already ran in a network with only local and test addresses), or neither, with the reason."""

    private: bool
    how: str  # "entered", "inherited" or "machine"
    address: str | None  # the non-loopback host address peers find (None on the machine's network)
    reason: str = ""  # why the machine's network is used

    def describe(self) -> dict:
        """For a bench's JSON: which network the measurement ran on."""
        if self.private:
            return {"network": "private namespace", "how": self.how, "address": self.address}
        return {"network": "machine", "reason": self.reason, "addresses": outward_addresses()}


def is_local(address: str) -> bool:
    """True when ``address`` (an IP literal, optionally with ``%scope``) is loopback, in a test subnet or
    link-local multicast: traffic to it stays within the namespaces the tests make."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in LOCAL_NETWORKS)


def outward_addresses() -> list[str]:
    """This process's network addresses that are neither local (``is_local``) nor IPv6 link-local."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                addr, _flow, scope = ip.ip
                if scope:  # link-local: never a destination outside the link
                    continue
            else:
                addr = ip.ip
            if not is_local(addr):
                found.append(addr)
    return found


def no_route_count() -> int:
    """Sends and connects the kernel refused for want of a route in this process's namespace, by any process,
    IPv4 and IPv6 (``OutNoRoutes`` of /proc/net/snmp and /proc/net/snmp6). In the private network these are
    the attempts to reach outside: they end there, before a packet is made."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Ip:")]
        count = int(dict(zip(rows[0], rows[1]))["OutNoRoutes"])
        with open("/proc/net/snmp6") as f:
            count += sum(int(line.split()[1]) for line in f if line.startswith("Ip6OutNoRoutes"))
    except (OSError, IndexError, KeyError, ValueError):
        return 0
    return count


_entered: PrivateNetwork | None = None
_lock = threading.Lock()


def enter_private_network() -> PrivateNetwork:
    """Move this process into the private namespace (once; later calls return the first answer)."""
    global _entered
    with _lock:
        if _entered is None:
            _entered = _enter()
        return _entered


def _enter() -> PrivateNetwork:
    if not outward_addresses():
        addresses = [a for a in _host_addresses() if not a.startswith("127.")]
        return PrivateNetwork(True, "inherited", addresses[0] if addresses else None)
    why = _cannot_enter()
    if why:
        return PrivateNetwork(False, "machine", None, why)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return PrivateNetwork(False, "machine", None, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
    # From here the process is in an empty namespace: a failure must not leave it there silently.
    a, b = VETH
    for cmd in (["link", "set", "lo", "up"], ["link", "add", a, "type", "veth", "peer", "name", b],
                ["addr", "add", f"{TEST_ADDRESS}/{TEST_PREFIX}", "dev", a],
                ["link", "set", a, "up"], ["link", "set", b, "up"]):
        done = subprocess.run(["ip", *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"private network: 'ip {' '.join(cmd)}' failed: {done.stderr.strip()}")
    return PrivateNetwork(True, "entered", TEST_ADDRESS)


def _cannot_enter() -> str:
    if os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "no", "false"):
        return f"turned off by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed"
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate())
        return f"other threads already run ({names}): they would stay on the machine's network"
    return ""


def _host_addresses() -> list[str]:
    return [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]

"""A second "host" made of a network namespace, joined to this one by a veth pair.

    this namespace                     namespace NAME
    HOST_IF 10.231.x.1/30  <--veth-->  NS_IF 10.231.x.2/30, lo up

Only these two addresses are involved: nothing is routed or forwarded anywhere else. `cut()`
takes the host side of the link down (packets are dropped, no reset is sent: to both ends it
looks like a pulled cable) and `restore()` brings it back. Names and the /30 are chosen at
random, so tests may run side by side; `destroy()` removes everything and is safe to call twice.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import uuid

PREFIX = ipaddress.ip_network("10.231.0.0/16")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15,
                          check=check)


def netns_missing() -> str | None:
    """What is missing to use namespaces here, or None (creates and drops a probe)."""
    if os.geteuid() != 0:
        return "root (to create network namespaces)"
    if shutil.which("ip") is None:
        return "the ip tool (iproute2)"
    probe = f"shoal-probe-{uuid.uuid4().hex[:8]}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"ip netns add ({made.stderr.strip()})"
        ran = _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up", check=False)
        if ran.returncode != 0:
            return f"ip netns exec ({ran.stderr.strip()})"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NetnsHost:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.name = f"shoal-{suffix}"
        self.host_if = f"sh{suffix}h"  # interface names: at most 15 characters
        self.ns_if = f"sh{suffix}n"
        used = _ip("-o", "-4", "addr", "show").stdout
        while True:
            subnet = random.choice(list(PREFIX.subnets(new_prefix=30)))
            host_address, ns_address = list(subnet.hosts())
            if f" {host_address}/" not in used and f" {ns_address}/" not in used:
                break
        self.host_address, self.ns_address = str(host_address), str(ns_address)
        self.created = False

    def create(self) -> None:
        self.created = True
        _ip("netns", "add", self.name)
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_address}/30", "dev",
            self.ns_if)
        _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")

    def exec_prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace: prefix it with these words."""
        return ("ip", "netns", "exec", self.name)

    def reachable(self, port: int) -> bool:
        """Can a TCP connection be made from inside the namespace to the host side?"""
        code = (f"import socket; socket.create_connection(('{self.host_address}', {port}), "
                "timeout=1).close()")
        ran = subprocess.run([*self.exec_prefix(), sys.executable, "-c", code],
                             capture_output=True, timeout=15)
        return ran.returncode == 0

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        if not self.created:
            return
        # Deleting one end of a veth pair deletes both; the namespace takes its end with it.
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)
        self.created = False

    def leftovers(self) -> list[str]:
        """What of this host still exists (empty after `destroy`)."""
        found = []
        if self.name in _ip("netns", "list").stdout.split():
            found.append(f"namespace {self.name}")
        if _ip("link", "show", self.host_if, check=False).returncode == 0:
            found.append(f"link {self.host_if}")
        return found

"""Ports for daemons the tests start on a port they are told (sshd, slurmctld, Prometheus, a
server that must come back where its workers look).

Probing with bind(0) and closing hands out a port from the kernel's ephemeral range, where
any outgoing connection may take it before the daemon binds, and two probes in a row may
return the same port. So ports are drawn at random below that range, each checked free and
distinct from the others of the same call."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    top = max(_ephemeral_start() - 1, _LOWEST + 1000)
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randint(_LOWEST, top)
        if port not in chosen and _is_free(host, port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise AssertionError(f"no {count} free ports on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]

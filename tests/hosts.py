"""Several hosts on one machine: network namespaces on a bridge, each running a real worker.

Host k lives in namespace `<prefix>-k` with address 10.<net>.0.<k+2>; the bridge, on this
side, has 10.<net>.0.1, where the server listens. Traffic stays on the bridge.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.system import require_root_tool


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Hosts:
    def __init__(self, count: int):
        # A /24 no other set of hosts on this machine uses now (tests run side by side).
        used = ip("-o", "-4", "addr", "show").stdout
        self.net = random.choice([net for net in range(100, 251)
                                  if f" 10.{net}.0.1/" not in used])
        self.prefix = f"sh{os.getpid() % 10000}x{self.net}"
        self.bridge = f"{self.prefix}br"[:15]
        self.count = count
        self.names = [f"{self.prefix}-{k}" for k in range(count)]

    @property
    def server_address(self) -> str:
        return f"10.{self.net}.0.1"

    def address(self, k: int) -> str:
        return f"10.{self.net}.0.{k + 2}"

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.server_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for k, name in enumerate(self.names):
            outside, inside = f"{self.prefix}o{k}"[:15], f"{self.prefix}i{k}"[:15]
            ip("netns", "add", name)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", name)
            ip("link", "set", outside, "master", self.bridge)
            ip("link", "set", outside, "up")
            ip("netns", "exec", name, "ip", "addr", "add", f"{self.address(k)}/24", "dev", inside)
            ip("netns", "exec", name, "ip", "link", "set", inside, "up")
            ip("netns", "exec", name, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        for k, name in enumerate(self.names):
            ip("link", "del", f"{self.prefix}o{k}"[:15], check=False)
            ip("netns", "del", name, check=False)
        ip("link", "del", self.bridge, check=False)

    def worker(self, k: int, join: str, log: Path, *args: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A real worker inside host k, named h<k>, given only the server's join string."""
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            ["ip", "netns", "exec", self.names[k], sys.executable, "-m", "shoal.cli.main",
             "worker", "--join", join, "--name", f"h{k}", "--cores", "4",
             "--spool", str(log.parent / f"spool-h{k}"), *args],
            stdout=handle, stderr=handle, stdin=subprocess.DEVNULL, start_new_session=True,
            env=env)


@contextmanager
def namespace_hosts(count: int) -> Iterator[Hosts]:
    require_root_tool("ip")
    hosts = Hosts(count)
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()

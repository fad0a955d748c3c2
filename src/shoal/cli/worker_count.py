"""`shoal worker --count N`: N workers on this host, each a process of its own.

Each worker holds its jobs in a cgroup tree named after its process, so N workers are N
processes, not N agents in one. This process starts them, hands them the server's address
through the environment (never the command line), passes a stop signal on to all of them and
exits with the worst of their exit codes. Without --cores, --memory or --gpus the N workers
share what the host has evenly; an option given applies to each of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from shoal.cli.join import JOIN_VARIABLE, WorkerAddress
from shoal.home import SCHEME, SERVER_VARIABLE, TOKEN_VARIABLE

MAX_COUNT = 1024


@dataclass(frozen=True)
class Share:
    """What one of the N workers offers."""

    cores: int
    memory_bytes: int
    gpus: list[str]


def shares(count: int, cores: int, memory_bytes: int, gpus: Sequence[str],
           split_cores: bool, split_memory: bool, split_gpus: bool) -> list[Share]:
    """Worker i's part: what is split goes evenly (at least one core each), GPUs round-robin;
    what is not split is offered whole by each."""
    result = []
    for index in range(count):
        share_cores = max(1, cores // count + (1 if index < cores % count else 0)) \
            if split_cores else cores
        share_memory = memory_bytes // count if split_memory else memory_bytes
        share_gpus = list(gpus[index::count]) if split_gpus else list(gpus)
        result.append(Share(share_cores, share_memory, share_gpus))
    return result


def child_environment(address: WorkerAddress) -> dict[str, str]:
    """The server and token for the workers, in their environment: `ps` shows neither."""
    env = {key: value for key, value in os.environ.items()
           if key not in (JOIN_VARIABLE, SERVER_VARIABLE, TOKEN_VARIABLE)}
    if address.server is not None and address.server.startswith(SCHEME):
        env[JOIN_VARIABLE] = address.server
    elif address.server is not None:
        env[SERVER_VARIABLE] = address.server
    if address.token is not None:
        env[TOKEN_VARIABLE] = address.token
    return env


def gpus_argument(ids: Sequence[str]) -> str:
    """`--gpus` for exactly these ids ('0' offers none; a trailing comma marks a list)."""
    return ",".join(ids) + "," if ids else "0"


def run_workers(names: Sequence[str], arguments: Sequence[Sequence[str]],
                address: WorkerAddress) -> int:
    """Start one `shoal worker` per name with its arguments; wait for all of them."""
    env = child_environment(address)
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name, args in zip(names, arguments, strict=True):
            children.append(subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "worker", "--name", name, *args],
                env=env, stdin=subprocess.DEVNULL))
        worst = 0
        for child in children:
            while True:
                try:
                    code = child.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    time.sleep(0.01)
            worst = max(worst, code if code > 0 else 128 - code if code < 0 else 0)
        return worst
    finally:
        for child in children:  # never leave a worker behind this process
            if child.poll() is None:
                child.terminate()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def spool_for(spool: Path | None, name: str) -> list[str]:
    return ["--spool", str(spool / name)] if spool is not None else []

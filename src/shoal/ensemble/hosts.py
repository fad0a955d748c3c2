"""Which worker runs each host of an ensemble: the one place hosts are resolved to workers.

A host is a worker's name, a host name or an address, matched by the server among connected
workers. `localhost` is resolved here, on the machine where the run is typed, as NetJobs and
remote_runner mean it: a connected worker of this machine if there is one, otherwise a
temporary worker started for the run (`shoal worker --exit-when-idle`, working in the
directory the run was typed in). Other kinds of host that need a worker started for them
(over SSH, say) belong beside `_resolve_localhost`, in `resolve_hosts`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shoal.core.errors import ConnectError
from shoal.ensemble.spec import LOCALHOST, Ensemble
from shoal.provision.hosts import is_ssh_host

# How long a temporary worker may take to connect (a Python start on a loaded machine).
JOIN_SECONDS = 60.0
# A temporary worker stops once nothing has run on it for this long; it outlives the command
# only while services a detached run left behind run on it.
IDLE_EXIT_SECONDS = 30.0


class WorkerSource(Protocol):
    def workers(self) -> list[dict[str, Any]]: ...


@dataclass
class TemporaryWorker:
    """A `shoal worker` process started for a run, in a session of its own."""

    name: str
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, workdir: Path, env: Mapping[str, str] | None = None) -> TemporaryWorker:
        name = f"{socket.gethostname()}-ensemble-{os.getpid()}"
        handle, log_name = tempfile.mkstemp(prefix="shoal-temporary-worker-", suffix=".log")
        with os.fdopen(handle, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "worker", "--name", name,
                 "--workdir", str(workdir), "--exit-when-idle", str(IDLE_EXIT_SECONDS)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env=dict(env) if env is not None else None, cwd=workdir)
        return cls(name, workdir, process, Path(log_name))

    def last_words(self) -> str:
        """The last line it logged: why it could not join, usually."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def stop(self) -> None:
        """Stop it now (SIGTERM: it hands back nothing, as its components have ended)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def leave_running(self) -> None:
        """Leave it to serve a detached run: it stops once idle."""
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@dataclass
class Placement:
    """Host -> worker name for the hosts resolved here, and what was started for them."""

    workers: dict[str, str] = field(default_factory=dict)
    temporary: list[TemporaryWorker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ssh: Any = None  # shoal.provision.temporary.EnsembleWorkers, for `ssh://` hosts

    def release(self, *, keep: bool) -> None:
        """After the runs: stop the temporary workers, or (`keep`) leave them to stop by
        themselves once the services they run have ended."""
        for worker in self.temporary:
            if keep:
                worker.leave_running()
            else:
                worker.stop()
        self.temporary.clear()
        if self.ssh is not None and not keep:  # kept, they exit once idle
            self.ssh.stop()
        self.ssh = None


def resolve_hosts(source: WorkerSource, ensembles: Sequence[Ensemble], *, workdir: Path,
                  allow_temporary: bool = True,
                  start_worker: Callable[[Path], TemporaryWorker] = TemporaryWorker.start,
                  ssh: bool = False) -> Placement:
    """The workers this machine resolves for the hosts of `ensembles`. `ssh://` hosts get a
    worker started over SSH for the run; with `ssh`, so does any other host that no connected
    worker answers to (NetJobs targets, remote_runner hosts: reached as the tools reach them)."""
    hosts = {c.host for e in ensembles for c in e.components}
    placement = Placement()
    if LOCALHOST in hosts:
        _resolve_localhost(source, placement, workdir, allow_temporary, start_worker)
    remote = sorted(host for host in hosts if is_ssh_host(host)
                    or (ssh and host != LOCALHOST and host not in _answered(source)))
    if remote and allow_temporary:  # remote_runner's model: workers over SSH for the run
        from shoal.provision.temporary import EnsembleWorkers

        placement.ssh = EnsembleWorkers.start(remote, lambda: {
            str(w["name"]) for w in source.workers() if w.get("connected")})
        placement.workers.update(placement.ssh.placed)
        placement.notes += [f"{host}: temporary worker {name}, started over SSH"
                            for host, name in placement.ssh.placed.items()]
    return placement


def _answered(source: WorkerSource) -> set[str]:
    """The names, host names and addresses connected workers answer to."""
    return {str(worker[key]) for worker in source.workers() if worker.get("connected")
            for key in ("name", "host", "address") if worker.get(key)}


def _resolve_localhost(source: WorkerSource, placement: Placement, workdir: Path,
                       allow_temporary: bool,
                       start_worker: Callable[[Path], TemporaryWorker]) -> None:
    connected = [w for w in source.workers() if w.get("connected") and w.get("accepting", True)]
    named = [w for w in connected if w["name"] == LOCALHOST]
    local = named or sorted(local_workers(connected), key=lambda w: str(w["name"]))
    if local:
        chosen = str(local[0]["name"])
        placement.workers[LOCALHOST] = chosen
        if chosen != LOCALHOST:
            placement.notes.append(f"localhost: worker {chosen}, connected from this machine")
        return
    if not allow_temporary:
        raise ConnectError("localhost: no worker of this machine is connected: start "
                           "`shoal worker` here")
    worker = start_worker(workdir)
    placement.temporary.append(worker)
    deadline = time.monotonic() + JOIN_SECONDS
    while not any(w["name"] == worker.name and w.get("connected") for w in source.workers()):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            words = worker.last_words()
            worker.stop()
            placement.temporary.remove(worker)
            raise ConnectError("localhost: no worker of this machine is connected, and a "
                               "temporary one could not join the server"
                               + (f" ({words})" if words else "")
                               + ": start `shoal worker` here")
        time.sleep(0.1)
    placement.workers[LOCALHOST] = worker.name
    placement.notes.append(f"localhost: no worker of this machine is connected; started "
                           f"temporary worker {worker.name}, working in {workdir}")


def local_workers(workers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers running on this machine: its host name, connected from one of its own
    addresses (a worker in another network namespace has the same host name, not the
    address)."""
    hostname = socket.gethostname()
    mine = this_machines_addresses()
    return [w for w in workers if w.get("host") == hostname and _is_local(w.get("address"), mine)]


def _is_local(address: str | None, mine: set[str]) -> bool:
    if not address:
        return False
    try:
        parsed = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return parsed.is_loopback or str(parsed) in mine


def this_machines_addresses() -> set[str]:
    import psutil

    addresses = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%")[0])
    return addresses

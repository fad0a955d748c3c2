"""Workers over SSH for one run only: started when it starts, stopped when it ends.

`shoal run FILE --hosts a,b` (GNU parallel's --sshlogin) and ensembles with `ssh://` hosts
(remote_runner's model) use them. The hosts are reached in the background, so the run starts
at once on what it has; a host that fails is one line on stderr naming it, and the run goes on
without it. `stop()` stops every worker that was started, whatever happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence

from shoal.provision.hosts import SshHost
from shoal.provision.ssh import HostError, RemoteWorker, SshProvider, SshSettings


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TemporaryWorkers:
    def __init__(self, hosts: Sequence[SshHost], join: str, *,
                 settings: SshSettings | None = None, worker_args: Sequence[str] = (),
                 names: Sequence[str] | None = None, label: str = "shoal",
                 say: Callable[[str], None] = _say):
        self.hosts = list(hosts)
        self.names = list(names) if names is not None else [h.worker_name for h in hosts]
        self.join = join
        self.provider = SshProvider(settings)
        self.worker_args = list(worker_args)
        self.label = label
        self.say = say
        self.started: list[RemoteWorker] = []
        self.failed: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin starting the workers, in the background."""
        self._task = asyncio.create_task(self._start_all(), name="shoal-ssh-workers")

    async def wait_started(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _start_all(self) -> None:
        async def one(host: SshHost, name: str) -> None:
            try:
                worker = await self.provider.start_worker(host, self.join, name=name,
                                                          worker_args=self.worker_args)
            except HostError as exc:
                self.failed.append(str(host))
                self.say(f"{self.label}: {exc}")
                return
            self.started.append(worker)

        await asyncio.gather(*(one(host, name)
                               for host, name in zip(self.hosts, self.names, strict=True)))

    async def stop(self) -> None:
        """Stop every worker started (waiting for those still being started)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(Exception):
                await self._task

        async def one(worker: RemoteWorker) -> None:
            try:
                await self.provider.stop_worker(worker)
            except HostError as exc:
                self.say(f"{self.label}: {exc} (stop it by hand: pid {worker.pid})")

        await asyncio.gather(*(one(worker) for worker in self.started))
        self.started = []


# An ensemble's workers over SSH exit by themselves once idle this long: a run that leaves
# services behind keeps them only while those run.
ENSEMBLE_IDLE_EXIT_SECONDS = 30.0
JOIN_SECONDS = 120.0


class EnsembleWorkers:
    """Temporary workers for an ensemble's `ssh://` hosts, from a synchronous caller."""

    def __init__(self, workers: TemporaryWorkers, placed: dict[str, str]):
        self.workers = workers
        self.placed = placed  # host as written -> worker name, for those that joined

    @classmethod
    def start(cls, hosts: Sequence[str], connected: Callable[[], set[str]]) -> EnsembleWorkers:
        """Start a worker on each host, joined to the server of $SHOAL_HOME (or $SHOAL_JOIN);
        wait until they have connected. A host that fails is one line; it is left unplaced."""
        import os
        import time

        from shoal.cli.up import join_string
        from shoal.provision.hosts import parse_host

        parsed = [parse_host(text) for text in hosts]
        names = [f"{host.worker_name}-run{os.getpid()}" for host in parsed]
        workers = TemporaryWorkers(parsed, join_string(None), names=names,
                                   worker_args=["--exit-when-idle",
                                                str(ENSEMBLE_IDLE_EXIT_SECONDS)],
                                   label="shoal ensemble")

        async def go() -> None:
            workers.start()
            await workers.wait_started()

        asyncio.run(go())
        by_name = {worker.name: text for text, worker_name in zip(hosts, names, strict=True)
                   for worker in workers.started if worker.name == worker_name}
        deadline = time.monotonic() + JOIN_SECONDS
        while set(by_name) - connected() and time.monotonic() < deadline:
            time.sleep(0.2)
        joined = connected()
        for name in set(by_name) - joined:
            workers.say(f"shoal ensemble: {by_name[name]}: worker {name} did not join within "
                        f"{JOIN_SECONDS:.0f}s")
        return cls(workers, {text: name for name, text in by_name.items() if name in joined})

    def stop(self) -> None:
        asyncio.run(self.workers.stop())

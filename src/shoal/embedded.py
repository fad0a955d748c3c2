"""The embedded default: `shoal run FILE -j N` runs a file's commands on this machine.

The same service and worker code as a real deployment, in one process and one event loop: the
worker is linked to the service by plain calls instead of a WebSocket. State lives in `.shoal/`
beside FILE (or `$SHOAL_HOME` when set), so a second run skips what is done and retries failures.
It holds jobs' environments and output, so it is kept as a server's home is: the directories
0700, the database and every file beside it 0600.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.core.errors import InputError
from shoal.core.models import FINAL_STATES, JobState
from shoal.core.protocol import Resources
from shoal.core.states import Transition
from shoal.formats import ParsedJob, parse_file
from shoal.home import DATABASE_FILE, lock_home, private_directory
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store
from shoal.worker.agent import Agent, InProcessLink
from shoal.worker.resources import detect_resources

if TYPE_CHECKING:
    from shoal.provision.hosts import SshHost
    from shoal.provision.temporary import TemporaryWorkers
    from shoal.runfile.listen import Listener, ListenSettings

LOCAL_WORKER = "local"


@dataclass
class RunReport:
    """What a run did, for the summary."""

    total: int
    skipped_done: int
    done: int = 0
    failed: int = 0
    interrupted: bool = False
    wall_seconds: float = 0.0
    failures: list[dict[str, object]] = field(default_factory=list)
    slowest: list[dict[str, object]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not self.interrupted and self.failed == 0 and self.done == self.total


def state_dir(path: Path) -> Path:
    home = os.environ.get("SHOAL_HOME")
    return Path(home).expanduser() if home else path.resolve().parent / ".shoal"


def group_for(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@+-]", "_", path.name)[:128] or "run"


def job_defaults(path: Path) -> dict[str, object]:
    return {"cwd": os.getcwd(), "group": group_for(path)}


def is_runmaker(parsed: list[ParsedJob]) -> bool:
    return bool(parsed) and parsed[0].state_offset is not None


def load(path: Path, fmt: str, parallel: int) -> list[ParsedJob]:
    parsed = parse_file(path, fmt, defaults=job_defaults(path))
    for item in parsed:
        if item.spec.cores > parallel:
            raise InputError(f"asks for {item.spec.cores} cores but -j is {parallel}",
                             source=str(path), line=item.line)
    return parsed


async def run_jobs(path: Path, parsed: list[ParsedJob], parallel: int,
                   progress: Callable[[int, int, int], None] | None = None, *,
                   hosts: Sequence[SshHost] = (),
                   listen: ListenSettings | None = None) -> RunReport:
    """Run the jobs, return the report. `progress(done, failed, total)` is called as they end.

    With `hosts`, the service also listens (TLS, its own worker token) on `listen` (default:
    every address, any free port), and workers started over SSH on those hosts take jobs too,
    until the run ends and they are stopped.

    A runmaker file is the queue itself: shoal.runfile runs it, claiming line by line."""
    if is_runmaker(parsed):
        from shoal.runfile.driver import RunfileOptions, run_runmaker_file

        report, _ = await run_runmaker_file(path, RunfileOptions(parallel=parallel),
                                            job_defaults(path), progress)
        return report
    home = state_dir(path)
    lock_home(home)
    store = Store(home / DATABASE_FILE)
    service = Service(store, ReactorConfig(lost_grace_seconds=0.0, restart_grace_seconds=0.0))
    await service.start()
    started = time.monotonic()
    to_run = [item for item in parsed if item.state_char != "d"]
    result = service.add([item.spec for item in to_run])
    ids: list[int] = result["ids"]
    states = service.states(ids)  # ended ones are in the database only
    done_before = [job_id for job_id in ids if states[job_id] is JobState.DONE]
    again = [job_id for job_id in ids
             if states[job_id] in (JobState.FAILED, JobState.CANCELLED)]
    if again:
        service.act("retry", again, None)
    pending = set(ids) - set(done_before)
    this_run = sorted(pending)
    report = RunReport(total=len(pending), skipped_done=len(parsed) - len(pending))
    finished = asyncio.Event()

    def follow(transitions: list[Transition]) -> None:
        for entry in transitions:
            if entry.job_id not in pending:
                continue
            if entry.to_state in FINAL_STATES:
                pending.discard(entry.job_id)
                if entry.to_state is JobState.DONE:
                    report.done += 1
                else:
                    report.failed += 1
                if progress is not None:
                    progress(report.done, report.failed, report.total)
        if not pending:
            finished.set()

    service.listeners.append(follow)
    if not pending:
        finished.set()
    memory = detect_resources().memory_bytes
    agent = Agent(LOCAL_WORKER, Resources(cores=parallel, memory_bytes=memory),
                  private_directory(home / "spool"), host=socket.gethostname())
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    remote = None
    try:
        if hosts:
            remote = await _ssh_workers(service, home, hosts, listen)
        worker_id = service.join(agent.register_message(), InProcessLink(agent))
        agent.connected(lambda message: service.deliver(worker_id, message))
        waiters = [asyncio.create_task(finished.wait()), asyncio.create_task(interrupted.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if interrupted.is_set() and pending:
            report.interrupted = True
            agent.begin_stop()
            await agent.runner.shutdown(kill=True)
            await asyncio.sleep(0.05)  # let the last reports reach the service
            service.leave(worker_id)  # what it still held goes back to the queue
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        report.wall_seconds = time.monotonic() - started
        if remote is not None:
            workers, listener = remote
            await workers.stop()
            await listener.stop()
        _summarise(service, this_run, report)
        await service.stop()
    return report


async def _ssh_workers(service: Service, home: Path, hosts: Sequence[SshHost],
                       listen: ListenSettings | None) -> tuple[TemporaryWorkers, Listener]:
    """Listen for workers, and start them on `hosts` over SSH, in the background."""
    from shoal.provision.temporary import TemporaryWorkers
    from shoal.runfile.listen import ListenSettings, start_listening

    listener = await start_listening(service, home, listen or ListenSettings("0.0.0.0", 0))
    workers = TemporaryWorkers(hosts, listener.join, label="shoal run")
    workers.start()
    return workers, listener


def _summarise(service: Service, ids: list[int], report: RunReport) -> None:
    jobs = service.find(ids)
    ran = [job for job in jobs if job.wall_seconds is not None]
    ran.sort(key=lambda job: job.wall_seconds or 0.0, reverse=True)
    report.slowest = [{"id": job.id, "cmd": job.cmd, "wall_seconds": job.wall_seconds}
                      for job in ran[:3]]
    for job in jobs:
        if job.state in (JobState.FAILED, JobState.CANCELLED) and len(report.failures) < 10:
            stderr = service.store.output(job.id, "stderr")
            report.failures.append({"id": job.id, "cmd": job.cmd, "reason": job.fail_reason,
                                    "stderr_tail": (stderr.tail or stderr.head)[-2000:]})

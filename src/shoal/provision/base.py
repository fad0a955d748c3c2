"""The protocol every way of starting workers implements (HyperQueue's QueueHandler is the
model): the caller never runs `sbatch` or `ssh` itself, and a provider decides nothing."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.core.errors import ShoalError


class ProvisionError(ShoalError):
    """An engine refused or failed a request; the message names the engine and the host."""

    exit_code = 1


class AllocationState(enum.StrEnum):
    QUEUED = "queued"  # submitted, waiting for the engine to start it
    RUNNING = "running"  # its workers are (or are being) started
    FINISHED = "finished"  # ended by itself (time limit, idle workers left, cancelled)
    FAILED = "failed"  # ended with an error, or never started


@dataclass(frozen=True)
class SubmitRequest:
    """What to start: `workers` workers, each joined to the server with `join`, offering the
    given resources, for at most `time_limit_seconds` (None: no limit)."""

    name: str  # the allocation queue's (or host's) name, for the engine's job name and logs
    workers: int
    join: str  # the connection string each worker is started with (never logged)
    worker_args: Sequence[str] = ()  # extra `shoal worker` options (--cores, --label, ...)
    time_limit_seconds: float | None = None
    idle_timeout_seconds: float | None = None
    engine_args: Sequence[str] = ()  # passed to the engine untouched (sbatch args, ssh opts)
    env: Mapping[str, str] = field(default_factory=dict)
    # Where the engine's script, job id and output files are kept for the user (created by
    # the caller, private); None: the provider keeps nothing on disk.
    work_dir: str | None = None
    started_by: str | None = None  # the workers' `--started-by`, e.g. "slurm:QUEUE/ALLOC"
    # What each worker offers (None: what it finds on its node); given to the worker, and
    # asked of the engine where it has a way (sbatch --cpus-per-task, --mem, --gpus-per-node).
    cores: int | None = None
    memory_bytes: int | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class Allocation:
    """One submitted request, as the engine knows it."""

    provider: str  # "ssh", "slurm", "command"
    engine_id: str  # the engine's own id: a Slurm job id, a host, a command's output
    name: str
    workers: int
    submitted_at: float
    work_dir: str | None = None  # where its script and output files are kept for the user


@dataclass(frozen=True)
class AllocationStatus:
    state: AllocationState
    reason: str | None = None  # why it failed or finished, in the engine's words
    started_at: float | None = None
    ended_at: float | None = None


class WorkerProvider(Protocol):
    """Starts workers through one engine. Methods raise ProvisionError, nothing foreign."""

    name: str

    async def submit(self, request: SubmitRequest) -> Allocation: ...

    async def status(self, allocations: Sequence[Allocation]) -> dict[str, AllocationStatus]:
        """By engine id; an allocation the engine no longer knows is FINISHED."""
        ...

    async def cancel(self, allocation: Allocation) -> None: ...

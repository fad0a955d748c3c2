"""Placement of queued jobs on workers. Pure: no clock, no I/O.

The caller hands over queued jobs in queue order (priority first, FIFO within a priority) as a
lazy iterator; each job goes to the fitting worker with the most free cores, which spreads load.
Pulling stops as soon as no worker has a free core, so a long queue costs nothing per tick.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shoal.core.models import Job

MAX_SKIPPED_PER_PASS = 2000


@dataclass(slots=True)
class Capacity:
    """What one connected worker has free right now."""

    worker_id: int
    name: str
    free_cores: int
    free_memory_bytes: int
    total_cores: int
    total_memory_bytes: int


@dataclass(slots=True)
class Plan:
    assignments: list[tuple[Job, int]]
    skipped: list[Job]  # looked at, fits nowhere now; goes back to the queue in place


def fits(job: Job, worker: Capacity) -> bool:
    if job.on_worker is not None and job.on_worker != worker.name:
        return False
    if job.cores > worker.free_cores:
        return False
    return not (job.memory_bytes and worker.total_memory_bytes
                and job.memory_bytes > worker.free_memory_bytes)


def plan(queued: Iterable[Job], workers: list[Capacity]) -> Plan:
    result = Plan([], [])
    free = [w for w in workers if w.free_cores > 0]
    if not free:
        return result
    for job in queued:
        best: Capacity | None = None
        for worker in free:
            if fits(job, worker) and (best is None or worker.free_cores > best.free_cores):
                best = worker
        if best is None:
            result.skipped.append(job)
            if len(result.skipped) >= MAX_SKIPPED_PER_PASS:
                break
            continue
        best.free_cores -= job.cores
        best.free_memory_bytes -= job.memory_bytes
        result.assignments.append((job, best.worker_id))
        if best.free_cores <= 0:
            free = [w for w in free if w.free_cores > 0]
            if not free:
                break
    return result

"""Placement of queued jobs on workers. Pure: no clock reads, no I/O.

The caller hands over queued jobs in queue order (priority first, FIFO within a priority) as a
lazy iterator. Each job goes to the fitting worker with the most free cores, which spreads
load; a job that fits nowhere yet is skipped, and smaller jobs behind it fill in (backfill).
A skipped job that has waited `starve_after_seconds` gets a worker reserved: no later job may
take that worker's free resources in this pass, so it drains until the big job fits.
Pulling stops as soon as no worker has a free core, so a long queue costs nothing per tick.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shoal.core.models import Job

MAX_SKIPPED_PER_PASS = 2000


@dataclass(slots=True)
class Capacity:
    """One connected worker: what it offers in all, and what is free right now."""

    worker_id: int
    name: str
    total_cores: int
    total_memory_bytes: int
    free_cores: int
    free_memory_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    total_gpus: int = 0
    free_gpus: list[str] = field(default_factory=list)
    total_custom: dict[str, int] = field(default_factory=dict)
    free_custom: dict[str, int] = field(default_factory=dict)
    deadline: float | None = None  # when the worker stops (its allocation ends); None: never


@dataclass(slots=True)
class Plan:
    assignments: list[tuple[Job, int, list[str]]]  # job, worker id, GPU ids it gets
    skipped: list[Job]  # looked at, fits nowhere now; goes back to the queue in place
    reserved: dict[int, int] = field(default_factory=dict)  # job id -> worker id held for it


def pinned_to(job: Job, worker: Capacity) -> bool:
    """`--on NAME` pins to a worker name; `--on key=value` to workers with that label."""
    if job.on_worker is None:
        return True
    key, sep, value = job.on_worker.partition("=")
    if sep:
        return worker.labels.get(key) == value
    return worker.name == job.on_worker


def could_ever_fit(job: Job, worker: Capacity) -> bool:
    """Whether the worker, empty, could run the job."""
    return (pinned_to(job, worker) and job.cores <= worker.total_cores
            and (not job.memory_bytes or not worker.total_memory_bytes
                 or job.memory_bytes <= worker.total_memory_bytes)
            and job.gpus <= worker.total_gpus
            and all(worker.total_custom.get(name, 0) >= amount
                    for name, amount in job.resources.items()))


def fits(job: Job, worker: Capacity) -> bool:
    """Whether the worker can run the job now, with what it has free."""
    return (pinned_to(job, worker) and job.cores <= worker.free_cores
            and (not job.memory_bytes or not worker.total_memory_bytes
                 or job.memory_bytes <= worker.free_memory_bytes)
            and job.gpus <= len(worker.free_gpus)
            and all(worker.free_custom.get(name, 0) >= amount
                    for name, amount in job.resources.items()))


def in_time(job: Job, worker: Capacity, now: float) -> bool:
    """Whether a job's expected run time (`--time`) ends before the worker does."""
    return worker.deadline is None or job.time_seconds is None \
        or now + job.time_seconds <= worker.deadline


def limits_allow(job: Job, room: Mapping[str, int | None]) -> bool:
    return all((room.get(name) is None) or room[name] > 0  # type: ignore[operator]
               for name in job.limits)


def _take(job: Job, worker: Capacity, room: dict[str, int | None]) -> list[str]:
    worker.free_cores -= job.cores
    worker.free_memory_bytes -= job.memory_bytes
    gpu_ids, worker.free_gpus = worker.free_gpus[:job.gpus], worker.free_gpus[job.gpus:]
    for name, amount in job.resources.items():
        worker.free_custom[name] -= amount
    for name in job.limits:
        if room.get(name) is not None:
            room[name] -= 1  # type: ignore[operator]
    return gpu_ids


def plan(queued: Iterable[Job], workers: list[Capacity], *,
         limit_room: Mapping[str, int | None] | None = None, now: float = 0.0,
         starve_after_seconds: float = float("inf")) -> Plan:
    """Assign what fits, in order. `limit_room` is how many more jobs each limit admits
    (None: unlimited); it is updated as jobs are placed."""
    result = Plan([], [])
    room: dict[str, int | None] = dict(limit_room or {})
    # Free workers kept in order, most free cores first (ties: the order given), so the first
    # that fits is the best one and a pass costs little more than a job per slot.
    position = {w.worker_id: index for index, w in enumerate(workers)}

    def rank(worker: Capacity) -> tuple[int, int]:
        return (-worker.free_cores, position[worker.worker_id])

    free = sorted((w for w in workers if w.free_cores > 0), key=rank)
    if not free:
        return result
    for job in queued:
        if job.limits and not limits_allow(job, room):
            result.skipped.append(job)
            continue
        best = next((worker for worker in free
                     if fits(job, worker) and in_time(job, worker, now)), None)
        if best is not None:
            result.assignments.append((job, best.worker_id, _take(job, best, room)))
            free.remove(best)
            if best.free_cores > 0:
                bisect.insort(free, best, key=rank)
        else:
            result.skipped.append(job)
            if not result.reserved and job.queued_at is not None \
                    and now - job.queued_at >= starve_after_seconds:
                # The same worker every pass (largest, then oldest), so that it drains.
                capable = [w for w in workers
                           if could_ever_fit(job, w) and in_time(job, w, now)]
                if capable:
                    held = max(capable, key=lambda w: (w.total_cores, -w.worker_id))
                    result.reserved[job.id] = held.worker_id
                    free = [w for w in free if w.worker_id != held.worker_id]
        if not free or len(result.skipped) >= MAX_SKIPPED_PER_PASS:
            break
    return result


def why_not_running(job: Job, workers: list[Capacity],
                    limit_caps: Mapping[str, int | None],
                    limit_running: Mapping[str, int]) -> str:
    """Why a queued job is not running, in words a user can act on."""
    for name in job.limits:
        cap = limit_caps.get(name)
        if cap == 0:
            return f"limit {name} is paused (cap 0)"
        if cap is not None and limit_running.get(name, 0) >= cap:
            return f"limit {name} is full ({limit_running.get(name, 0)} of {cap} running)"
    if not workers:
        return "no workers are connected"
    pinned = [w for w in workers if pinned_to(job, w)]
    if not pinned:
        if job.on_worker and "=" in job.on_worker:
            return f"no connected worker has the label {job.on_worker}"
        return f"pinned to worker {job.on_worker}, which is not connected"
    if any(could_ever_fit(job, w) for w in pinned):
        return "waiting for free resources"
    needs: list[tuple[str, int, int, str]] = [
        (f"{job.cores} cores", job.cores, max(w.total_cores for w in pinned),
         f"{max(w.total_cores for w in pinned)} cores"),
        (f"{job.gpus} GPUs", job.gpus, max(w.total_gpus for w in pinned),
         f"{max(w.total_gpus for w in pinned)} GPUs"),
    ]
    if job.memory_bytes and all(w.total_memory_bytes for w in pinned):
        most = max(w.total_memory_bytes for w in pinned)
        needs.append((f"{_size(job.memory_bytes)} memory", job.memory_bytes, most, _size(most)))
    for name, amount in sorted(job.resources.items()):
        most = max(w.total_custom.get(name, 0) for w in pinned)
        needs.append((f"{name}={amount}", amount, most, f"{name}={most}"))
    for wanted, amount, most, offered in needs:
        if amount > most:
            return f"needs {wanted}; largest worker offers {offered}"
    return "no single worker offers all of: " + ", ".join(w for w, a, _, _ in needs if a)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"

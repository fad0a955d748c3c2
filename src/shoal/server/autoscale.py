"""When to start workers through an allocation queue, and when to give them back. Pure: no
clock reads, no I/O, no engine; the allocation manager (server/allocations.py) feeds it and
carries out what it decides through a `WorkerProvider`.

HyperQueue's autoalloc is the model. Queued jobs are demand, grouped by shape (cores, memory,
GPUs, named resources, `--time`, label pin). Demand is first packed onto what connected
workers have free and onto workers already on their way (allocations queued in the engine,
or started but not all joined yet); what is left is packed onto fresh workers of the
queue's shape, and that count, capped by `max_workers` and cut into allocations of at most
`workers_per_alloc`, is submitted, never leaving more than `backlog` allocations queued in the
engine. A job that cannot fit a worker of the queue (too big, pinned elsewhere, or a `--time`
longer than an allocation lives) is not demand for it. Until a worker of the queue has joined
and shown what it offers, a queue whose shape was not given submits one allocation and waits.

Failures pause the queue: `max_submit_failures` submissions in a row refused by the engine,
or `max_start_failures` allocations in a row that ended before any of their workers joined.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from shoal.core.models import Job
from shoal.provision.base import AllocationState

# A worker joins some time after its allocation starts, and its time limit runs from there:
# a job is demand for a queue only if its `--time` fits the limit less this allowance.
START_ALLOWANCE_SECONDS = 60.0
# How long a started allocation's workers have to join before the missing ones are given up.
JOIN_GRACE_SECONDS = 300.0
# An allocation whose workers have all left (idle) is cancelled if the engine still runs it
# this long after: the worker process ended, the engine did not notice.
LEFT_GRACE_SECONDS = 30.0
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0
MAX_DEMAND_JOBS = 100_000  # queued jobs looked at per pass: enough to fill any queue's room
_ACTIVE = (AllocationState.QUEUED, AllocationState.RUNNING)
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
QUEUE_NAME_RULE = "1-64 letters, digits and _.- (not starting with _.-)"


@dataclass(frozen=True, slots=True)
class Shape:
    """What one job needs."""

    cores: int = 1
    memory_bytes: int = 0
    gpus: int = 0
    custom: tuple[tuple[str, int], ...] = ()
    time_seconds: float | None = None
    label: tuple[str, str] | None = None  # `--on key=value`


@dataclass(frozen=True, slots=True)
class Demand:
    shape: Shape
    count: int


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """What each worker of a queue offers; None: not known (until one has joined)."""

    cores: int | None = None
    memory_bytes: int | None = None
    gpus: int | None = None
    custom: tuple[tuple[str, int], ...] | None = None

    def known(self) -> bool:
        return self.cores is not None

    def over(self, learned: WorkerShape | None) -> WorkerShape:
        """Given values first, then what a joined worker showed."""
        if learned is None:
            return self
        return WorkerShape(
            cores=self.cores if self.cores is not None else learned.cores,
            memory_bytes=self.memory_bytes if self.memory_bytes is not None
            else learned.memory_bytes,
            gpus=self.gpus if self.gpus is not None else learned.gpus,
            custom=self.custom if self.custom is not None else learned.custom)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    name: str
    max_workers: int
    time_limit_seconds: float
    workers_per_alloc: int = 1
    backlog: int = 1
    idle_timeout_seconds: float = 300.0
    worker: WorkerShape = WorkerShape()
    labels: tuple[tuple[str, str], ...] = ()  # every worker of the queue carries these
    max_submit_failures: int = 3
    max_start_failures: int = 3


@dataclass(frozen=True, slots=True)
class QueueState:
    """What the policy remembers of a queue between passes (kept in the store)."""

    paused: str | None = None  # why submitting is stopped; None: it is not
    submit_failures: int = 0  # in a row
    start_failures: int = 0  # allocations in a row that ended with no worker joined
    retry_at: float = 0.0  # no submission before this (after a failure)
    last_error: str | None = None
    last_demand_at: float | None = None
    learned: WorkerShape | None = None  # what a worker of this queue offered when it joined


@dataclass(frozen=True, slots=True)
class AllocationView:
    """One allocation of the queue as the manager sees it."""

    id: int
    state: AllocationState
    workers: int
    submitted_at: float
    started_at: float | None = None
    joined: int = 0  # its workers that have joined, ever
    connected: int = 0  # its workers connected now
    left_at: float | None = None  # when the last of its connected workers left


@dataclass(slots=True)
class Slot:
    """Room a job could go to: a connected worker's free resources, or a worker to come.
    None: not known, taken as room for anything."""

    cores: int | None
    memory_bytes: int | None
    gpus: int | None
    custom: dict[str, int] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    time_left: float | None = None  # seconds the worker has left; None: no limit


@dataclass(slots=True)
class Decision:
    submit: list[int] = field(default_factory=list)  # workers of each new allocation
    cancel: list[tuple[int, str]] = field(default_factory=list)  # allocation id, why
    pause: str | None = None
    demand: int = 0  # queued jobs a worker of this queue could run
    beyond_connected: int = 0  # of those, jobs connected workers have no room for
    unmet: int = 0  # of those, jobs no connected or coming worker has room for
    wanted_workers: int = 0  # fresh workers the unmet jobs need, before any cap


# ---- demand ------------------------------------------------------------------------------


def shape_of(job: Job) -> Shape | None:
    """A job's shape, or None if no allocation's worker could take it (pinned to a name)."""
    label = None
    if job.on_worker is not None:
        key, sep, value = job.on_worker.partition("=")
        if not sep:
            return None
        label = (key, value)
    return Shape(cores=job.cores, memory_bytes=job.memory_bytes, gpus=job.gpus,
                 custom=tuple(sorted(job.resources.items())), time_seconds=job.time_seconds,
                 label=label)


def demand_of(jobs: Iterable[Job], limit_room: Mapping[str, int | None],
              max_jobs: int = MAX_DEMAND_JOBS) -> list[Demand]:
    """Queued jobs as demand by shape. A job held back by a full limit is not demand: a new
    worker would not run it."""
    room = dict(limit_room)
    counts: dict[Shape, int] = {}
    seen = 0
    for job in jobs:
        seen += 1
        if seen > max_jobs:
            break
        if any(room.get(name) is not None and room[name] <= 0  # type: ignore[operator]
               for name in job.limits):
            continue
        shape = shape_of(job)
        if shape is None:
            continue
        for name in job.limits:
            if room.get(name) is not None:
                room[name] -= 1  # type: ignore[operator]
        counts[shape] = counts.get(shape, 0) + 1
    return [Demand(shape, count) for shape, count in counts.items()]


# ---- fitting -----------------------------------------------------------------------------


def _per_slot(shape: Shape, slot: Slot) -> int:
    """How many jobs of this shape the slot has room for (a large number when unbounded)."""
    if shape.label is not None and slot.labels.get(shape.label[0]) != shape.label[1]:
        return 0
    if shape.time_seconds is not None and slot.time_left is not None \
            and shape.time_seconds > slot.time_left:
        return 0
    counts = [_how_many(shape.cores, slot.cores), _how_many(shape.gpus, slot.gpus)]
    if shape.memory_bytes:
        counts.append(_how_many(shape.memory_bytes, slot.memory_bytes or None))
    for name, amount in shape.custom:
        have = None if slot.custom is None else slot.custom.get(name, 0)
        counts.append(_how_many(amount, have))
    return min(counts)


_UNBOUNDED = 1 << 62


def _how_many(need: int, have: int | None) -> int:
    if have is None:
        return _UNBOUNDED
    if need <= 0:
        return _UNBOUNDED
    return max(0, have // need)


def _take(shape: Shape, slot: Slot, count: int) -> None:
    if slot.cores is not None:
        slot.cores -= shape.cores * count
    if slot.gpus is not None:
        slot.gpus -= shape.gpus * count
    if slot.memory_bytes and shape.memory_bytes:
        slot.memory_bytes -= shape.memory_bytes * count
    if slot.custom is not None:
        for name, amount in shape.custom:
            slot.custom[name] = slot.custom.get(name, 0) - amount * count


def _largest_first(demand: Iterable[Demand]) -> list[Demand]:
    return sorted(demand, key=lambda d: (d.shape.gpus, d.shape.cores, d.shape.memory_bytes,
                                         d.shape.custom, d.shape.time_seconds or 0.0,
                                         d.shape.label or ("", "")), reverse=True)


def pack(demand: Sequence[Demand], slots: Sequence[Slot]) -> list[Demand]:
    """Fill the slots (first fit, largest shapes first); returns what did not fit."""
    left: list[Demand] = []
    for item in _largest_first(demand):
        remaining = _fill(item.shape, item.count, slots)
        if remaining:
            left.append(Demand(item.shape, remaining))
    return left


def _fill(shape: Shape, count: int, slots: Sequence[Slot]) -> int:
    """Place up to `count` jobs of `shape` in `slots`, first fit; how many did not fit."""
    for slot in slots:
        if count == 0:
            break
        placed = min(count, _per_slot(shape, slot))
        if placed:
            _take(shape, slot, placed)
            count -= placed
    return count


def fresh_slot(settings: QueueSettings, shape: WorkerShape) -> Slot:
    """A worker of the queue as it joins: its whole shape, its whole time limit."""
    return Slot(cores=shape.cores, memory_bytes=shape.memory_bytes, gpus=shape.gpus,
                custom=None if shape.custom is None else dict(shape.custom),
                labels=dict(settings.labels),
                time_left=max(0.0, settings.time_limit_seconds - start_allowance(settings)))


def start_allowance(settings: QueueSettings) -> float:
    return min(START_ALLOWANCE_SECONDS, settings.time_limit_seconds / 10)


def eligible(demand: Iterable[Demand], settings: QueueSettings,
             shape: WorkerShape) -> list[Demand]:
    """The demand a fresh worker of this queue could run at all."""
    return [d for d in demand if _per_slot(d.shape, fresh_slot(settings, shape)) > 0]


def workers_needed(demand: Sequence[Demand], settings: QueueSettings, shape: WorkerShape,
                   most: int) -> int:
    """Fresh workers of the queue's shape that the demand fills, counting at most `most`."""
    if not demand or most <= 0:
        return 0
    bins: list[Slot] = []
    for item in _largest_first(demand):
        remaining = _fill(item.shape, item.count, bins)
        while remaining and len(bins) < most:
            slot = fresh_slot(settings, shape)
            per = _per_slot(item.shape, slot)
            if per <= 0:
                break
            placed = min(remaining, per)
            _take(item.shape, slot, placed)
            remaining -= placed
            bins.append(slot)
        if len(bins) >= most:
            return most
    return len(bins)


# ---- the decision ------------------------------------------------------------------------


def decide(settings: QueueSettings, state: QueueState, demand: Sequence[Demand],
           connected: Sequence[Slot], allocations: Sequence[AllocationView],
           now: float) -> Decision:
    """What to submit and cancel now. `connected`: free room of every connected worker that
    takes jobs (any source: a job runs wherever it fits); `allocations`: this queue's."""
    decision = Decision()
    shape = settings.worker.over(state.learned)
    wanted = eligible(demand, settings, shape)
    decision.demand = sum(d.count for d in wanted)
    active = [a for a in allocations if a.state in _ACTIVE]

    # Room that exists or is coming: connected workers first, then workers on their way.
    coming = [fresh_slot(settings, shape)
              for a in active for _ in range(_pending_workers(a, now))]
    decision.beyond_connected = sum(d.count for d in pack(wanted, _copy_slots(connected)))
    left = pack(wanted, [*_copy_slots(connected), *coming])
    decision.unmet = sum(d.count for d in left)
    in_use = sum(a.workers for a in active)
    room = max(0, settings.max_workers - in_use)
    if not shape.known():
        # Nothing says what a worker offers: one allocation at a time until one joins.
        decision.wanted_workers = min(1, decision.unmet) * settings.workers_per_alloc
    else:
        decision.wanted_workers = workers_needed(left, settings, shape, settings.max_workers)

    decision.cancel = _cancellations(settings, state, active,
                                     needed=decision.beyond_connected > 0, now=now)
    decision.pause = pause_reason(settings, state)
    if state.paused is not None or decision.pause is not None or now < state.retry_at:
        return decision
    new_workers = min(decision.wanted_workers, room)
    queued = sum(1 for a in active if a.state is AllocationState.QUEUED)
    allowed = max(0, settings.backlog - queued)
    while new_workers > 0 and len(decision.submit) < allowed:
        size = min(settings.workers_per_alloc, new_workers)
        decision.submit.append(size)
        new_workers -= size
    return decision


def _copy_slots(slots: Sequence[Slot]) -> list[Slot]:
    return [replace(s, custom=None if s.custom is None else dict(s.custom)) for s in slots]


def _pending_workers(allocation: AllocationView, now: float) -> int:
    """Workers of an allocation that may still join."""
    if allocation.state is AllocationState.QUEUED:
        return allocation.workers
    started = allocation.started_at if allocation.started_at is not None \
        else allocation.submitted_at
    if now - started > JOIN_GRACE_SECONDS:
        return 0
    return max(0, allocation.workers - allocation.joined)


def _cancellations(settings: QueueSettings, state: QueueState,
                   active: Sequence[AllocationView], needed: bool,
                   now: float) -> list[tuple[int, str]]:
    cancel: list[tuple[int, str]] = []
    for allocation in active:
        if allocation.state is AllocationState.RUNNING and allocation.joined >= \
                allocation.workers and allocation.connected == 0 \
                and allocation.left_at is not None \
                and now - allocation.left_at >= LEFT_GRACE_SECONDS:
            cancel.append((allocation.id, "its workers have all left"))
    # Allocations still queued in the engine, for demand gone this long: not needed.
    idle_for = now - (state.last_demand_at if state.last_demand_at is not None else -math.inf)
    if not needed and idle_for >= settings.idle_timeout_seconds:
        cancel.extend((a.id, "no queued job needs its workers")
                      for a in active if a.state is AllocationState.QUEUED)
    return cancel


# ---- what failures do --------------------------------------------------------------------


def pause_reason(settings: QueueSettings, state: QueueState) -> str | None:
    """Why the queue should pause now (None: it should not). A queue already paused keeps
    its own reason."""
    if state.paused is not None:
        return None
    if state.submit_failures >= settings.max_submit_failures:
        return (f"{state.submit_failures} submissions in a row failed; the last: "
                f"{state.last_error}")
    if state.start_failures >= settings.max_start_failures:
        return (f"{state.start_failures} allocations in a row ended before any worker "
                f"joined; the last: {state.last_error}")
    return None


def after_submit(state: QueueState) -> QueueState:
    return replace(state, submit_failures=0, retry_at=0.0)


def after_submit_failure(state: QueueState, error: str, now: float) -> QueueState:
    failures = state.submit_failures + 1
    delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (failures - 1))
    return replace(state, submit_failures=failures, last_error=error, retry_at=now + delay)


def after_allocation_ended(state: QueueState, joined: int, reason: str | None) -> QueueState:
    """An allocation ended; one that no worker joined counts towards pausing."""
    if joined > 0:
        return replace(state, start_failures=0)
    return replace(state, start_failures=state.start_failures + 1,
                   last_error=reason or "it ended before any worker joined")


def after_worker_joined(state: QueueState, shape: WorkerShape) -> QueueState:
    return replace(state, start_failures=0, learned=shape)


def after_pass(state: QueueState, decision: Decision, now: float) -> QueueState:
    """Remember when demand beyond connected workers was last seen, and a pause the
    decision made."""
    if decision.beyond_connected:
        state = replace(state, last_demand_at=now)
    if decision.pause is not None:
        state = replace(state, paused=decision.pause)
    return state


def resumed(state: QueueState) -> QueueState:
    return replace(state, paused=None, submit_failures=0, start_failures=0, retry_at=0.0)

"""What happened, told to whatever watches: one typed interface between the server and its
observers (metrics, the dashboard's live feed, a log).

The service emits events only after the tick that produced them is committed, so an observer
never sees a change the database could still lose. Observers implement `EventProcessor` and
subscribe to the service's `Events`; they learn of changes through these records alone and read
current state through the service's read methods, never the reactor's internals. (HyperQueue's
`EventProcessor` in its scheduler core is the model.)

An observer that raises is logged and skipped: watching must never stop the queue.

Records are read, never changed: every observer is given the same ones. Those made for each
job (a transition, an attempt's start and end) are plain dataclasses all the same, not
frozen ones, whose construction costs four times as much (2 to 4 µs a record, against the
50 µs the server spends on a job in all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shoal.core.models import JobState

if TYPE_CHECKING:
    from shoal.server.effects import Effects

log = logging.getLogger("shoal.server.events")


@dataclass(slots=True)  # not frozen: see above
class JobTransitioned:
    """A job changed state (committed)."""

    job_id: int
    group: str
    owner: str
    from_state: JobState | None  # None: created in `to_state`
    to_state: JobState
    at: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobsAdded:
    """New jobs of one owner in one group were committed."""

    group: str
    owner: str
    count: int
    at: float


@dataclass(frozen=True, slots=True)
class JobsMoved:
    """Jobs of one owner and group changed state together, straight in the database (a
    group's queued jobs beyond the server's memory, killed): one event for all of them."""

    group: str
    owner: str
    from_state: JobState
    to_state: JobState
    count: int
    at: float


@dataclass(frozen=True, slots=True)
class JobsRemoved:
    job_ids: tuple[int, ...]
    at: float


@dataclass(slots=True)  # not frozen: see above
class AttemptStarted:
    """A job was handed to a worker. `waited_seconds`: from queued to assigned."""

    job_id: int
    lease_id: int
    attempt: int
    group: str
    owner: str
    worker: str
    host: str | None
    at: float
    waited_seconds: float | None
    cores: int
    memory_bytes: int
    gpus: int


@dataclass(slots=True)  # not frozen: see above
class AttemptFinished:
    """A worker reported an attempt's end, with what it measured."""

    job_id: int
    lease_id: int
    group: str
    owner: str
    worker: str | None
    outcome: str
    exit_code: int | None
    started_at: float
    ended_at: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    """A worker registered, offering these resources."""

    worker_id: int
    name: str
    host: str
    cores: int
    memory_bytes: int
    gpus: int
    at: float


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    worker_id: int
    at: float


@dataclass(frozen=True, slots=True)
class Committed:
    """One tick's transaction: how long the commit took and what it held."""

    seconds: float
    transitions: int
    at: float


@dataclass(frozen=True, slots=True)
class EnsembleStageStarted:
    """An ensemble stage's components started; `spread_seconds` from first to last start."""

    run_id: int
    name: str
    stage: int
    components: int
    spread_seconds: float | None
    at: float


@dataclass(frozen=True, slots=True)
class WorkerMessage:
    """A message on a worker's WebSocket: direction is "in" (from the worker) or "out"."""

    direction: str
    type: str
    size_bytes: int


Event = (JobTransitioned | JobsMoved | JobsAdded | JobsRemoved | AttemptStarted
         | AttemptFinished | WorkerJoined | WorkerLeft | Committed | EnsembleStageStarted
         | WorkerMessage)


class EventProcessor(Protocol):
    """Something that watches the server. `process` gets events in the order they happened,
    in batches (one per committed tick, or one event); it runs on the event loop and must
    return quickly: do work elsewhere if it is slow."""

    def process(self, events: Sequence[Event]) -> None: ...


class Events:
    """The dispatcher: the service emits, subscribed processors receive."""

    def __init__(self) -> None:
        self._processors: list[EventProcessor] = []

    @property
    def watched(self) -> bool:
        return bool(self._processors)

    def subscribe(self, processor: EventProcessor) -> None:
        if processor not in self._processors:
            self._processors.append(processor)

    def unsubscribe(self, processor: EventProcessor) -> None:
        if processor in self._processors:
            self._processors.remove(processor)

    def emit(self, event: Event) -> None:
        if self._processors:
            self.emit_many((event,))

    def emit_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for processor in list(self._processors):
            try:
                processor.process(events)
            except Exception:
                log.exception("an event processor failed: %r", processor)

    # ---- what the service calls ------------------------------------------------------------

    def committed(self, batch: Sequence[Effects], seconds: float, now: float) -> None:
        """After a tick's transaction: everything it held, as events."""
        if self._processors:
            self.emit_many(events_of_tick(batch, seconds, now))

    def added(self, counts: Mapping[tuple[str, str], int], now: float) -> None:
        """After an add's transaction: one event per owner and group ((owner, group) ->
        jobs added)."""
        if not self._processors:
            return
        self.emit_many([JobsAdded(group, owner, count, now)
                        for (owner, group), count in counts.items()])

    def changed_outside(self, job_ids: Sequence[int],
                        counts: Iterable[tuple[str, str, JobState, int]],
                        to_state: JobState | None, now: float) -> None:
        """After jobs outside the reactor's memory were moved to `to_state` (None: deleted)
        in one transaction; `counts`: (owner, group, state before, jobs)."""
        if not self._processors:
            return
        if to_state is None:
            self.emit_many([JobsRemoved(tuple(job_ids), now)])
        else:
            self.emit_many([JobsMoved(group, owner, state, to_state, number, now)
                            for owner, group, state, number in counts])

    def worker_joined(self, worker_id: int, name: str, host: str, cores: int,
                      memory_bytes: int, gpus: int, now: float) -> None:
        self.emit(WorkerJoined(worker_id, name, host, cores, memory_bytes, gpus, now))

    def worker_message(self, direction: str, type_: str, size_bytes: int) -> None:
        if self._processors:
            self.emit_many((WorkerMessage(direction, type_, size_bytes),))


def events_of_tick(batch: Sequence[Effects], seconds: float, now: float) -> list[Event]:
    """A committed tick's effects as events: transitions, attempts begun and ended, removals,
    workers dropped, and the commit itself."""
    out: list[Event] = []
    transitions = 0
    for effects in batch:
        jobs = effects.changed
        assigned_at: dict[int, float] = {}
        for entry in effects.transitions:
            job = jobs.get(entry.job_id)
            out.append(JobTransitioned(entry.job_id, job.group if job else "",
                                       job.owner if job else "", entry.from_state,
                                       entry.to_state, entry.at, entry.reason))
            if entry.to_state is JobState.RUNNING:
                assigned_at[entry.job_id] = entry.at
        transitions += len(effects.transitions)
        for row in effects.new_attempts:
            job = jobs.get(row.job_id)
            if job is None:
                continue
            at = assigned_at.get(row.job_id, job.started_at or now)
            waited = at - job.queued_at if job.queued_at is not None else None
            out.append(AttemptStarted(row.job_id, row.lease_id, row.attempt, job.group,
                                      job.owner, row.worker, row.host, at, waited,
                                      job.cores, job.memory_bytes, job.gpus))
        for result in effects.results:
            job = jobs.get(result.job_id)
            out.append(AttemptFinished(
                result.job_id, result.lease_id, job.group if job else "",
                job.owner if job else "", job.worker if job else None, result.outcome,
                result.exit_code, result.started_at, result.ended_at, result.wall_seconds,
                result.cpu_seconds, result.peak_rss_bytes))
        if effects.removed:
            out.append(JobsRemoved(tuple(effects.removed), now))
        out.extend(WorkerLeft(worker_id, now) for worker_id in effects.disconnect)
    out.append(Committed(seconds, transitions, now))
    return out

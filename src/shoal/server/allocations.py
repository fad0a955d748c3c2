"""Allocation queues in the server: on a timer, each queue's allocations are asked after, the
pure policy (server/autoscale.py) decides, and its submissions and cancellations are carried
out through the queue's provider (provision/). Engines are only ever reached through
subprocesses awaited on the loop, so a slow `sbatch` holds up no heartbeat.

Queues, allocations and a short log of what happened to each queue are kept in the store:
a restarted server goes on with the allocations it had submitted, and their workers
reconnect. `shoal server stop` (and a drained server's exit) and `alloc remove` cancel what
was submitted; a server killed or restarted by a signal leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoal.core.errors import Conflict, InputError, NotFound, ShoalError
from shoal.core.models import JobState
from shoal.provision.base import (
    Allocation,
    AllocationState,
    AllocationStatus,
    ProvisionError,
    SubmitRequest,
    WorkerProvider,
)
from shoal.server import autoscale
from shoal.server.autoscale import (
    QUEUE_NAME_RE,
    QUEUE_NAME_RULE,
    AllocationView,
    QueueSettings,
    QueueState,
    Slot,
    WorkerShape,
)
from shoal.server.events import Event, JobsAdded, JobsMoved, JobTransitioned
from shoal.store.allocations import AllocationRow, AllocationStore, QueueRow

log = logging.getLogger("shoal.server.alloc")

PASS_SECONDS = 2.0  # how often each queue is looked at, at the least
MIN_GAP_SECONDS = 0.25  # between two passes, however often jobs are queued
STATUS_SECONDS = 4.0  # how often the engine is asked about a queue's allocations
CANCEL_TIMEOUT_SECONDS = 60.0
_ACTIVE = (AllocationState.QUEUED.value, AllocationState.RUNNING.value)
_PROVIDER_RE = re.compile(r"^(?:slurm|command):(?P<queue>[^/]+)/(?P<id>[0-9]+)$")


def allocations_dir(home: Path) -> Path:
    return home / "alloc"


def started_by(provider: str, queue: str, allocation_id: int) -> str:
    """What an allocation's workers say of how they were started: `slurm:QUEUE/ID`."""
    return f"{provider}:{queue}/{allocation_id}"


def settings_of(row: QueueRow) -> QueueSettings:
    s = row.settings
    return QueueSettings(
        name=row.name, max_workers=s["max_workers"], time_limit_seconds=s["time_limit_seconds"],
        workers_per_alloc=s["workers_per_alloc"], backlog=s["backlog"],
        idle_timeout_seconds=s["idle_timeout_seconds"],
        worker=WorkerShape(cores=s.get("cores"), memory_bytes=s.get("memory_bytes"),
                           gpus=s.get("gpus")),
        labels=(("shoal.alloc", row.name),))


def state_of(data: dict[str, Any]) -> QueueState:
    learned = data.get("learned")
    return QueueState(
        paused=data.get("paused"), submit_failures=data.get("submit_failures", 0),
        start_failures=data.get("start_failures", 0), retry_at=data.get("retry_at", 0.0),
        last_error=data.get("last_error"), last_demand_at=data.get("last_demand_at"),
        learned=None if learned is None else WorkerShape(
            cores=learned.get("cores"), memory_bytes=learned.get("memory_bytes"),
            gpus=learned.get("gpus"),
            custom=tuple((str(k), int(v)) for k, v in learned["custom"])
            if learned.get("custom") is not None else None))


def state_data(state: QueueState) -> dict[str, Any]:
    data = dataclasses.asdict(state)
    return data


ProviderFactory = Callable[[QueueRow], WorkerProvider]


def default_provider(row: QueueRow) -> WorkerProvider:
    if row.provider == "slurm":
        from shoal.provision.slurm import SlurmProvider

        return SlurmProvider()
    if row.provider == "command":
        from shoal.provision.command import CommandProvider, EngineCommands

        commands = row.settings["commands"]
        return CommandProvider(EngineCommands(commands["submit"], commands["status"],
                                              commands["cancel"]))
    raise InputError(f"provider: {row.provider!r} is not slurm or command")


@dataclasses.dataclass
class _Queue:
    row: QueueRow
    settings: QueueSettings
    state: QueueState
    provider: WorkerProvider
    last_status_at: float = 0.0
    status_error: str | None = None


class AllocationManager:
    def __init__(self, service: Any, home: Path, join: Callable[[], str | None],
                 providers: ProviderFactory = default_provider,
                 clock: Callable[[], float] = time.time,
                 pass_seconds: float = PASS_SECONDS, status_seconds: float = STATUS_SECONDS):
        self.service = service  # the Service: its reactor's workers and queued jobs
        self.home = home
        self.join = join
        self.providers = providers
        self.clock = clock
        self.pass_seconds = pass_seconds
        self.status_seconds = status_seconds
        self.store = AllocationStore(service.store)
        self.queues: dict[str, _Queue] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._watching = False

    # ---- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        for row in self.store.queues():
            try:
                self.queues[row.name] = self._runtime(row)
            except ShoalError as exc:
                log.error("allocation queue %s: %s", row.name, exc)
        if self.queues:
            log.info("allocation queues: %s", ", ".join(self.queues))
        self._watch()
        self._task = asyncio.create_task(self._run(), name="shoal-alloc")

    def _runtime(self, row: QueueRow) -> _Queue:
        return _Queue(row, settings_of(row), state_of(row.state), self.providers(row))

    async def close(self, cancel: bool) -> None:
        """Stop the timer; with `cancel`, cancel every allocation still queued or running."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not cancel:
            return
        async with self._lock:
            for queue in list(self.queues.values()):
                await self._cancel_all(queue, "the server is stopping")

    async def _run(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad pass must not end autoscaling
                log.exception("allocation pass failed")
            await asyncio.sleep(MIN_GAP_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.0, self.pass_seconds - MIN_GAP_SECONDS))
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def _watch(self) -> None:
        """Follow the service's events while there is a queue (none: no cost to others)."""
        events = self.service.events
        if self.queues and not self._watching:
            events.subscribe(self)
        elif not self.queues and self._watching:
            events.unsubscribe(self)
        self._watching = bool(self.queues)

    def process(self, events: Sequence[Event]) -> None:
        """The service's events (an EventProcessor): jobs newly queued are demand, looked at
        without waiting for the timer (at most every MIN_GAP_SECONDS)."""
        if self.queues and any(isinstance(event, JobsAdded) or (
                isinstance(event, JobTransitioned | JobsMoved)
                and event.to_state is JobState.QUEUED) for event in events):
            self._wake.set()

    # ---- one pass ------------------------------------------------------------------------

    async def pass_once(self) -> None:
        if not self.queues:
            return
        now = self.clock()
        reactor = self.service.reactor
        # Read through before the first await below: nothing changes the jobs meanwhile.
        queued = (job for job in reactor.jobs.values() if job.state is JobState.QUEUED)
        room = {name: None if cap is None else cap - reactor.limit_running[name]
                for name, cap in reactor.limit_caps.items()}
        demand = autoscale.demand_of(queued, room)
        connected = [Slot(cores=c.free_cores, memory_bytes=c.free_memory_bytes,
                          gpus=len(c.free_gpus), custom=dict(c.free_custom),
                          labels=c.labels,
                          time_left=None if c.deadline is None else c.deadline - now)
                     for c in reactor.capacities()]
        for queue in list(self.queues.values()):
            await self._refresh(queue, now)
            views = self._views(queue, now)
            decision = autoscale.decide(queue.settings, queue.state, demand, connected, views,
                                        now)
            before = queue.state
            queue.state = autoscale.after_pass(queue.state, decision, now)
            if decision.pause is not None:
                self._event(queue, f"paused: {decision.pause}", now)
                log.warning("allocation queue %s paused: %s", queue.row.name, decision.pause)
            for allocation_id, why in decision.cancel:
                await self._cancel(queue, allocation_id, why)
            for workers in decision.submit:
                if not await self._submit(queue, workers, now):
                    break
            if queue.state != before:
                self._save(queue)

    def _views(self, queue: _Queue, now: float) -> list[AllocationView]:
        rows = [r for r in self.store.allocations(queue.row.name) if r.state in _ACTIVE]
        presence = self._presence(queue)
        views = []
        changed = []
        for row in rows:
            names, connected, left_at = presence.get(row.id, (set(), 0, None))
            joined = max(row.joined, len(names))
            if joined != row.joined:
                row.joined = joined
                changed.append(row)
            if joined and row.state == AllocationState.QUEUED.value:
                # A worker joined before the engine's answer caught up: it runs.
                row.state, row.started_at = AllocationState.RUNNING.value, now
                changed.append(row)
            views.append(AllocationView(
                id=row.id, state=AllocationState(row.state), workers=row.workers,
                submitted_at=row.submitted_at, started_at=row.started_at, joined=joined,
                connected=connected, left_at=left_at))
        self.store.update(list({r.id: r for r in changed}.values()))
        return views

    def _presence(self, queue: _Queue) -> dict[int, tuple[set[str], int, float | None]]:
        """Per allocation of the queue: names of its workers seen, how many are connected,
        and when the last one left."""
        found: dict[int, tuple[set[str], int, float | None]] = {}
        learned: WorkerShape | None = None
        for worker in self.service.reactor.workers.values():
            match = _PROVIDER_RE.match(worker.provider or "")
            if match is None or match["queue"] != queue.row.name:
                continue
            names, connected, left_at = found.get(int(match["id"]), (set(), 0, None))
            names.add(worker.name)
            if worker.connected:
                connected += 1
                learned = WorkerShape(cores=worker.cores, memory_bytes=worker.memory_bytes,
                                      gpus=len(worker.gpus),
                                      custom=tuple(sorted(worker.custom.items())))
            else:
                left_at = max(left_at or 0.0, worker.last_seen)
            found[int(match["id"])] = (names, connected, left_at)
        if learned is not None and learned != queue.state.learned:
            queue.state = autoscale.after_worker_joined(queue.state, learned)
        return found

    async def _refresh(self, queue: _Queue, now: float) -> None:
        """Ask the engine how the queue's active allocations are doing."""
        rows = [r for r in self.store.allocations(queue.row.name) if r.state in _ACTIVE]
        if not rows or now - queue.last_status_at < self.status_seconds:
            return
        queue.last_status_at = now
        try:
            statuses = await queue.provider.status([self._allocation(queue, r) for r in rows])
        except ProvisionError as exc:
            if str(exc) != queue.status_error:
                self._event(queue, f"cannot ask about allocations: {exc}", now)
            queue.status_error = str(exc)
            return
        queue.status_error = None
        changed = []
        for row in rows:
            status = statuses.get(row.engine_id)
            if status is None or status.state.value == row.state:
                continue
            changed.append(row)
            self._moved(queue, row, status, now)
        self.store.update(changed)

    def _moved(self, queue: _Queue, row: AllocationRow, status: AllocationStatus,
               now: float) -> None:
        row.state = status.state.value
        name = f"allocation {row.id} ({queue.row.provider} {row.engine_id})"
        if status.state is AllocationState.RUNNING:
            row.started_at = row.started_at or now
            self._event(queue, f"{name} started", now)
            return
        if status.state is AllocationState.QUEUED:
            return
        row.ended_at = now
        presence = self._presence(queue).get(row.id)
        row.joined = max(row.joined, len(presence[0]) if presence else 0)
        reason = status.reason or status.state.value
        if not row.joined and row.work_dir:
            reason += f"; its output: {row.work_dir}/stderr"
        row.reason = reason
        self._event(queue, f"{name} {status.state.value}: {reason}", now)
        queue.state = autoscale.after_allocation_ended(queue.state, row.joined, reason)
        self._save(queue)

    async def _submit(self, queue: _Queue, workers: int, now: float) -> bool:
        join = self.join()
        if join is None:
            return False  # the server does not know its address yet
        name = queue.row.name
        allocation_id = self.store.new_allocation_id(name, now)
        work_dir = allocations_dir(self.home) / name / str(allocation_id)
        s = queue.row.settings
        request = SubmitRequest(
            name=name, workers=workers, join=join, time_limit_seconds=s["time_limit_seconds"],
            idle_timeout_seconds=s["idle_timeout_seconds"], engine_args=s["engine_args"],
            work_dir=str(work_dir), started_by=started_by(queue.row.provider, name,
                                                          allocation_id),
            cores=s.get("cores"), memory_bytes=s.get("memory_bytes"), gpus=s.get("gpus"),
            worker_args=[*s.get("worker_args", [])])
        try:
            allocation = await queue.provider.submit(request)
        except ProvisionError as exc:
            self.store.forget(allocation_id)
            queue.state = autoscale.after_submit_failure(queue.state, str(exc), self.clock())
            self._event(queue, f"submission failed: {exc}", now)
            log.warning("allocation queue %s: submission failed: %s", name, exc)
            self._save(queue)
            return False
        self.store.submitted(AllocationRow(
            id=allocation_id, queue=name, engine_id=allocation.engine_id,
            state=AllocationState.QUEUED.value, workers=workers,
            submitted_at=allocation.submitted_at, work_dir=allocation.work_dir))
        queue.state = autoscale.after_submit(queue.state)
        queue.last_status_at = 0.0  # ask about it on the next pass
        self._event(queue, f"allocation {allocation_id} submitted: {workers} worker(s), "
                           f"{queue.row.provider} {allocation.engine_id}", now)
        log.info("allocation queue %s: submitted allocation %d (%s %s, %d workers)", name,
                 allocation_id, queue.row.provider, allocation.engine_id, workers)
        self._save(queue)
        return True

    async def _cancel(self, queue: _Queue, allocation_id: int, why: str) -> None:
        row = next((r for r in self.store.allocations(queue.row.name)
                    if r.id == allocation_id), None)
        if row is None or row.state not in _ACTIVE:
            return
        now = self.clock()
        try:
            await asyncio.wait_for(queue.provider.cancel(self._allocation(queue, row)),
                                   CANCEL_TIMEOUT_SECONDS)
        except (ProvisionError, TimeoutError) as exc:
            self._event(queue, f"cannot cancel allocation {row.id}: {exc}", now)
            return
        row.state, row.ended_at, row.reason = AllocationState.FINISHED.value, now, \
            f"cancelled: {why}"
        self.store.update([row])
        self._event(queue, f"allocation {row.id} cancelled: {why}", now)

    async def _cancel_all(self, queue: _Queue, why: str) -> None:
        for row in self.store.allocations(queue.row.name):
            if row.state in _ACTIVE:
                await self._cancel(queue, row.id, why)

    def _allocation(self, queue: _Queue, row: AllocationRow) -> Allocation:
        return Allocation(provider=queue.row.provider, engine_id=row.engine_id,
                          name=queue.row.name, workers=row.workers,
                          submitted_at=row.submitted_at, work_dir=row.work_dir)

    def _event(self, queue: _Queue, message: str, now: float) -> None:
        with contextlib.suppress(ShoalError):
            self.store.add_event(queue.row.name, now, message)

    def _save(self, queue: _Queue) -> None:
        queue.row.state = state_data(queue.state)
        with contextlib.suppress(ShoalError):
            self.store.save_state(queue.row.name, queue.row.state)

    # ---- what users ask ------------------------------------------------------------------

    def _get(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no allocation queue named {name!r}")
        return queue

    def add(self, provider: str, name: str | None, settings: dict[str, Any]) -> dict[str, Any]:
        if name is None:
            number = 1
            while f"{provider}-{number}" in self.queues:
                number += 1
            name = f"{provider}-{number}"
        if not QUEUE_NAME_RE.match(name):
            raise InputError(f"name: {name!r} is not a queue name ({QUEUE_NAME_RULE})")
        if name in self.queues:
            raise Conflict(f"an allocation queue named {name!r} exists")
        row = QueueRow(name=name, provider=provider, settings=settings,
                       state=state_data(QueueState()), created_at=self.clock())
        queue = self._runtime(row)  # refuses an unknown provider before anything is kept
        self.store.add_queue(row)
        self.queues[name] = queue
        self._watch()
        self._event(queue, f"added: {describe_settings(provider, settings)}", row.created_at)
        self.wake()
        return self.info(name)

    def pause(self, name: str) -> dict[str, Any]:
        queue = self._get(name)
        if queue.state.paused is None:
            queue.state = dataclasses.replace(queue.state, paused="paused by user")
            self._event(queue, "paused by user", self.clock())
            self._save(queue)
        return self.info(name)

    def resume(self, name: str) -> dict[str, Any]:
        queue = self._get(name)
        if queue.state.paused is not None:
            queue.state = autoscale.resumed(queue.state)
            self._event(queue, "resumed", self.clock())
            self._save(queue)
            self.wake()
        return self.info(name)

    async def remove(self, name: str, force: bool) -> dict[str, Any]:
        queue = self._get(name)
        async with self._lock:
            self._views(queue, self.clock())  # one whose workers joined counts as running
            rows = [r for r in self.store.allocations(name) if r.state in _ACTIVE]
            running = [r for r in rows if r.state == AllocationState.RUNNING.value]
            if running and not force:
                raise Conflict(f"queue {name!r} has {len(running)} running allocation(s); "
                               "remove it with --force to cancel them")
            await self._cancel_all(queue, "the queue is removed")
            left = [r for r in self.store.allocations(name) if r.state in _ACTIVE]
            if left:
                raise ShoalError(f"queue {name!r}: could not cancel allocation(s) "
                                 f"{', '.join(str(r.id) for r in left)}; see `shoal alloc "
                                 f"log {name}`")
            self.store.remove_queue(name)
            del self.queues[name]
            self._watch()
        return {"name": name, "removed": True, "cancelled": len(rows)}

    def listing(self) -> list[dict[str, Any]]:
        return [self.summary(name) for name in self.queues]

    def summary(self, name: str) -> dict[str, Any]:
        queue = self._get(name)
        rows = self.store.allocations(name)
        counts = {state.value: sum(1 for r in rows if r.state == state.value)
                  for state in AllocationState}
        s = queue.row.settings
        return {"name": name, "provider": queue.row.provider,
                "state": "paused" if queue.state.paused is not None else "active",
                "paused_reason": queue.state.paused,
                "max_workers": s["max_workers"], "workers_per_alloc": s["workers_per_alloc"],
                "backlog": s["backlog"], "time_limit_seconds": s["time_limit_seconds"],
                "idle_timeout_seconds": s["idle_timeout_seconds"],
                "cores": s.get("cores"), "memory_bytes": s.get("memory_bytes"),
                "gpus": s.get("gpus"), "engine_args": list(s["engine_args"]),
                "allocations": counts,
                "workers": sum(r.workers for r in rows if r.state in _ACTIVE),
                "created_at": queue.row.created_at}

    def info(self, name: str) -> dict[str, Any]:
        queue = self._get(name)
        return {**self.summary(name),
                "submit_failures": queue.state.submit_failures,
                "start_failures": queue.state.start_failures,
                "last_error": queue.state.last_error,
                "directory": str(allocations_dir(self.home) / name),
                "history": [r.to_dict() for r in self.store.allocations(name)],
                "events": self.store.events(name)}

    def log(self, name: str, allocation_id: int | None, stream: str,
            max_bytes: int = 64 * 1024) -> dict[str, Any]:
        """The tail of an allocation's output file (the last allocation's by default)."""
        rows = self.store.allocations(self._get(name).row.name)
        row = rows[-1] if allocation_id is None and rows else next(
            (r for r in rows if r.id == allocation_id), None)
        if row is None:
            raise NotFound(f"queue {name!r} has no allocation"
                           + ("" if allocation_id is None else f" {allocation_id}"))
        path = Path(row.work_dir or allocations_dir(self.home) / name / str(row.id)) / stream
        try:
            with path.open("rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - max_bytes))
                data = handle.read().decode(errors="replace")
        except FileNotFoundError:
            size, data = 0, ""
        except OSError as exc:
            raise ShoalError(f"{path}: cannot read ({exc.strerror})") from None
        return {"queue": name, "allocation": row.id, "stream": stream, "path": str(path),
                "total_bytes": size, "data": data}


def describe_settings(provider: str, settings: dict[str, Any]) -> str:
    parts = [provider, f"max {settings['max_workers']} workers",
             f"{settings['workers_per_alloc']} per allocation",
             f"backlog {settings['backlog']}",
             f"time limit {settings['time_limit_seconds']:g}s",
             f"idle timeout {settings['idle_timeout_seconds']:g}s"]
    if settings["engine_args"]:
        parts.append("args " + shlex.join(settings["engine_args"]))
    return ", ".join(parts)


def check_settings(provider: str, settings: dict[str, Any]) -> None:
    """The cross-field rules the request model cannot say alone."""
    if settings["workers_per_alloc"] > settings["max_workers"]:
        raise InputError("workers_per_alloc: more than max_workers")
    if provider == "command" and not settings.get("commands"):
        raise InputError("commands: the command provider needs submit, status and cancel")

"""The service loop: moves events into the reactor, commits its effects, then sends messages.

One `step` = tick the clock, schedule, commit everything in one transaction, send. Events that
arrive while a step runs are handled by the next one, so load batches itself. With a
`commit_interval` (`shoal run`, whose worker is in its process) the loop's steps send that
worker its messages first and are committed together, at most that often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shoal.core.collection import no_cycle_collection
from shoal.core.errors import InputError, StoreUnavailable
from shoal.core.models import Job, JobChanges, JobSpec, JobState
from shoal.core.protocol import (
    PROTOCOL_VERSION,
    Finished,
    FromWorker,
    Heartbeat,
    OutputChunk,
    Peek,
    Ready,
    Register,
    Started,
    Stopping,
    TimeReply,
    ToWorker,
    Welcome,
)
from shoal.core.states import Transition
from shoal.server.archive import StoreArchive
from shoal.server.arrays import ArrayFeeds
from shoal.server.effects import ASSIGN_BUDGET_BYTES, AlikeJobs, Effects, encoded_bound
from shoal.server.events import Events
from shoal.server.reactor import RETRIED, Reactor, ReactorConfig
from shoal.server.requirements import HISTORY_PER_GROUP
from shoal.store import CHANGED_IN_PLACE, JobQuery, StateCounts, Store

log = logging.getLogger("shoal.server")

MAX_JOBS_PER_ADD = 1_000_000
# The commit_interval of a run whose workers are all in its process (`shoal run`): at -j2,
# about seven jobs of `true` a commit; a transaction a job cost more CPU than its spawn.
IN_PROCESS_COMMIT_INTERVAL_SECONDS = 0.01
# Its loop's steps at most this often: at -j2 a step (schedule, send, the deferred commit)
# every job cost as much CPU as the job's own start; the runner holds a few jobs ahead.
IN_PROCESS_STEP_INTERVAL_SECONDS = 0.002
# The states each action can change: a group's other members are left where they are (in
# the database, for ended ones).
_ACTS_ON: dict[str, frozenset[JobState] | None] = {
    "kill": frozenset({JobState.WAITING, JobState.QUEUED, JobState.DELAYED, JobState.RUNNING,
                       JobState.LOST}),
    "retry": frozenset({JobState.FAILED, JobState.CANCELLED}),
    "remove": None,
}
_ENDED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
_LIVE = tuple(state for state in JobState if state not in _ENDED)
_MODIFIABLE = frozenset({JobState.WAITING, JobState.QUEUED, JobState.DELAYED, JobState.FAILED,
                         JobState.CANCELLED})


class WorkerLink(Protocol):
    """How the service reaches one connected worker (a WebSocket, or a worker in process)."""

    # True for a worker in this process: with a commit_interval, it is sent its messages
    # before they are committed (a crash that loses them loses the worker too).
    immediate: bool

    def send(self, message: ToWorker) -> None: ...

    def close(self, reason: str) -> None: ...


class Service:
    def __init__(self, store: Store, config: ReactorConfig | None = None,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        max_job_id, max_lease_id = store.max_ids()
        config = config or ReactorConfig()
        # Only live jobs are read back, and of the queued only the window's first part (it
        # fills as the server works): history and the backlog stay in the database.
        self.reactor = Reactor(store.load_jobs(live_only=True, window=config.window_read),
                               next_job_id=max_job_id + 1,
                               next_lease_id=max_lease_id + 1, config=config, now=clock(),
                               limit_caps=store.limits(),
                               history=store.requirement_history(HISTORY_PER_GROUP),
                               archive=StoreArchive(store), counts=store.opening_counts())
        self._links: dict[int, WorkerLink] = {}
        self._unsaved: list[Effects] = []
        # Above zero: workers in this process (see WorkerLink.immediate) get their messages as
        # soon as a step decides them, and steps are committed together, at most this often.
        # A crash then loses at most this much of their history, as it loses the workers
        # too: their jobs are killed with them, and are queued again on restart.
        self.commit_interval = 0.0
        self.step_interval = 0.0  # the loop's steps at most this often (0: at every event)
        self._deferred: list[Effects] = []  # sent in process, not yet committed
        self._commit_due = 0.0
        self._woken_for = -1.0  # the _commit_due a wake-up is set for
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.store_error: str | None = None
        # Called with each committed batch of transitions (the embedded runner and the
        # ensemble runner follow their jobs through these).
        self.listeners: list[Callable[[list[Transition]], None]] = []
        # Observers (metrics, the dashboard): told what each committed tick did.
        self.events = Events()
        # Receives what only ensembles care about: time replies, ready and gated starts.
        self.ensemble_messages: Callable[[int, object], None] | None = None
        # request id -> (the worker asked, the answer): only that worker may answer it
        self._peeks: dict[int, tuple[int, asyncio.Future[OutputChunk]]] = {}
        self._next_peek = 0
        # Asks whatever runs the service to shut it down (drain finished, or `server stop`).
        self.request_shutdown: Callable[[], None] | None = None
        self.shutdown_reason: str | None = None  # set by shutdown(); None: a signal, a crash
        self.started_at = clock()
        self.keep_history_seconds: float | None = None  # --keep-history: expire ended jobs
        self._expiry: asyncio.Task[None] | None = None
        self.arrays = ArrayFeeds(self)  # arrays kept as records, made into jobs as they run

    # ---- the loop ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.checkpoint_in_background()
        self.step()
        self._task = asyncio.create_task(self._run(), name="shoal-service")
        if self.keep_history_seconds is not None:
            self._expiry = asyncio.create_task(self._expire_history(self.keep_history_seconds))

    async def _expire_history(self, keep: float) -> None:
        """Now and then (at start, then every hour, or sooner for a short keep)."""
        while True:
            try:
                removed = self.purge(_ENDED, ended_before=self.clock() - keep)["affected"]
                if removed:
                    log.info("removed %d ended jobs older than --keep-history", removed)
            except StoreUnavailable as exc:
                log.warning("history not expired this time: %s", exc)
            await asyncio.sleep(min(3600.0, max(1.0, keep / 10)))

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        saved = True
        try:
            self.step()
        except StoreUnavailable:
            saved = False
            log.error("could not save the last changes: %s", self.store_error)
        for link in list(self._links.values()):
            link.close("server stopping")
        # Everything written: the counts kept are those of the database, sealed with it.
        self.store.close(counts=self.reactor.count_rows() if saved else None)

    def wake(self) -> None:
        self._wake.set()

    def serve_in_process(self, *, jobs_ahead: bool) -> None:
        """Every worker is in this process (`shoal run`): see commit_interval. `jobs_ahead`:
        they are given more jobs than they run at once, so the steps may be spaced out
        (a worker given only what it runs would wait for the next step at every end)."""
        self.commit_interval = IN_PROCESS_COMMIT_INTERVAL_SECONDS
        if jobs_ahead:
            self.step_interval = IN_PROCESS_STEP_INTERVAL_SECONDS

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            deadline = self.reactor.next_deadline()
            check = self.arrays.next_check()
            if check is not None:
                deadline = check if deadline is None else min(deadline, check)
            if self._unsaved:
                retry_at = self.clock() + 1.0
                deadline = retry_at if deadline is None else min(deadline, retry_at)
            # A timer that sets the wake event, rather than wait_for: no task per turn, and
            # no lost cancellation when the timer and a wake race.
            timer = None
            if deadline is not None:
                timer = loop.call_later(max(0.0, deadline - self.clock()), self._wake.set)
            await self._wake.wait()
            if timer is not None:
                timer.cancel()
            self._wake.clear()
            if self._stopping:
                break
            with contextlib.suppress(StoreUnavailable):  # logged in _commit; retried next step
                self.step(defer=True)
            if self.step_interval:  # what arrives meanwhile waits for one step
                await asyncio.sleep(self.step_interval)

    def step(self, *, defer: bool = False) -> None:
        """`defer`: the loop's own step, whose commit may wait for the commit_interval. Any
        other (an add, a kill, ...) commits what is pending at once: its caller reads the
        store, or the reactor as committed, next."""
        now = self.clock()
        with no_cycle_collection():  # a tick makes many objects, none in a cycle
            self.reactor.tick(now)
            self.arrays.feed(now)
            self.reactor.schedule(now)
            self._commit(self.reactor.take_effects(), now=not defer)
        if self.reactor.draining and not self.reactor.holding and not self._unsaved \
                and not self._deferred:
            self.shutdown("drained: no job is running")

    def shutdown(self, reason: str) -> None:
        if self.shutdown_reason is not None:
            return  # asked already: each step of a drained service would ask again
        self.shutdown_reason = reason  # on purpose: what `shoal alloc` submitted is cancelled
        if self.request_shutdown is not None:
            log.info("stopping: %s", reason)
            self.request_shutdown()

    def _commit(self, effects: Effects, *, now: bool = False) -> None:
        """Commit, then send. Effects that could not be committed wait, unsent, for a retry.
        With a commit_interval, in-process workers are sent theirs first, and the commit
        waits for the interval to pass (unless `now`, or the service is stopping)."""
        if self.commit_interval:
            if not effects.empty:
                self._send(effects, early=True)
                self._deferred.append(effects)
            if self._deferred and not (now or self._stopping) \
                    and self.clock() < self._commit_due:
                self._commit_later()
                return
            fresh, self._deferred = self._deferred, []
        else:
            fresh = [] if effects.empty else [effects]
        if not fresh and not self._unsaved:
            return
        batch = [*self._unsaved, *fresh]
        changed = {job_id: job for e in batch for job_id, job in e.changed.items()}
        commit_started = time.perf_counter()
        try:
            self.store.commit_tick(
                changed.values(),
                [t for e in batch for t in e.transitions],
                [a for e in batch for a in e.new_attempts],
                [r for e in batch for r in e.results],
                [s for e in batch for s in e.started],
                [r for e in batch for r in e.removed],
                [row for e in batch for row in e.learned],
                [job for e in batch for job in e.modified.values()],
                [lease for e in batch for lease in e.withdrawn],
            )
        except StoreUnavailable as exc:
            if self.store_error is None:
                log.error("%s", exc)
            self.store_error = str(exc)
            self._unsaved = batch
            raise
        commit_seconds = time.perf_counter() - commit_started
        if self.store_error is not None:
            log.warning("the database is writable again")
        self.store_error = None
        self._unsaved = []
        self._commit_due = self.clock() + self.commit_interval
        for done in batch:
            self._send(done)
            if done.transitions:
                for listener in self.listeners:
                    listener(done.transitions)
        # In the database now. After every listener: a job an earlier step of the batch
        # changed may have ended in a later one, and its listener still reads it.
        self.reactor.forget([job_id for done in batch for job_id in (*done.changed,
                                                                     *done.removed)])
        self.events.committed(batch, commit_seconds, self.clock())
        self._changed.set()
        self._changed = asyncio.Event()

    def _commit_later(self) -> None:
        """Wake the loop when the deferred effects are due (a step may run outside it)."""
        if self._woken_for == self._commit_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test stepping by hand): the next step commits
            return
        self._woken_for = self._commit_due
        loop.call_later(max(0.0, self._commit_due - self.clock()), self._wake.set)

    def _send(self, effects: Effects, *, early: bool = False) -> None:
        """Messages to the workers; `early`, before the commit: only to those that get them
        at once (the others' part is sent after it)."""
        sending = (early or not self.commit_interval
                   or not all(link.immediate for link in self._links.values()))
        for worker_id, messages in (effects.messages() if sending else {}).items():
            link = self._links.get(worker_id)
            if link is not None and early == bool(self.commit_interval and link.immediate):
                for message in messages:
                    link.send(message)
        if early:
            return
        for worker_id in effects.disconnect:
            link = self._links.pop(worker_id, None)
            if link is not None:
                link.close("lease expired")

    # ---- workers -----------------------------------------------------------------------------

    def send_to_worker(self, worker_id: int, message: ToWorker) -> None:
        link = self._links.get(worker_id)
        if link is not None:
            link.send(message)

    async def peek(self, job_id: int, stream: str, offset: int,
                   owner: str | None = None) -> OutputChunk | None:
        """Live output of a running job, asked of its worker; None if it cannot answer."""
        job = self.reactor.get(job_id, owner)
        holder = next((w for w in self.reactor.workers.values() if job_id in w.job_ids), None)
        if job.state is not JobState.RUNNING or holder is None or job.lease_id is None:
            return None
        self._next_peek += 1
        request_id = self._next_peek
        future: asyncio.Future[OutputChunk] = asyncio.get_running_loop().create_future()
        self._peeks[request_id] = (holder.id, future)
        self.send_to_worker(holder.id, Peek(request_id=request_id, lease_id=job.lease_id,
                                            stream=stream, offset=offset))  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(future, 5.0)
        except TimeoutError:
            return None
        finally:
            self._peeks.pop(request_id, None)

    def join(self, register: Register, link: WorkerLink, address: str | None = None,
             credential: str = "") -> int:
        """`credential`: a digest of the token the worker connected with (none in process)."""
        if register.protocol_version != PROTOCOL_VERSION:
            raise InputError(f"protocol version {register.protocol_version} is not supported "
                             f"(this server speaks {PROTOCOL_VERSION})")
        worker_id = self.reactor.worker_joined(register, self.clock(), address=address,
                                               credential=credential)
        self._links[worker_id] = link
        self.events.worker_joined(worker_id, register.name, register.host,
                                  register.resources.cores, register.resources.memory_bytes,
                                  len(register.resources.gpus), self.clock())
        config = self.reactor.config
        link.send(Welcome(worker_id=worker_id, heartbeat_seconds=config.heartbeat_seconds,
                          hold_seconds=config.lease_timeout_seconds + config.lost_grace_seconds,
                          lost_grace_seconds=config.lost_grace_seconds))
        log.info("worker %s joined from %s with %d cores", register.name, register.host,
                 register.resources.cores)
        self.wake()
        return worker_id

    def disconnect_token(self, token_hash: str) -> None:
        """A revoked token: close every worker channel opened with it, now."""
        for link in list(self._links.values()):
            if getattr(link, "token_hash", None) == token_hash:
                link.close("token revoked")

    def blob_in_use(self, sha256: str) -> bool:
        """Whether a job held by a worker names this file: all a worker may fetch."""
        jobs = self.reactor.jobs
        return any(entry.get("sha256") == sha256
                   for worker in self.reactor.workers.values()
                   for job_id in worker.job_ids
                   for entry in jobs[job_id].files)

    def leave(self, worker_id: int) -> None:
        if self._links.pop(worker_id, None) is not None:
            self.reactor.worker_left(worker_id, self.clock())
            self.wake()

    def deliver(self, worker_id: int, message: FromWorker) -> None:
        now = self.clock()
        if isinstance(message, Finished):
            self.reactor.finished(worker_id, message.items, now)
        elif isinstance(message, Started):
            # Only what this worker holds reaches the orchestrator: a worker cannot speak
            # for another's components.
            held = self.reactor.started(worker_id, message.items, now)
            if self.ensemble_messages is not None:
                for item in held:
                    job = self.reactor.jobs.get(item.job_id)
                    if job is not None and job.gate:
                        self.ensemble_messages(worker_id, item)
        elif isinstance(message, Ready):
            self.reactor.heard_from(worker_id, now)
            if self.ensemble_messages is not None:
                for ready in message.items:
                    if self.reactor.holds(worker_id, ready.job_id, ready.lease_id):
                        self.ensemble_messages(worker_id, ready)
            return
        elif isinstance(message, TimeReply):
            if self.ensemble_messages is not None:
                self.ensemble_messages(worker_id, message)
            return
        elif isinstance(message, OutputChunk):
            asked = self._peeks.get(message.request_id)
            if asked is not None and asked[0] == worker_id and not asked[1].done():
                asked[1].set_result(message)
            return
        elif isinstance(message, Heartbeat):
            self.reactor.heard_from(worker_id, now)
            return
        elif isinstance(message, Stopping):
            self.reactor.worker_stopping(worker_id, now)
        elif isinstance(message, Register):
            raise InputError("register sent twice")
        self.wake()

    # ---- user actions ------------------------------------------------------------------------

    def add(self, specs: Sequence[JobSpec], *, rerun: bool = False, owner: str = "",
            sees_all: bool = True, may_set_caps: bool = True,
            distinct: bool = False) -> dict[str, Any]:
        """Durable before it returns: new jobs are committed, then scheduled. The jobs belong
        to `owner`; without `sees_all` they may depend only on the owner's jobs. With
        `distinct`, no spec is taken for a job already known (see Reactor.plan_add)."""
        if len(specs) > MAX_JOBS_PER_ADD:
            raise InputError(f"more than {MAX_JOBS_PER_ADD} jobs in one add")
        self.check_sizes(specs)
        return self.add_chunks((specs,), rerun=rerun, owner=owner, sees_all=sees_all,
                               may_set_caps=may_set_caps, distinct=distinct)

    def add_chunks(self, chunks: Iterable[Sequence[JobSpec] | AlikeJobs], *,
                   rerun: bool = False, owner: str = "", sees_all: bool = True,
                   may_set_caps: bool = True, distinct: bool = False) -> dict[str, Any]:
        """An add whose specs (already checked for size and number) come in chunks, read one
        at a time: a million are never held at once, only the jobs they make."""
        now = self.clock()
        began = time.monotonic()
        # Each chunk's jobs are written as it is planned, in one transaction committed (with
        # a sync) once the whole add is planned; any refusal on the way rolls it all back.
        with self.store.adding() as writer, no_cycle_collection():
            plan = self.reactor.plan_add_chunks(
                chunks, rerun=rerun, now=now, owner=owner, sees_all=sees_all,
                may_set_caps=may_set_caps, distinct=distinct, write=writer)
            writer.finish(plan.limit_caps, plan.last_id)
        # A million jobs hold the loop for many seconds, longer than a worker's lease: its
        # heartbeats are waiting to be read, and it must not be taken for gone meanwhile.
        paused = time.monotonic() - began
        if paused > 1.0:
            self.reactor.excuse_pause(paused)
        self.reactor.apply_add(plan, now=now)
        self.events.added(plan.added_by_group(), now)
        self.step()
        return {"added": plan.added, "existed": plan.existed,
                "requeued": len(plan.requeue), "ids": plan.ids}

    @staticmethod
    def check_sizes(specs: Sequence[JobSpec] | AlikeJobs) -> None:
        """Each job must fit one message to a worker."""
        if isinstance(specs, AlikeJobs):  # the bound grows with the command: the longest's
            pairs: Iterable[tuple[int, JobSpec, str]] = [max(
                ((index, specs.spec, cmd) for index, cmd in enumerate(specs.cmds)),
                key=lambda item: len(item[2]), default=(0, specs.spec, ""))]
        else:
            pairs = ((index, spec, spec.cmd) for index, spec in enumerate(specs))
        for index, spec, cmd in pairs:
            if encoded_bound(cmd, spec.cwd or "", spec.env,
                             [str(f.get("path", "")) for f in spec.files],
                             spec.gpus) > ASSIGN_BUDGET_BYTES:
                raise InputError(f"jobs[{index}]: command, environment and files together are "
                                 f"too large to hand to a worker ({ASSIGN_BUDGET_BYTES} bytes)")

    def act(self, action: str, ids: Sequence[int] | None, group: str | None,
            reason: str = "killed by user", owner: str | None = None) -> list[int]:
        """`owner` limits the action to that owner's jobs (None: anyone's). A whole group is
        acted on in two steps, each committed: the jobs in memory, then, straight in the
        database, the others (its backlog, its history), never read into memory (but for
        those a retry must hold: see _act_outside)."""
        whole_group = group is not None and ids is None
        jobs = self.reactor.select(ids, group, owner, states=_ACTS_ON.get(action),
                                   held_only=whole_group)
        now = self.clock()
        if action == "kill":
            affected = self.reactor.kill(jobs, now, reason)
        elif action == "retry":
            affected = self.reactor.retry(jobs, now)
        elif action == "remove":
            affected = self.reactor.remove(jobs, now)
        else:
            raise InputError(f"unknown action {action!r}")
        if whole_group:
            assert group is not None
            if action != "retry":  # the group's future jobs too
                self.arrays.stop(group, owner, "its group was killed" if action == "kill"
                                 else "its group was removed")
            # Committed without scheduling, which could take backlog jobs into memory.
            self._settle()
            outside, held = self._act_outside(action, group, owner, reason)
            jobs = [*jobs, *held]
            affected = sorted([*affected, *outside])
        self.step()
        self.reactor.forget(job.id for job in jobs)  # those brought back and left as they were
        return affected

    def _act_outside(self, action: str, group: str, owner: str | None, reason: str
                     ) -> tuple[list[int], list[Job]]:
        """Act on the group's jobs the reactor does not hold, once what it did to those it
        holds is committed: what is left of the group in the database is then only the
        backlog's queued jobs and the ended ones. Returns the ids acted on there, and the
        jobs a retry read in (those that must be held once queued: with limits, ensemble
        components)."""
        now = self.clock()
        held: list[Job] = []
        to_state: JobState | None
        if action == "kill":
            ids, counts = self.store.cancel_backlog(group, owner, reason, now)
            to_state = JobState.CANCELLED
        elif action == "retry":
            ids, counts = self.store.retry_backlog(group, owner, RETRIED, now)
            to_state = JobState.QUEUED
        else:
            ids, counts = self.store.remove_group(group, owner)
            to_state = None
        self._changed_outside(ids, counts, to_state, now)
        if action == "retry":
            held = self.reactor.select(None, group, owner, states=_ACTS_ON["retry"])
            ids = [*ids, *self.reactor.retry(held, now)]
        return ids, held

    def _changed_outside(self, ids: Sequence[int], counts: StateCounts,
                         to_state: JobState | None, now: float) -> None:
        """Jobs the reactor does not hold were moved to `to_state` (None: deleted) in the
        database: the reactor recounts them, and observers are told."""
        if ids:
            self.reactor.changed_outside(ids, counts, to_state, now)
            self.events.changed_outside(ids, counts, to_state, now)

    def modify(self, ids: Sequence[int] | None, group: str | None, changes: JobChanges, *,
               owner: str | None = None, may_set_caps: bool = True) -> dict[str, Any]:
        """`shoal mod`: all the jobs change, committed before the answer, or none does. By
        group: its members not running and not done; by id: any, but none running."""
        given = changes.given()
        # A group's jobs the server does not hold are changed in the database, when the
        # change leaves each where it waits; those it holds first, and alike.
        in_place = ids is None and group is not None and given.keys() <= CHANGED_IN_PLACE
        selected = self.reactor.select(ids, group, owner, held_only=in_place,
                                       states=None if ids is not None else _MODIFIABLE)
        if len(selected) > MAX_JOBS_PER_ADD:
            raise InputError(f"more than {MAX_JOBS_PER_ADD} jobs in one change")
        caps = self.reactor.modify(selected, given, self.clock(),
                                   may_set_caps=may_set_caps, owner=owner)
        if caps:
            self.store.set_limits(dict(caps))
        if group is not None:  # the group's arrays make their future jobs so changed too
            self.arrays.modify(group, owner, given)
        changed = [job.id for job in selected]
        if in_place:
            assert group is not None
            self._settle()  # without scheduling, which could take backlog jobs into memory
            changed = sorted({*changed, *self.store.modify_group(group, owner, given)})
            if "priority" in given:
                self.reactor.backlog_reordered()
        self.step()
        self.reactor.forget(job.id for job in selected)
        return {"affected": len(changed), "ids": changed}

    def purge(self, states: Sequence[JobState], *, ended_before: float | None = None,
              group: str | None = None, owner: str | None = None) -> dict[str, Any]:
        """Remove ended jobs (history) in bulk, straight from the database: `shoal rm --state
        done --before 30d`, and the server's --keep-history."""
        bad = [state.value for state in states if not state.is_final]
        if bad or not states:
            raise InputError(f"state: only ended jobs (done, failed, cancelled) are removed "
                             f"in bulk, not {', '.join(bad) or 'none'}")
        self._settle()  # what just ended leaves memory first
        ids, counts = self.store.purge(JobQuery(states=tuple(states), group=group, owner=owner,
                                                ended_before=ended_before))
        self._changed_outside(ids, counts, None, self.clock())
        self.step()
        self.store.compact()
        return {"affected": len(ids), "ids": ids}

    def drain(self) -> dict[str, Any]:
        self.reactor.draining = True
        self.step()
        return {"draining": True, "running": self.reactor.holding}

    async def backup(self, destination: Path) -> int:
        """A consistent copy of the database, taken while serving (in a thread: a large copy
        must not hold up heartbeats). Returns its size."""
        await asyncio.to_thread(self.store.backup, destination)
        return destination.stat().st_size

    def info(self, version: str) -> dict[str, Any]:
        return {"version": version, "draining": self.reactor.draining,
                "started_at": self.started_at, "jobs": self.reactor.total(),
                "live_jobs": self.reactor.total(_LIVE),
                "history_jobs": self.reactor.total(_ENDED),
                "backlog_jobs": self.reactor.backlog,
                "database_bytes": self.store.size_bytes(),
                "running": self.reactor.holding,
                "workers": sum(w.connected for w in self.reactor.workers.values()),
                "store_error": self.store_error}

    # ---- reading -----------------------------------------------------------------------------

    def status(self, group: str | None = None, owner: str | None = None) -> dict[str, Any]:
        groups = self.reactor.counts(group, owner)
        totals: dict[str, int] = {}
        for states in groups.values():
            for state, count in states.items():
                totals[state] = totals.get(state, 0) + count
        return {"version": self.reactor.version, "totals": totals, "groups": groups}

    async def wait_for_change(self, since: int, timeout: float) -> None:
        """Return once the reactor's version differs from `since`, or after `timeout`."""
        if self.reactor.version != since:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def set_limit(self, name: str, cap: int | None) -> dict[str, object]:
        self.store.set_limits({name: cap})
        self.reactor.set_limit(name, cap)
        self.step()
        return self.limit(name)

    def limit(self, name: str) -> dict[str, object]:
        for entry in self.reactor.limits():
            if entry["name"] == name:
                return entry
        return {"name": name, "cap": None, "running": 0, "queued": 0}

    def job(self, job_id: int, owner: str | None = None) -> dict[str, Any]:
        job = self.reactor.get(job_id, owner)
        self._settle()
        data = job.to_dict()
        data["gpu_ids"] = self.reactor.gpu_ids(job_id)
        data["pending_reason"] = self.reactor.pending_reason(job)
        for stream in ("stdout", "stderr"):
            data[stream] = self.store.output(job_id, stream).model_dump()
        data["attempt_history"] = self.store.attempt_history(job_id)
        return data

    async def logs_from(self, job_id: int, stream: str, offset: int | None,
                        owner: str | None = None) -> dict[str, Any]:
        """The answer to GET /jobs/ID/logs: with `offset`, a running job's live output from
        there, asked of its worker; else (or if it cannot answer) the kept head and tail."""
        if offset is not None:
            chunk = await self.peek(job_id, stream, offset, owner)
            if chunk is not None and chunk.found:
                return {"job_id": job_id, "stream": stream, "state": "running", "live": True,
                        "offset": chunk.offset, "data": chunk.data,
                        "next_offset": chunk.next_offset if chunk.next_offset is not None
                        else chunk.offset + len(chunk.data.encode()),
                        "total_bytes": chunk.total_bytes}
        return {**self.logs(job_id, stream, owner), "live": False}

    def logs(self, job_id: int, stream: str, owner: str | None = None) -> dict[str, Any]:
        job = self.reactor.get(job_id, owner)
        self._settle()
        captured = self.store.output(job_id, stream)
        return {"job_id": job_id, "stream": stream, "state": job.state.value,
                **captured.model_dump()}

    def _settle(self) -> None:
        """Commit what the loop has taken in but not yet committed, so that a read of the
        store agrees with the state in memory (a job just ended, with its output)."""
        self._commit(self.reactor.take_effects(), now=True)

    def jobs(self, query: JobQuery, *, after_id: int | None = None, limit: int = 1000,
             newest_first: bool = False) -> dict[str, Any]:
        """One page of a listing, read from the database (keyset paging by id): the cost is
        the page's, whatever the number of jobs. `total` comes from the kept counts when the
        query is by state, group and owner only; with other filters it is null."""
        page, total, next_after = self.page_of_ids(query, after_id=after_id, limit=limit,
                                                   newest_first=newest_first)
        return {"jobs": self.listed(page), "total": total, "next_after_id": next_after}

    def page_of_ids(self, query: JobQuery, *, after_id: int | None = None, limit: int = 1000,
                    newest_first: bool = False) -> tuple[list[int], int | None, int | None]:
        """A page's job ids, `total` and `next_after_id` (see `jobs`): what a page streamed
        slice by slice (`listed`) knows before its first job."""
        self._settle()
        page = self.store.list_ids(query, after_id=after_id, limit=limit,
                                   newest_first=newest_first)
        total = self.reactor.total(query.states, query.group, query.owner) \
            if query.counted else None
        return page, total, page[-1] if len(page) == limit else None

    def listed(self, job_ids: Sequence[int]) -> list[dict[str, Any]]:
        """These jobs as a listing shows them, in this order; one removed since is left out."""
        # Live jobs are the server's own; only ended ones are read from the database (a job
        # leaves memory once its end is committed, so each is in one place or the other).
        held = self.reactor.jobs
        capacities = self.reactor.capacities()
        listed = []
        with no_cycle_collection():
            ended = {job.id: job for job in self.store.jobs_by_id(
                [job_id for job_id in job_ids if job_id not in held])}
            for job_id in job_ids:
                job = held.get(job_id) or ended.get(job_id)
                if job is None:
                    continue
                data = job.to_dict()
                data["gpu_ids"] = self.reactor.gpu_ids(job.id) \
                    if job.state is JobState.RUNNING else []
                data["pending_reason"] = self.reactor.pending_reason(job, capacities)
                listed.append(data)
        return listed

    def find(self, job_ids: Sequence[int]) -> list[Job]:
        """The jobs that exist among these, live ones from memory and ended ones from the
        database in bulk (not one query each)."""
        held = self.reactor.jobs
        found = [held[job_id] for job_id in job_ids if job_id in held]
        found += self.store.jobs_by_id([job_id for job_id in job_ids if job_id not in held])
        return found

    def waiting_on(self, job_id: int, owner: str | None = None) -> list[Job]:
        """The jobs (of `owner`, if given) still waiting on this one, by its id or group."""
        job = self.reactor.get(job_id, owner)  # NotFound if it is not theirs
        return [other for other in self.reactor.waiting_on(job)
                if owner is None or other.owner == owner]

    def states(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        return {job.id: job.state for job in self.find(job_ids)}

    def workers(self) -> list[dict[str, object]]:
        return [worker.to_dict() for worker in self.reactor.workers.values()]

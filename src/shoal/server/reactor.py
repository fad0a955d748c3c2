"""The server's brain. Pure: events in, new state and effects out; the caller passes the time.

The service loop feeds every event here (adds, worker messages, user actions, ticks), then takes
the accumulated `Effects`, commits them in one transaction and only then sends the messages.
Every job state change goes through `_change`, which calls `core.states.transition` and keeps
the counters that depend on states (limits, dependency groups) right. Adding jobs and changing
them is in server/edits.py, a part of the Reactor kept apart for size.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from shoal.core.errors import Conflict, InputError, NameTaken, NotFound
from shoal.core.models import (
    FINAL_STATES,
    HOLDING_STATES,
    MEMORY_LIMIT_REASON,
    TIME_LIMIT_REASON,
    Job,
    JobState,
)
from shoal.core.protocol import (
    MAX_RECONNECT_DELAY_SECONDS,
    Assignment,
    AttemptResult,
    FileEntry,
    KillOrder,
    Register,
    StartedItem,
)
from shoal.core.states import transition
from shoal.server import scheduler
from shoal.server.archive import Archive, MemoryArchive, may_wait_in_backlog, queue_key
from shoal.server.dependencies import Dependencies
from shoal.server.edits import JobEdits
from shoal.server.effects import Effects
from shoal.server.leases import LeaseIds
from shoal.server.requirements import LearnedRequirements
from shoal.server.workers import WorkerState, worker_identity
from shoal.store import AttemptRow, StateCounts

S = JobState
MEMORY_GROWTH = 1.5
RETRIED = "retried by user"  # the journal's reason


@dataclass(frozen=True)
class ReactorConfig:
    heartbeat_seconds: float = 5.0
    lease_timeout_seconds: float = 30.0  # a worker silent this long loses its attempts
    lost_grace_seconds: float = 60.0  # a lost attempt waits this long for its worker to return
    # After a restart, attempts wait at least this long: every worker's reconnect delay, even
    # one grown while the server was down, fits in it. Zero where no worker reconnects.
    restart_grace_seconds: float = 1.5 * MAX_RECONNECT_DELAY_SECONDS
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 600.0
    reserve_after_seconds: float = 60.0  # a job that fits nowhere this long gets a worker held
    # Queued jobs held in memory: the next to run. Those beyond (the backlog) wait in the
    # store and are taken in, in their order, when half the window or less is left.
    queue_window: int = 100_000

    @property
    def window_read(self) -> int:
        """Backlog jobs read at once: at a restart, and each time the window runs low. A
        quarter of the window: reading 100,000 jobs held a restart up by a second or more."""
        return max(1, self.queue_window // 4)


class Reactor(JobEdits):
    def __init__(self, jobs: Iterable[Job], *, next_job_id: int, next_lease_id: int,
                 config: ReactorConfig | None = None, now: float = 0.0,
                 limit_caps: dict[str, int | None] | None = None,
                 history: dict[str, list[tuple[int, float]]] | None = None,
                 archive: Archive | None = None,
                 counts: Iterable[tuple[str, str, JobState, int]] | None = None):
        """`jobs`: with `counts` (owner, group, state, jobs: every job's, from the store),
        only the live ones, the ended ones being in `archive`; without, all of them."""
        self.config = config or ReactorConfig()
        self.archive: Archive = archive or MemoryArchive()
        self.jobs: dict[int, Job] = {}  # live jobs, and ended ones until their end is committed
        self.by_key: dict[tuple[str, str, str], int] = {}  # (owner, cmd, cwd): one job each
        self.workers: dict[int, WorkerState] = {}
        self.limit_caps: dict[str, int | None] = dict(limit_caps or {})
        self.limit_running: Counter[str] = Counter()
        self.deps = Dependencies()
        self.learned = LearnedRequirements(history)
        self.reservations: dict[int, int] = {}  # job id -> worker id held for it
        self.draining = False  # no new starts; the service stops once nothing runs
        self.holding = 0  # jobs running or lost: attempts that may still be alive
        # (owner, group, state) -> jobs
        self._counts: Counter[tuple[str, str, JobState]] = Counter()
        # (owner, group) -> tasks of arrays not yet made into jobs: queued, for status and for
        # dependencies on their group, but not jobs anyone can list (server/arrays.py).
        self.unfed: Counter[tuple[str, str]] = Counter()
        # Queued jobs in the archive only (counted in _counts), all behind `_backlog_after`
        # (a queue_key): every queued job that may wait there and stands before it is held.
        self.backlog = 0
        self._backlog_after: tuple[int, int] | None = None
        self._removing: set[int] = set()  # removed jobs until their removal is committed
        self._next_job_id = next_job_id
        self._leases = LeaseIds(at_least=next_lease_id)
        self._next_worker_id = 1
        self._seq = 0
        self._queue: list[tuple[int, int, int]] = []  # (-priority, seq, job id)
        self._queued_seq: dict[int, int] = {}  # job id -> seq of its one valid queue entry
        # Queued ensemble components: they go to their pinned worker at once, not by queue order.
        self._gated: set[int] = set()
        self._delayed: list[tuple[float, int]] = []  # (retry_at, job id)
        self._lost: list[tuple[float, int]] = []  # (give-up time, job id)
        self._recheck: set[int] = set()  # waiting jobs whose dependencies moved
        self._kill_reasons: dict[int, str] = {}
        self._effects = Effects()
        self.version = 0  # bumps whenever a job changes; status watchers wait on it
        jobs = list(jobs)
        if counts is None:
            counts = [(*key, n) for key, n in
                      Counter((j.owner, j.group, j.state) for j in jobs).items()]
            for job in jobs:
                if job.state in FINAL_STATES:
                    self.archive.keep(job)
            jobs = [job for job in jobs if job.state not in FINAL_STATES]
        counts = list(counts)
        for owner, group, state, number in counts:
            self._counts[owner, group, state] += number
            self.deps.count(group, state, number)
        for job in sorted(jobs, key=lambda j: (j.queued_at or 0.0, j.id)):
            self._hold(job)
            if job.state is S.QUEUED:
                self._enqueue(job)
            elif job.state is S.DELAYED:
                heapq.heappush(self._delayed, (job.retry_at or now, job.id))
            elif job.state in HOLDING_STATES:
                # The server restarted: the attempt lives on only if its worker comes back.
                if job.state is S.RUNNING:
                    job.lost_attempts += 1
                    self._change(job, S.LOST, now, "server restarted")
                grace = max(self.config.lost_grace_seconds, self.config.restart_grace_seconds)
                heapq.heappush(self._lost, (now + grace, job.id))
            elif job.state is S.WAITING:
                self._recheck.add(job.id)
        # Read with a window (Store.load_jobs): the queued jobs not read are the backlog.
        queued = sum(number for _, _, state, number in counts if state is S.QUEUED)
        held = [job for job in jobs if job.state is S.QUEUED]
        self.backlog = max(0, queued - len(held))
        if self.backlog:
            self._backlog_after = max((queue_key(job) for job in held
                                       if may_wait_in_backlog(job)), default=None)

    @property
    def next_lease_id(self) -> int:
        """A lease id above every one handed out: where a restarted reactor goes on from."""
        return self._leases.above_all

    # ---- bookkeeping -------------------------------------------------------------------------

    def take_effects(self) -> Effects:
        effects, self._effects = self._effects, Effects()
        if effects.changed or effects.removed:
            self.version += 1
        return effects

    def _track(self, job: Job) -> None:
        """A new job: counted, and held in memory."""
        self._counts[job.owner, job.group, job.state] += 1
        self.deps.count(job.group, job.state, 1)
        self._hold(job)

    def _hold(self, job: Job) -> None:
        """In memory (the counters already include it)."""
        self.jobs[job.id] = job
        self.by_key[job.owner, *job.key] = job.id
        if job.state is S.WAITING:
            self.deps.watch(job)
        if job.state in HOLDING_STATES:
            self.limit_running.update(job.limits)
            self.holding += 1

    def forget(self, job_ids: Iterable[int]) -> None:
        """Ended jobs whose end is committed leave memory for the archive (and removed ones,
        whose removal is, the reactor's notice). Ensemble components stay: their runs
        follow them to the end."""
        for job_id in job_ids:
            self._removing.discard(job_id)
            job = self.jobs.get(job_id)
            if job is None or job.state not in FINAL_STATES or job.gate:
                continue
            del self.jobs[job_id]
            key = (job.owner, *job.key)
            if self.by_key.get(key) == job_id:
                del self.by_key[key]
            self.archive.keep(job)

    def _known(self, job_id: int) -> Job | None:
        """A job by id, live or archived."""
        job = self.jobs.get(job_id)
        if job is None:
            found = self.archive.load([job_id])
            job = found[0] if found else None
        return job

    def _bring_back(self, job: Job) -> Job:
        """An archived job about to be acted on (retried, removed, added again), or one of
        the backlog (which from now on waits in memory, in its place in the queue)."""
        if job.id not in self.jobs:
            self._hold(job)
            if job.state is S.QUEUED:
                self.backlog -= 1
                self._enqueue(job)
        return self.jobs[job.id]

    def _refill(self, *, from_start: bool = False) -> None:
        """Take the next jobs of the backlog in when the window runs low (`from_start`: a
        whole window from the queue's head, now)."""
        held = len(self._queued_seq)
        if not from_start and (not self.backlog or held > self.config.queue_window // 2):
            return
        wanted = self.config.queue_window if from_start else min(
            self.config.queue_window - held, self.config.window_read)
        loaded = self.archive.queued_after(None if from_start else self._backlog_after, wanted)
        for job in loaded:
            # Not brought back already, and not removed (its row not yet deleted).
            if job.id not in self.jobs and job.id not in self._removing:
                self._hold(job)
                self._enqueue(job)
                self.backlog -= 1
        if len(loaded) < wanted or self.backlog <= 0:
            self.backlog, self._backlog_after = 0, None
        else:
            self._backlog_after = queue_key(loaded[-1])

    def backlog_reordered(self) -> None:
        """Priorities changed in the database: the window is read again (if there is a
        backlog to read it from)."""
        if self.backlog:
            self._rebuild_window()

    def _rebuild_window(self) -> None:
        """Jobs were queued in the database out of the queue's order (a group retried
        there, or its priorities changed): the queued jobs held that may wait in the
        backlog go back to it, and the window is read again from the queue's head, so that
        it holds the first again."""
        for job_id in list(self._queued_seq):
            job = self.jobs.get(job_id)
            if job is not None and may_wait_in_backlog(job) \
                    and job_id not in self._effects.changed:
                del self.jobs[job_id], self._queued_seq[job_id]
                self.by_key.pop((job.owner, *job.key), None)
                self.reservations.pop(job_id, None)
                self.backlog += 1
        self._backlog_after = None
        self._refill(from_start=True)

    def _change(self, job: Job, to: JobState, now: float, reason: str | None = None) -> None:
        """The one place a job's state changes."""
        before = job.state
        self._effects.transitions.append(transition(job, to, now=now, reason=reason))
        self._counts[job.owner, job.group, before] -= 1
        self._counts[job.owner, job.group, to] += 1
        self._effects.changed[job.id] = job
        holds = to in HOLDING_STATES
        if (before in HOLDING_STATES) != holds:
            if job.limits:
                self.limit_running.update({n: 1 if holds else -1 for n in job.limits})
            self.holding += 1 if holds else -1
        self._recheck.update(self.deps.moved(job, before, to))
        if to is S.QUEUED:
            self._enqueue(job)
        if before is S.QUEUED:
            self.reservations.pop(job.id, None)
            self._gated.discard(job.id)
            self._queued_seq.pop(job.id, None)  # its queue entry is stale: the window has room

    def _enqueue(self, job: Job) -> None:
        if job.gate:
            self._gated.add(job.id)
            return
        self._seq += 1
        self._queued_seq[job.id] = self._seq  # an earlier entry of the job is now stale
        heapq.heappush(self._queue, (-job.priority, self._seq, job.id))

    def get(self, job_id: int, owner: str | None = None) -> Job:
        """The job; with `owner`, only if it is theirs (another's is as good as absent)."""
        job = self._known(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"job {job_id} does not exist")
        return job

    def _settle_dependencies(self, now: float) -> None:
        """Release or cancel waiting jobs whose dependencies moved; cancellations cascade."""
        while self._recheck:
            job = self.jobs.get(self._recheck.pop())
            if job is None or job.state is not S.WAITING:
                continue
            verdict, reason = self.deps.verdict(job, self._known)
            if verdict == "ready":
                self._change(job, S.QUEUED, now, "dependencies done")
            elif verdict == "cancel":
                self._change(job, S.CANCELLED, now, reason)

    # ---- limits ------------------------------------------------------------------------------

    def set_limit(self, name: str, cap: int | None) -> None:
        self.limit_caps[name] = cap

    def limits(self) -> list[dict[str, object]]:
        names = set(self.limit_caps) | {n for job in self.jobs.values() for n in job.limits}
        queued: Counter[str] = Counter()
        for job in self.jobs.values():
            if job.state is S.QUEUED:
                queued.update(job.limits)
        return [{"name": name, "cap": self.limit_caps.get(name),
                 "running": self.limit_running[name], "queued": queued[name]}
                for name in sorted(names)]

    # ---- workers -----------------------------------------------------------------------------

    def worker_joined(self, register: Register, now: float, address: str | None = None,
                      credential: str = "") -> int:
        """A worker (re)connects. `credential` is a digest of the token it connected with:
        with the process secret in its register, it decides which attempts it may claim."""
        offered = register.resources
        identity = worker_identity(credential, register.instance_secret)
        # One look at the jobs this name holds: whose they are decides both the name and,
        # below, which attempts a restarted worker gave up.
        held_here = [job for job in self.jobs.values()
                     if job.state in HOLDING_STATES and job.worker == register.name]
        self._check_name_free(register.name, identity, now, held_here)
        # A worker of the same name still marked connected is now this process's stale
        # session, or another's silent for two heartbeats and holding nothing: presumed dead.
        for other in list(self.workers.values()):
            if other.connected and other.name == register.name:
                self.worker_left(other.id, now, reason="replaced by a new session")
        worker = WorkerState(
            id=self._next_worker_id, name=register.name, host=register.host, address=address,
            cores=offered.cores, memory_bytes=offered.memory_bytes, gpus=list(offered.gpus),
            custom=dict(offered.custom), labels=dict(register.labels),
            connected_at=now, last_seen=now, identity=identity,
            containment=register.containment, provider=register.provider,
            deadline=None if register.time_left_seconds is None
            else now + register.time_left_seconds,
        )
        self._next_worker_id += 1
        self.workers[worker.id] = worker
        reported = {a.lease_id: a for a in register.running}
        for attempt in register.running:
            job = self.jobs.get(attempt.job_id)
            # Only the process an attempt was given to may claim it: the same lease number
            # from another token or process is refused, and nothing of the holder's is touched.
            if job is not None and job.lease_id == attempt.lease_id \
                    and job.state in HOLDING_STATES and job.holder == identity:
                if job.state is S.LOST:  # not lost after all: it counts as a normal attempt
                    job.lost_attempts -= 1
                    self._change(job, S.RUNNING, now, f"worker {worker.name} came back")
                job.worker, job.host, job.pid = worker.name, worker.host, attempt.pid
                self._effects.changed[job.id] = job
                worker.hold(job, attempt.gpus)
                if job.id in self._kill_reasons:
                    self._effects.kills[worker.id].append(
                        KillOrder(job_id=job.id, lease_id=attempt.lease_id,
                                  reason=self._kill_reasons[job.id]))
            else:
                # Its job was given to someone else, or removed: this copy must die.
                self._effects.kills[worker.id].append(
                    KillOrder(job_id=attempt.job_id, lease_id=attempt.lease_id,
                              reason="stale lease"))
        # Attempts the server gave this process that it no longer has ended with it: it
        # restarted (a worker keeps its secret across restarts, worker/identity.py).
        for job in held_here:
            if job.state in HOLDING_STATES and job.lease_id not in reported \
                    and job.holder == identity:
                if job.state is S.RUNNING:
                    for other in self.workers.values():
                        other.release(job)
                    job.lost_attempts += 1
                    self._change(job, S.LOST, now, f"worker {worker.name} restarted")
                self._give_up_lost(job, now)
        return worker.id

    def _check_name_free(self, name: str, identity: str, now: float,
                         held_here: Sequence[Job]) -> None:
        """A name belongs to one process: refused to another while that one answers, and
        while jobs it ran under the name wait for it (held, or lost within the grace), so
        that no process, whatever its token, takes over a worker's attempts or its name
        while it is briefly away."""
        for other in self.workers.values():
            if other.connected and other.name == name and other.identity != identity \
                    and now - other.last_seen < 2 * self.config.heartbeat_seconds:
                raise NameTaken(f"a worker named {name!r} is already connected (from "
                                f"{other.host}); give this one another --name", held=False)
        waiting = sum(1 for job in held_here if job.holder != identity)
        if waiting:
            raise NameTaken(f"{waiting} job(s) of another worker named {name!r} wait for it "
                            "to come back; this name is free once they are given up (the "
                            f"lost grace, {self.config.lost_grace_seconds:g} s, after that "
                            "worker is lost)", held=True)

    def worker_left(self, worker_id: int, now: float, reason: str = "disconnected") -> None:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.connected:
            return
        worker.connected = False
        worker.last_seen = now
        for job_id in sorted(worker.job_ids):
            job = self.jobs[job_id]
            if job.state is S.RUNNING:
                job.lost_attempts += 1
                self._change(job, S.LOST, now, f"worker {worker.name} {reason}")
                if job.id in self._kill_reasons:
                    self._change(job, S.CANCELLED, now, self._kill_reasons.pop(job.id))
                else:
                    heapq.heappush(self._lost, (now + self.config.lost_grace_seconds, job.id))
        worker.release_all()
        self.reservations = {j: w for j, w in self.reservations.items() if w != worker_id}
        self._effects.disconnect.append(worker_id)

    def worker_stopping(self, worker_id: int, now: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.accepting = False
            worker.last_seen = now

    def excuse_pause(self, seconds: float) -> None:
        """The server itself could not listen for `seconds` (one long add): that silence is
        not held against any worker, whose messages wait, unread, to be heard next."""
        for worker in self.workers.values():
            if worker.connected:
                worker.last_seen += seconds

    def heard_from(self, worker_id: int, now: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.last_seen = now

    def holds(self, worker_id: int, job_id: int, lease_id: int) -> bool:
        """Whether this worker holds this attempt now: all it may report on."""
        return worker_id in self.workers and \
            self._holds_lease(worker_id, self.jobs.get(job_id), lease_id)

    def _holds_lease(self, worker_id: int, job: Job | None, lease_id: int) -> bool:
        if job is None or job.lease_id != lease_id or job.state is not S.RUNNING:
            return False
        return job.id in self.workers[worker_id].job_ids

    def gpu_ids(self, job_id: int) -> list[str]:
        for worker in self.workers.values():
            if job_id in worker.gpus_held:
                return list(worker.gpus_held[job_id])
        return []

    # ---- reports from workers ----------------------------------------------------------------

    def started(self, worker_id: int, items: Sequence[StartedItem],
                now: float) -> list[StartedItem]:
        """Record the starts of attempts this worker holds; returns those (others are killed)."""
        self.heard_from(worker_id, now)
        accepted = []
        for item in items:
            job = self.jobs.get(item.job_id)
            if job is None or not self._holds_lease(worker_id, job, item.lease_id):
                self._effects.kills[worker_id].append(
                    KillOrder(job_id=item.job_id, lease_id=item.lease_id, reason="stale lease"))
                continue
            job.pid, job.started_at = item.pid, item.started_at
            self._effects.changed[job.id] = job
            self._effects.started.append((item.lease_id, item.pid, item.started_at))
            accepted.append(item)
        return accepted

    def finished(self, worker_id: int, items: Sequence[AttemptResult], now: float) -> None:
        self.heard_from(worker_id, now)
        worker = self.workers[worker_id]
        for result in items:
            self._effects.acks[worker_id].append(result.lease_id)
            job = self.jobs.get(result.job_id)
            if job is None or not self._holds_lease(worker_id, job, result.lease_id):
                continue  # a stale lease: its job was lost and given to another attempt
            worker.release(job)
            if result.never_started:
                self._withdraw(job, result.lease_id)
            else:
                self._record_result(job, result)
                self._effects.results.append(result)
            self._conclude(job, result, now)
        self._settle_dependencies(now)

    def _withdraw(self, job: Job, lease_id: int) -> None:
        """An assignment its worker gave back unstarted is no attempt: not counted, not in
        the job's history, and no start time."""
        job.attempts -= 1
        job.pid = job.started_at = job.ended_at = None
        self._effects.withdrawn.append(lease_id)

    def _record_result(self, job: Job, result: AttemptResult) -> None:
        job.pid = result.pid or job.pid
        job.exit_code = result.exit_code
        job.started_at, job.ended_at = result.started_at, result.ended_at
        job.wall_seconds, job.cpu_seconds = result.wall_seconds, result.cpu_seconds
        job.peak_rss_bytes = result.peak_rss_bytes

    def _conclude(self, job: Job, result: AttemptResult, now: float) -> None:
        kill_reason = self._kill_reasons.pop(job.id, None)
        if result.outcome == "exited" and result.exit_code == 0:
            if job.req_group:
                self.learned.record(job.req_group, result.peak_rss_bytes, result.wall_seconds)
                self._effects.learned.append(
                    (job.req_group, result.peak_rss_bytes, result.wall_seconds))
            self._change(job, S.DONE, now)
            return
        if result.outcome == "killed":
            if kill_reason is not None:
                self._change(job, S.CANCELLED, now, kill_reason)
            else:  # the worker stopped and killed its jobs: not the job's fault, run it again
                if not result.never_started:
                    job.lost_attempts += 1
                self._change(job, S.LOST, now, f"worker {job.worker} stopped")
                self._give_up_lost(job, now)
            return
        reason = _failure_reason(result)
        failed_attempts = job.attempts - job.lost_attempts
        if failed_attempts <= job.retries:
            if result.outcome == "memory_limit" and job.grow_memory and job.memory_bytes:
                job.memory_bytes = int(job.memory_bytes * MEMORY_GROWTH)
                job.requirements_source = (f"memory raised to {job.memory_bytes >> 20} MiB "
                                           "after a memory-limit kill (--grow-memory)")
            job.retry_at = now + self._backoff(job, failed_attempts)
            self._change(job, S.DELAYED, now, reason)
            heapq.heappush(self._delayed, (job.retry_at, job.id))
        else:
            self._change(job, S.FAILED, now, reason)

    def _backoff(self, job: Job, failures: int) -> float:
        """Exponential with ±25 % jitter, seeded by job and attempt so it stays a pure function."""
        base = min(self.config.retry_max_seconds,
                   self.config.retry_base_seconds * 2 ** max(0, failures - 1))
        return base * (0.75 + 0.5 * random.Random(job.id * 7919 + failures).random())

    # ---- user actions ------------------------------------------------------------------------

    def select(self, ids: Sequence[int] | None, group: str | None, owner: str | None = None,
               states: frozenset[JobState] | None = None, *, held_only: bool = False
               ) -> list[Job]:
        """Jobs by id or group, brought into memory to be acted on; with `owner`, only theirs
        (another's job id is not found); with `states`, a group's members in those only;
        `held_only`: a group's members in memory only (the caller acts on the others in the
        database)."""
        if ids is not None:
            return [self._bring_back(self.get(job_id, owner)) for job_id in ids]
        if group is None:
            raise InputError("name job ids or a group")
        selected = [job for job in self.jobs.values() if job.group == group
                    and (owner is None or job.owner == owner)
                    and (states is None or job.state in states)]
        # Outside memory: ended jobs, and the backlog's (queued).
        if not held_only and (states is None or states & FINAL_STATES
                              or (self.backlog and S.QUEUED in states)):
            archived = [job_id for job_id in self.archive.ids_in_group(group, owner, states)
                        if job_id not in self.jobs]
            selected += [self._bring_back(job) for job in self.archive.load(archived)
                         if states is None or job.state in states]
        return sorted(selected, key=lambda job: job.id)

    def kill(self, jobs: Sequence[Job], now: float, reason: str = "killed by user") -> list[int]:
        affected = []
        for job in jobs:
            if job.state in (S.QUEUED, S.WAITING, S.DELAYED, S.LOST):
                self._change(job, S.CANCELLED, now, reason)
                affected.append(job.id)
            elif job.state is S.RUNNING and job.lease_id is not None:
                # A second kill on the way does not change why it was killed.
                self._kill_reasons.setdefault(job.id, reason)
                for worker in self.workers.values():
                    if job.id in worker.job_ids:
                        self._effects.kills[worker.id].append(
                            KillOrder(job_id=job.id, lease_id=job.lease_id, reason=reason))
                affected.append(job.id)
        self._settle_dependencies(now)
        return affected

    def retry(self, jobs: Sequence[Job], now: float) -> list[int]:
        affected = []
        for job in jobs:
            if job.state in (S.FAILED, S.CANCELLED):
                job.attempts = job.lost_attempts = 0
                self._change(job, S.QUEUED, now, RETRIED)
                affected.append(job.id)
        self._settle_dependencies(now)
        return affected

    def remove(self, jobs: Sequence[Job], now: float) -> list[int]:
        busy = [job.id for job in jobs if job.state in HOLDING_STATES]
        if busy:
            raise Conflict(f"job {busy[0]} is running; kill it first")
        for job in jobs:
            del self.jobs[job.id]
            self._removing.add(job.id)
            self._queued_seq.pop(job.id, None)
            self.by_key.pop((job.owner, *job.key), None)
            self._counts[job.owner, job.group, job.state] -= 1
            self._recheck.update(self.deps.left(job))
            self._effects.changed.pop(job.id, None)
            self._effects.removed.append(job.id)
        self._settle_dependencies(now)
        return [job.id for job in jobs]

    # ---- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Drop silent workers, release due retries, give up on lost attempts."""
        for worker in self.workers.values():
            if worker.connected and now - worker.last_seen > self.config.lease_timeout_seconds:
                self.worker_left(worker.id, now, reason="stopped heartbeating")
        while self._delayed and self._delayed[0][0] <= now:
            _, job_id = heapq.heappop(self._delayed)
            job = self.jobs.get(job_id)
            if job is not None and job.state is S.DELAYED:
                self._change(job, S.QUEUED, now, "backoff over")
        while self._lost and self._lost[0][0] <= now:
            _, job_id = heapq.heappop(self._lost)
            job = self.jobs.get(job_id)
            if job is not None and job.state is S.LOST:
                self._give_up_lost(job, now)
        self._settle_dependencies(now)

    def _give_up_lost(self, job: Job, now: float) -> None:
        self._change(job, S.QUEUED, now, "lost attempt given up")

    def next_deadline(self) -> float | None:
        deadlines = [heap[0][0] for heap in (self._delayed, self._lost) if heap]
        connected = [w.last_seen + self.config.lease_timeout_seconds
                     for w in self.workers.values() if w.connected]
        if connected:
            deadlines.append(min(connected))
        return min(deadlines) if deadlines else None

    # ---- scheduling --------------------------------------------------------------------------

    def _queued_in_order(self) -> Iterator[Job]:
        while self._queue:
            _, seq, job_id = heapq.heappop(self._queue)
            if self._queued_seq.get(job_id) != seq:
                continue  # queued again since, with another priority
            del self._queued_seq[job_id]
            job = self.jobs.get(job_id)
            if job is not None and job.state is S.QUEUED:
                yield job

    def capacities(self) -> list[scheduler.Capacity]:
        return [w.capacity() for w in self.workers.values() if w.connected and w.accepting]

    def _limit_room(self) -> dict[str, int | None]:
        return {name: None if cap is None else cap - self.limit_running[name]
                for name, cap in self.limit_caps.items()}

    def schedule(self, now: float) -> int:
        """Assign queued jobs to connected workers with room. Returns how many were assigned."""
        self._settle_dependencies(now)
        self._refill()
        placed = self._place_components(now) if self._gated else 0
        capacities = self.capacities()
        if self.draining or not self._queue or not any(c.free_cores > 0 for c in capacities):
            return placed
        result = scheduler.plan(self._queued_in_order(), capacities,
                                limit_room=self._limit_room(), now=now,
                                starve_after_seconds=self.config.reserve_after_seconds)
        for job in result.skipped:
            self._enqueue(job)
        self.reservations = result.reserved
        for job, worker_id, gpu_ids in result.assignments:
            self._assign(job, self.workers[worker_id], gpu_ids, now)
        return placed + len(result.assignments)

    def _place_components(self, now: float) -> int:
        """Ensemble components go to the worker they are pinned to as soon as it is connected:
        they must all start together, so they take no cores unless they asked for some (and
        then wait for those only), and no queue stands in front of them."""
        if self.draining:
            return 0
        by_name = {w.name: w for w in self.workers.values() if w.connected and w.accepting}
        placed = 0
        for job_id in sorted(self._gated):
            job = self.jobs[job_id]
            worker = by_name.get(job.on_worker or "")
            if worker is None or not scheduler.fits(job, worker.capacity()):
                continue
            self._assign(job, worker, [], now)
            placed += 1
        return placed

    def _assign(self, job: Job, worker: WorkerState, gpu_ids: list[str], now: float) -> None:
        lease_id = self._leases.next()
        self._kill_reasons.pop(job.id, None)  # a kill was meant for an attempt before this
        self._change(job, S.RUNNING, now)
        job.lease_id, job.holder = lease_id, worker.identity
        job.attempts += 1
        job.worker, job.host, job.pid = worker.name, worker.host, None
        job.started_at, job.ended_at = now, None
        job.exit_code = job.wall_seconds = job.cpu_seconds = job.peak_rss_bytes = None
        worker.hold(job, gpu_ids)
        self._effects.new_attempts.append(
            AttemptRow(lease_id, job.id, job.attempts, worker.name, worker.host,
                       worker.identity))
        # Built from a job checked when it was added: not validated again, field by field.
        self._effects.assignments[worker.id].append(Assignment.trusted(
            job_id=job.id, lease_id=lease_id, cmd=job.cmd, cwd=job.cwd, env=job.env,
            cores=job.cores, memory_bytes=job.memory_bytes, gpus=list(gpu_ids),
            time_limit_seconds=job.time_limit_seconds, gate=job.gate,
            files=[FileEntry.model_validate(entry) for entry in job.files],
            always_copy=job.always_copy,
        ))

    # ---- reading -----------------------------------------------------------------------------

    def pending_reason(self, job: Job,
                       capacities: list[scheduler.Capacity] | None = None) -> str | None:
        """Why a queued or waiting job is not running, for `shoal status ID`. Pass
        `capacities` (from `capacities()`) when asking for many jobs at once."""
        if job.state is S.WAITING:
            return self.deps.describe(job, self._known)
        if job.state is not S.QUEUED:
            return None
        if job.id in self.reservations:
            held = self.workers[self.reservations[job.id]].name
            return f"worker {held} is being drained for it (it fits nowhere else yet)"
        if capacities is None:
            capacities = self.capacities()
        return scheduler.why_not_running(job, capacities, self.limit_caps, self.limit_running)

    def waiting_on(self, job: Job) -> list[Job]:
        """The jobs still waiting on this one, by its id or its group (from the dependency
        index: never a walk over every job)."""
        ids = {*self.deps.waiting_on_id(job.id), *self.deps.waiting_on_group(job.group)}
        return [self.jobs[i] for i in sorted(ids)
                if i in self.jobs and self.jobs[i].state is S.WAITING]

    def array_tasks(self, owner: str, group: str, tasks: int) -> None:
        """Tasks of an array that are not jobs yet come (added), or go (made into jobs, which
        the add counts, or dropped with the array)."""
        self.unfed[owner, group] += tasks
        self.deps.count(group, S.QUEUED, tasks)
        if tasks < 0:
            self._recheck.update(self.deps.waiting_on_group(group))
        self.version += 1

    def total(self, states: Sequence[JobState] = (), group: str | None = None,
              owner: str | None = None) -> int:
        """How many jobs there are, from the kept counts (never a scan of the jobs)."""
        return sum(count for (who, name, state), count in self._counts.items()
                   if (not states or state in states) and (group is None or name == group)
                   and (owner is None or who == owner))

    def count_rows(self) -> StateCounts:
        """The kept counts, as the store's job_counts gives them."""
        return [(owner, group, state, count)
                for (owner, group, state), count in self._counts.items() if count]

    def counts(self, group: str | None = None,
               owner: str | None = None) -> dict[str, dict[str, int]]:
        """Jobs per group and state, kept up to date by every change (status is polled); the
        tasks of arrays not yet made into jobs are queued.
        With `owner`, only that owner's jobs."""
        groups: dict[str, dict[str, int]] = defaultdict(dict)
        unfed = ((who, name, S.QUEUED, count) for (who, name), count in self.unfed.items())
        for who, name, state, count in (*((*key, n) for key, n in self._counts.items()),
                                        *unfed):
            if count and (group is None or name == group) and (owner is None or who == owner):
                groups[name][state.value] = groups[name].get(state.value, 0) + count
        return {name: groups[name] for name in sorted(groups)}


def _failure_reason(result: AttemptResult) -> str:
    if result.outcome == "time_limit":
        return TIME_LIMIT_REASON
    if result.outcome == "memory_limit":
        return MEMORY_LIMIT_REASON
    if result.outcome == "spawn_error":
        return f"could not start: {result.error or 'unknown error'}"
    if result.signal:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_code}"

"""Adding jobs and changing them: the part of the Reactor (server/reactor.py) that takes in
new specs and edits of existing ones. Pure, like the rest of it: a mixin of the Reactor, kept
in a module of its own for size; `ReactorState` names what it uses of the Reactor."""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from shoal.core.errors import BatchInputError, Conflict, Forbidden, InputError
from shoal.core.models import (
    FINAL_STATES,
    HOLDING_STATES,
    Job,
    JobSpec,
    JobState,
    own_dict,
    own_list,
    shared_text,
)
from shoal.core.states import Transition, created
from shoal.server.archive import Archive, may_wait_in_backlog, queue_key
from shoal.server.dependencies import GROUP_PREFIX, Dependencies
from shoal.server.effects import AddPlan, AlikeJobs, Effects
from shoal.server.requirements import LearnedRequirements
from shoal.store.schema import key_hash

if TYPE_CHECKING:
    from shoal.server.reactor import ReactorConfig

S = JobState


class JobSink(Protocol):
    """Where an add's new jobs are written as they are planned (store.JobWriter)."""

    def write(self, jobs: Sequence[Job], now: float) -> None: ...
    def write_alike(self, template: Job, jobs: Sequence[tuple[int, str, int | None]],
                    now: float) -> None: ...


@dataclasses.dataclass
class _Adding:
    """One add being planned: what it was asked, and what it has made so far."""

    owner: str
    rerun: bool
    now: float
    may_set_caps: bool
    distinct: bool
    new_jobs: list[Job] = dataclasses.field(default_factory=list)  # held in memory
    requeue: dict[int, None] = dataclasses.field(default_factory=dict)  # ordered, once each
    ids: list[int] = dataclasses.field(default_factory=list)  # one for each spec
    existed: int = 0
    made: int = 0
    index: int = 0  # of the next spec in the whole add
    limit_caps: dict[str, int] = dataclasses.field(default_factory=dict)
    batch_keys: dict[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)
    batch_groups: set[str] = dataclasses.field(default_factory=set)
    # With a JobSink: the key digests of the chunks planned so far, whose jobs are written
    # in the add's open transaction (None: nothing is written before the commit).
    written: set[int] | None = None


def _check_cwd(spec: JobSpec, index: int) -> None:
    # An ensemble component's may be empty (a fresh directory) or relative (under its
    # worker's working directory).
    if spec.cwd is None or not (spec.cwd.startswith("/") or spec.gate):
        raise BatchInputError(index, "cwd: must be an absolute path",
                              f"jobs[{index}].cwd: must be an absolute path")


# Every field of a Job, in order: Job(*_ALL_FIELDS(job)) is a copy, at a seventh of the cost
# of dataclasses.replace.
_ALL_FIELDS = operator.attrgetter(*(field.name for field in dataclasses.fields(Job)))


def _like(template: Job, job_id: int, cmd: str) -> Job:
    """A new job that is `template` but for its id and command, with collections of its own."""
    job = Job(*_ALL_FIELDS(template))
    job.id, job.cmd = job_id, cmd
    job.env, job.resources = own_dict(template.env), own_dict(template.resources)
    job.dependencies = own_list(template.dependencies)
    job.dependencies_any = own_list(template.dependencies_any)
    job.files, job.limits = own_list(template.files), own_list(template.limits)
    return job


class ReactorState(Protocol):
    """What adding and changing jobs read and write of the Reactor."""

    jobs: dict[int, Job]
    by_key: dict[tuple[str, str, str], int]
    config: ReactorConfig
    backlog: int
    _backlog_after: tuple[int, int] | None
    _queued_seq: dict[int, int]
    archive: Archive
    deps: Dependencies
    learned: LearnedRequirements
    limit_caps: dict[str, int | None]
    version: int
    _next_job_id: int
    _recheck: set[int]
    _effects: Effects
    _counts: Counter[tuple[str, str, JobState]]

    def get(self, job_id: int, owner: str | None = None) -> Job: ...
    def _known(self, job_id: int) -> Job | None: ...
    def _bring_back(self, job: Job) -> Job: ...
    def _track(self, job: Job) -> None: ...
    def _enqueue(self, job: Job) -> None: ...
    def _change(self, job: Job, to: JobState, now: float, reason: str | None = None) -> None: ...
    def _settle_dependencies(self, now: float) -> None: ...
    def _rebuild_window(self) -> None: ...
    def changed_outside(self, job_ids: Sequence[int],
                        counts: Iterable[tuple[str, str, JobState, int]],
                        to_state: JobState | None, now: float) -> None: ...
    def _check_cap_from_spec(self, index: int, name: str, cap: int) -> None: ...
    def plan_add_chunks(self, chunks: Iterable[Sequence[JobSpec] | AlikeJobs], *, rerun: bool,
                        now: float, owner: str = "", sees_all: bool = True,
                        may_set_caps: bool = True, distinct: bool = False,
                        write: JobSink | None = None) -> AddPlan: ...
    def _plan_specs(self, add: _Adding, specs: Sequence[JobSpec], write: JobSink | None,
                    window: _Window | None) -> None: ...
    def _plan_alike(self, add: _Adding, chunk: AlikeJobs, write: JobSink | None,
                    window: _Window | None) -> None: ...
    def _archived(self, add: _Adding, keys: list[tuple[str, str, str]],
                  hashes: Sequence[int] = ()
                  ) -> dict[tuple[str, str, str], tuple[int, JobState]]: ...
    def _all_new(self, add: _Adding, keys: list[tuple[str, str, str]],
                 archived: dict[tuple[str, str, str], tuple[int, JobState]], *,
                 fresh: bool) -> bool: ...
    def _new_id(self, add: _Adding, key: tuple[str, str, str],
                archived: dict[tuple[str, str, str], tuple[int, JobState]], *,
                fresh: bool) -> int | None: ...
    def _twin(self, key: tuple[str, str, str], batch_keys: dict[tuple[str, str, str], int],
              archived: dict[tuple[str, str, str], tuple[int, JobState]]
              ) -> tuple[int, bool] | None: ...
    def _new_job(self, spec: JobSpec, job_id: int, index: int, owner: str, now: float,
                 limit_caps: dict[str, int], may_set_caps: bool) -> Job: ...
    def _check_dependencies(self, new_jobs: list[Job], batch_groups: set[str],
                            owner: str | None) -> None: ...
    def _check_new_dependencies(self, jobs: Sequence[Job], changes: dict[str, Any],
                                owner: str | None) -> None: ...
    def _modify(self, job: Job, changes: dict[str, Any], limit_names: list[str],
                now: float) -> None: ...


class JobEdits:
    """Adds (planned, then applied once committed) and changes (`shoal mod`, purges)."""

    def plan_add(self: ReactorState, specs: Sequence[JobSpec], *, rerun: bool, now: float,
                 owner: str = "", sees_all: bool = True, may_set_caps: bool = True,
                 distinct: bool = False) -> AddPlan:
        """plan_add_chunks of one chunk."""
        return self.plan_add_chunks((specs,), rerun=rerun, now=now, owner=owner,
                                    sees_all=sees_all, may_set_caps=may_set_caps,
                                    distinct=distinct)

    def plan_add_chunks(self: ReactorState, chunks: Iterable[Sequence[JobSpec] | AlikeJobs],
                        *, rerun: bool, now: float, owner: str = "", sees_all: bool = True,
                        may_set_caps: bool = True, distinct: bool = False,
                        write: JobSink | None = None) -> AddPlan:
        """Decide what an add does, changing nothing, so a failed commit leaves no trace. The
        specs come in chunks, read one at a time: only the jobs they make are held at once.
        With `write` (which writes jobs into a transaction the caller commits once the plan
        is made, or rolls back), each chunk's new jobs are written as they are made, and
        those that go to the backlog are not held at all (nor, from AlikeJobs, ever made).

        Duplicates are found among the owner's own jobs: two users may add the same command.
        Without `sees_all`, dependencies may name only the owner's jobs. Without
        `may_set_caps`, a `NAME:N` may only restate a limit's cap or give a new limit its first.
        With `distinct`, every spec is a new job, even one whose (cmd, cwd) is known (`shoal
        run`: a job is a line of its input, and two identical lines are two jobs).
        """
        add = _Adding(owner=owner, rerun=rerun, now=now, may_set_caps=may_set_caps,
                      distinct=distinct, written=None if write is None else set())
        window = _Window(self) if write is not None else None
        for chunk in chunks:
            if isinstance(chunk, AlikeJobs):
                self._plan_alike(add, chunk, write, window)
            else:
                self._plan_specs(add, chunk, write, window)
            if write is not None:  # later chunks find this one's jobs through the archive
                add.batch_keys.clear()
        self._check_dependencies(add.new_jobs, add.batch_groups, None if sees_all else owner)
        return AddPlan(add.new_jobs, list(add.requeue), add.ids, add.existed - len(add.requeue),
                       add.limit_caps, deferred=window.deferred if window else Counter(),
                       backlog_after=window.after if window else None,
                       last_id=self._next_job_id + add.made - 1 if add.made else None)

    def _plan_specs(self: ReactorState, add: _Adding, specs: Sequence[JobSpec],
                    write: JobSink | None, window: _Window | None) -> None:
        # Twins among ended, backlog and (with `write`) earlier chunks' jobs are in the
        # archive: asked for a chunk's at once.
        archived = self._archived(add, [(add.owner, *spec.key) for spec in specs
                                        if not spec.gate])
        made: list[Job] = []
        for spec in specs:
            _check_cwd(spec, add.index)
            job_id = self._new_id(add, (add.owner, *spec.key), archived, fresh=spec.gate)
            if job_id is not None:
                made.append(self._new_job(spec, job_id, add.index, add.owner, add.now,
                                          add.limit_caps, add.may_set_caps))
                add.batch_groups.add(spec.group)
            add.index += 1
        if write is None or window is None:
            add.new_jobs += made
            return
        # Written now, in the add's open transaction: the jobs the backlog takes are dropped.
        write.write(made, add.now)
        add.new_jobs += [job for job in made if not window.takes(job)]

    def _plan_alike(self: ReactorState, add: _Adding, chunk: AlikeJobs,
                    write: JobSink | None, window: _Window | None) -> None:
        """AlikeJobs: one job made from the spec, the others (those held) copied from it."""
        spec = chunk.spec
        _check_cwd(spec, add.index)
        cwd = spec.cwd or ""
        keys = [(add.owner, cmd, cwd) for cmd in chunk.cmds]
        hashes: Sequence[int | None] = chunk.hashes or [None] * len(keys)
        archived = {} if spec.gate else self._archived(add, keys, chunk.hashes)
        made: list[tuple[int, str, int | None]]
        if self._all_new(add, keys, archived, fresh=spec.gate):
            ids = range(self._next_job_id + add.made, self._next_job_id + add.made + len(keys))
            add.made += len(keys)
            add.ids.extend(ids)
            if not spec.gate:
                add.batch_keys.update(zip(keys, ids, strict=True))
            made = list(zip(ids, chunk.cmds, hashes, strict=True))
        else:
            made = []
            for key, digest in zip(keys, hashes, strict=True):
                job_id = self._new_id(add, key, archived, fresh=spec.gate)
                if job_id is not None:
                    made.append((job_id, key[1], digest))
        first = add.index
        add.index += len(chunk.cmds)
        if not made:
            return
        add.batch_groups.add(spec.group)
        template = self._new_job(spec, made[0][0], first, add.owner, add.now, add.limit_caps,
                                 add.may_set_caps)
        if write is None or window is None:
            add.new_jobs += [_like(template, job_id, cmd) for job_id, cmd, _ in made]
            return
        write.write_alike(template, made, add.now)
        for place, (job_id, cmd, _) in enumerate(made):
            job = _like(template, job_id, cmd)
            if window.takes(job):
                window.takes_rest(job, len(made) - place - 1)
                return
            add.new_jobs.append(job)

    def _archived(self: ReactorState, add: _Adding, keys: list[tuple[str, str, str]],
                  hashes: Sequence[int] = ()
                  ) -> dict[tuple[str, str, str], tuple[int, JobState]]:
        """The archive's jobs (ended, in the backlog, written by this add) of these keys (of
        these digests, if given). An add written as it is planned looks for keys whose
        digests none of its chunks had among the committed jobs only: beside the write of
        its chunk before, not after it (a third of a large add's time)."""
        if add.distinct:
            return {}
        by_key = self.by_key
        pairs = [(key, digest) for key, digest in zip(
            keys, hashes or [key_hash(*key) for key in keys], strict=True) if key not in by_key]
        if not pairs:
            return {}
        wanted, digests = [key for key, _ in pairs], [digest for _, digest in pairs]
        if add.written is None:
            return self.archive.twins(wanted, digests)
        committed_only = add.written.isdisjoint(digests)
        add.written.update(digests)
        return self.archive.twins(wanted, digests, committed_only=committed_only)

    def _all_new(self: ReactorState, add: _Adding, keys: list[tuple[str, str, str]],
                 archived: dict[tuple[str, str, str], tuple[int, JobState]], *,
                 fresh: bool) -> bool:
        """Whether every key makes a new job (what `_new_id` would find for each, asked at
        C speed): the ids are then the next ones in order."""
        if fresh or add.distinct:
            return True
        return not archived and len(set(keys)) == len(keys) and \
            self.by_key.keys().isdisjoint(keys) and add.batch_keys.keys().isdisjoint(keys)

    def _new_id(self: ReactorState, add: _Adding, key: tuple[str, str, str],
                archived: dict[tuple[str, str, str], tuple[int, JobState]], *,
                fresh: bool) -> int | None:
        """The id of the new job a spec of this key makes, or None if it is a twin of a job
        already added (which a rerun queues again if it has ended). A `fresh` one is new
        whatever its key (an ensemble component)."""
        twin = None if fresh or add.distinct else self._twin(key, add.batch_keys, archived)
        if twin is not None:
            twin_id, ended = twin
            add.existed += 1
            add.ids.append(twin_id)
            if add.rerun and ended:
                add.requeue[twin_id] = None
            return None
        job_id = self._next_job_id + add.made
        add.made += 1
        if not fresh:
            add.batch_keys[key] = job_id
        add.ids.append(job_id)
        return job_id

    def _twin(self: ReactorState, key: tuple[str, str, str],
              batch_keys: dict[tuple[str, str, str], int],
              archived: dict[tuple[str, str, str], tuple[int, JobState]]
              ) -> tuple[int, bool] | None:
        """The job already added with this key, and whether it has ended."""
        twin_id = self.by_key.get(key, batch_keys.get(key))
        if twin_id is not None:
            held = self.jobs.get(twin_id)  # None: new in this add
            return twin_id, held is not None and held.state in FINAL_STATES
        if key in archived:
            twin_id, state = archived[key]
            return twin_id, state in FINAL_STATES
        return None

    def _new_job(self: ReactorState, spec: JobSpec, job_id: int, index: int, owner: str,
                 now: float, limit_caps: dict[str, int], may_set_caps: bool) -> Job:
        """The job a spec makes; a `NAME:N` of its limits goes into `limit_caps`."""
        limits = []
        for entry in spec.limits:
            name, _, cap = entry.partition(":")
            limits.append(name)
            if cap:
                if not may_set_caps:
                    self._check_cap_from_spec(index, name, int(cap))
                limit_caps[name] = int(cap)
        waits = bool(spec.after or spec.after_any)
        job = Job(
            id=job_id, cmd=spec.cmd, cwd=shared_text(spec.cwd or ""), env=own_dict(spec.env),
            group=shared_text(spec.group), priority=spec.priority, retries=spec.retries,
            cores=spec.cores, memory_bytes=spec.memory_bytes,
            time_limit_seconds=spec.time_limit_seconds, time_seconds=spec.time_seconds,
            req_group=spec.req_group, name=spec.name, gpus=spec.gpus,
            resources=own_dict(spec.resources), grow_memory=spec.grow_memory,
            dependencies=own_list(spec.after), dependencies_any=own_list(spec.after_any),
            limits=own_list(sorted(set(limits)) if limits else ()),
            on_worker=spec.on_worker, gate=spec.gate, files=own_list(spec.files),
            always_copy=spec.always_copy,
            state=S.WAITING if waits else S.QUEUED, added_at=now,
            queued_at=None if waits else now, owner=shared_text(owner),
        )
        if spec.req_group:
            memory, seconds, source = self.learned.suggest(
                spec.req_group, memory=not spec.memory_bytes, time=spec.time_seconds is None)
            job.memory_bytes = memory or job.memory_bytes
            job.time_seconds = seconds if seconds is not None else job.time_seconds
            job.requirements_source = source
        return job

    def _check_cap_from_spec(self: ReactorState, index: int, name: str, cap: int) -> None:
        """A cap in a job spec follows the permission of setting it directly: a user may give
        a limit nobody uses yet its cap, or restate the cap it has, but not change it."""
        current = self.limit_caps.get(name)
        in_use = current is not None or any(name in job.limits for job in self.jobs.values())
        if in_use and current != cap:
            raise Forbidden(f"jobs[{index}].limits: '{name}:{cap}' would change the cap of "
                            f"limit {name} (now {current}), which only an admin may do "
                            f"(shoal limit {name} N); name it without ':N' to use it")

    def _check_dependencies(self: ReactorState, new_jobs: list[Job], batch_groups: set[str],
                            owner: str | None) -> None:
        for index, job in enumerate(new_jobs):
            for entry in (*job.dependencies, *job.dependencies_any):
                if entry.startswith(GROUP_PREFIX):
                    group = entry[len(GROUP_PREFIX):]
                    if not self.deps.group_size[group] and group not in batch_groups:
                        raise BatchInputError(index, f"{entry} has no jobs")
                elif (dependency := self._known(int(entry))) is None or (
                        owner is not None and dependency.owner != owner):
                    raise BatchInputError(index, f"dependency {entry} does not exist")
        looping = self.deps.find_cycle(new_jobs, self._known)
        if looping is not None:
            raise InputError(f"dependency cycle: {looping.cmd!r} would wait for itself "
                             "through its dependencies")

    @staticmethod
    def journal_of_new(plan: AddPlan, now: float) -> Iterator[Transition]:
        return (created(job, now=now) for job in plan.new_jobs)

    def apply_add(self: ReactorState, plan: AddPlan, *, now: float) -> None:
        """Make an add real once its new jobs are committed. Requeued twins go through the
        normal effects, which the caller commits before it acknowledges the add."""
        self.limit_caps.update(plan.limit_caps)
        for job in plan.new_jobs:
            self._track(job)
            if job.state is S.QUEUED:
                self._enqueue(job)
            else:
                self._recheck.add(job.id)
        for (job_owner, group), number in plan.deferred.items():
            self._counts[job_owner, group, S.QUEUED] += number
            self.deps.count(group, S.QUEUED, number)
            self.backlog += number
        if plan.deferred:
            self._backlog_after = plan.backlog_after
        if plan.last_id is not None:
            self._next_job_id = plan.last_id + 1
        for job_id in plan.requeue:
            job = self._bring_back(self.get(job_id))
            job.attempts = job.lost_attempts = 0
            self._change(job, S.QUEUED, now, "added again (--rerun)")
        self._settle_dependencies(now)
        self.version += 1

    def modify(self: ReactorState, jobs: Sequence[Job], changes: dict[str, Any], now: float, *,
               may_set_caps: bool = True, owner: str | None = None) -> dict[str, int]:
        """Change the specs of jobs that are not running, all or none (`JobChanges.given()`).
        A queued job takes its new place in the queue; new dependencies make it wait. Returns
        the caps that `NAME:N` limits set, for the caller to keep."""
        busy = [job.id for job in jobs if job.state in HOLDING_STATES]
        if busy:
            raise Conflict(f"job {busy[0]} is running; kill it first, or wait for it to end")
        caps: dict[str, int] = {}
        names: list[str] = []
        for entry in changes.get("limits") or []:
            name, _, cap = entry.partition(":")
            names.append(name)
            if cap:
                if not may_set_caps:
                    self._check_cap_from_spec(0, name, int(cap))
                caps[name] = int(cap)
        if "after" in changes or "after_any" in changes:
            self._check_new_dependencies(jobs, changes, owner)
        for job in jobs:
            self._modify(job, changes, sorted(set(names)), now)
        self.limit_caps.update(caps)
        self._settle_dependencies(now)
        return caps

    def _check_new_dependencies(self: ReactorState, jobs: Sequence[Job], changes: dict[str, Any],
                                owner: str | None) -> None:
        entries = [*(changes.get("after") or []), *(changes.get("after_any") or [])]
        for entry in entries:
            if entry.startswith(GROUP_PREFIX):
                if not self.deps.group_size[entry[len(GROUP_PREFIX):]]:
                    raise InputError(f"after: {entry} has no jobs")
            elif (dependency := self._known(int(entry))) is None or (
                    owner is not None and dependency.owner != owner):
                raise InputError(f"after: dependency {entry} does not exist")
        # As they would be: copies with the new dependencies, looked for cycles like an add.
        renewed = [dataclasses.replace(
            job, dependencies=own_list(changes.get("after", job.dependencies) or []),
            dependencies_any=own_list(changes.get("after_any", job.dependencies_any) or []))
            for job in jobs]
        looping = self.deps.find_cycle(renewed, self._known)
        if looping is not None:
            raise InputError(f"dependency cycle: job {looping.id} would wait for itself")

    def _modify(self: ReactorState, job: Job, changes: dict[str, Any], limit_names: list[str],
                now: float) -> None:
        self.deps.unwatch(job)
        old_group = job.group
        for name, value in changes.items():
            if name == "limits":
                job.limits = limit_names
            elif name == "after":
                job.dependencies = own_list(value or [])
            elif name == "after_any":
                job.dependencies_any = own_list(value or [])
            else:
                setattr(job, name, value)
        if job.group != old_group:
            self._counts[job.owner, old_group, job.state] -= 1
            self._counts[job.owner, job.group, job.state] += 1
            self.deps.count(old_group, job.state, -1)
            self.deps.count(job.group, job.state, 1)
            self._recheck.update([*self.deps.waiting_on_group(old_group),
                                  *self.deps.waiting_on_group(job.group)])
        if job.state is S.WAITING:
            self.deps.watch(job)
            self._recheck.add(job.id)
        elif job.state is S.QUEUED and (job.dependencies or job.dependencies_any):
            self._change(job, S.WAITING, now, "dependencies changed")
            self._recheck.add(job.id)
        elif job.state is S.QUEUED:
            self._enqueue(job)  # its new priority and size count from now on
        self._effects.changed[job.id] = job
        self._effects.modified[job.id] = job

    def changed_outside(self: ReactorState, job_ids: Sequence[int],
                        counts: Iterable[tuple[str, str, JobState, int]],
                        to_state: JobState | None, now: float) -> None:
        """Jobs not in memory (ended, or queued in the backlog) were moved from `state` to
        `to_state`, or deleted (None), straight in the database: recount them; the jobs
        that wait on them look again. Jobs queued there (plain ones only: see
        archive.may_wait_in_backlog) join the backlog, in their place in the queue."""
        for owner, group, state, number in counts:
            self._counts[owner, group, state] -= number
            self.deps.count(group, state, -number)
            if to_state is not None:
                self._counts[owner, group, to_state] += number
                self.deps.count(group, to_state, number)
            if state is S.QUEUED:
                self.backlog -= number
            if to_state is S.QUEUED:
                self.backlog += number
            self._recheck.update(self.deps.waiting_on_group(group))
        if self.backlog <= 0:
            self.backlog, self._backlog_after = 0, None
        elif to_state is S.QUEUED:
            self._rebuild_window()
        for job_id in job_ids:
            self._recheck.update(self.deps.waiting_on_id(job_id))
        self._settle_dependencies(now)
        self.version += 1


class _Window:
    """Which of an add's new jobs the backlog takes, in the order they are made. Every job in
    the backlog stands behind every queued job held that could be there (`after` is the
    boundary): with a backlog, a new job goes there if it stands behind the boundary, and is
    held if not (a higher priority). Without one, a full window starts it with a job of no
    higher priority than any held; a job of a higher priority is held beyond the window."""

    def __init__(self, reactor: ReactorState):
        self._reactor = reactor
        self.held = len(reactor._queued_seq)
        self.window = reactor.config.queue_window
        self.backlog = reactor.backlog
        self.after = reactor._backlog_after
        self.deferred: Counter[tuple[str, str]] = Counter()
        # The lowest priority among the queued jobs held: those before the add (looked for
        # once, when an add fills the window) and those the add holds.
        self._lowest: int | None = None
        self._looked = False

    def takes(self, job: Job) -> bool:
        if not may_wait_in_backlog(job):
            return False
        key = queue_key(job)
        if self.backlog:
            defer = self.after is not None and key > self.after
        elif self.held >= self.window:
            lowest = self._lowest_held()
            defer = lowest is None or job.priority <= lowest
            if defer:  # new ids are above every held one: all held stand before it
                self.after = (key[0], key[1] - 1)
        else:
            defer = False
        if defer:
            self.deferred[job.owner, job.group] += 1
            self.backlog += 1
            return True
        self.held += 1
        self._lowest = job.priority if self._lowest is None else min(self._lowest, job.priority)
        return False

    def takes_rest(self, job: Job, count: int) -> None:
        """`count` more jobs like `job` (the one just taken), with higher ids: the backlog
        takes them all, since each stands behind the one before (same priority, a higher id)
        and so behind the boundary."""
        self.deferred[job.owner, job.group] += count
        self.backlog += count

    def _lowest_held(self) -> int | None:
        if not self._looked:
            self._looked = True
            jobs = self._reactor.jobs
            priorities = [jobs[job_id].priority for job_id in self._reactor._queued_seq
                          if may_wait_in_backlog(jobs[job_id])]
            if self._lowest is not None:
                priorities.append(self._lowest)
            self._lowest = min(priorities, default=None)
        return self._lowest

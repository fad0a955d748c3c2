"""Run assigned commands: spawn them, reap them without threads, measure them, enforce limits.

Each command runs as ``bash -c CMD`` in a session of its own, with output to spool files (see
``spawn`` for its environment and GPUs), so a running job costs the event loop nothing.

Reaping needs no thread per child: the loop watches a pidfd for each child and, once it becomes
readable, reaps the child with ``wait4`` for its status and rusage (CPU time and peak RSS, which
include the descendants the job reaped itself). Nothing else in the process may reap with
``waitpid(-1)``, or it would take these statuses.

Where the native launcher is built (see ``launcher``), a job that is not gated is started
and reaped by it instead, off the loop: the runner hands it each slot's next jobs ahead
(`QUEUED_PER_SLOT`) and learns of ends and starts as events, in the order they happened. A
job queued there counts as held, like one in the backlog, and holds its slot's cores only
once the job before it has ended.

Gated attempts (ensemble components) are prepared before they start: their files are staged
(see ``staging``) in their cwd or, when it is empty, in a fresh directory
``shoal-JOBID-<random suffix>`` under ``workdir_base`` (the system's temporary directory by default;
it is kept afterwards, with whatever the job left in it). The command is then spawned held at a
start line (see ``gate``) and reported through ``on_ready``. ``release`` opens the lines of a
set of attempts at one instant of this host's clock; each reports, as its start, the instant
its own shell passed the line, and its time limit counts from then. An attempt killed while
preparing or held ends as ``killed`` without a start.

When the leader exits, whatever is left of its process group is SIGKILLed, so background children
cannot outlive their job holding cores, memory or output files. This is done while the leader is
still an unreaped zombie, so the group id cannot have been reused by then. Where the machine
allows it each job also runs in a cgroup of its own (see ``cgroups``), which is killed whole at
the same moment and on every kill: processes that left the group on purpose (``setsid``,
``setpgid``) die with their job too. Without cgroups they are out of reach.

Times: ``wall_seconds`` comes from the monotonic clock and ``ended_at`` is ``started_at`` plus
it, so a wall clock stepped back while a job runs cannot make it end before it started.

A remote worker (see ``watch_stalls``) sends its keeper a heartbeat from the event loop; a
worker stopped for longer than the timeout finds, when it wakes, that the keeper has killed its
jobs, and reports them killed.

One loop timer serves all jobs: it samples the process trees of jobs older than 0.2 s (every
0.5 s, or every 0.1 s under a memory limit) and fires time limits and SIGKILL escalations. A short
job therefore costs a spawn and a reap, nothing more.

A runner may be given more assignments than it runs at once (``max_running_cores``): the rest
wait here in order and the next starts the moment a job's exit is reaped, without a round trip
to the service; ``start_interval_seconds`` spaces starts out (``shoal run --delay``). Such a
waiting assignment counts as held (``running()``, no pid) and is started, killed or handed
back like any other. ``on_output`` is shown a job's spool files just before they go, and
``on_exit`` each job's end before the next job starts. ``hold_starts`` keeps what waits here
waiting until ``resume_starts`` (``shoal run --halt``: nothing starts while an ended job may
stop the run).

With ``enforce_memory=False`` a job's memory is only a figure for the scheduler: it is
measured but never enforced, time limits still are.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shoal.core.protocol import (
    Assignment,
    AttemptResult,
    Captured,
    Outcome,
    ReadyItem,
    RunningAttempt,
    StartedItem,
)
from shoal.worker.capture import collect, open_spool_file, remove_quietly
from shoal.worker.cgroups import Containment, JobCgroup
from shoal.worker.gate import (
    Gate,
    block_until,
    boost,
    open_gates,
    releasing_priority,
    sleep_until_shortly_before,
    unboost,
)
from shoal.worker.keeper import Keeper
from shoal.worker.launcher import Launcher, LaunchEvent, available, make_launcher, read_events
from shoal.worker.measure import ProcessTable, peak_memory_bytes
from shoal.worker.spawn import (
    Process,
    SpawnedProcess,
    Spawner,
    abandon,
    signal_group,
    spawn_error_message,
)
from shoal.worker.staging import (
    FetchBlob,
    StagingError,
    StagingReport,
    stage_files,
    workdir_for,
)

_log = logging.getLogger(__name__)

SAMPLE_AFTER_SECONDS = 0.2
SAMPLE_EVERY_SECONDS = 0.5
SAMPLE_EVERY_SECONDS_UNDER_MEMORY_LIMIT = 0.1
KILL_GRACE_SECONDS = 3.0
# The loop may fire a timer a hair early; treat anything due this soon as due now.
_TIMER_SLACK_SECONDS = 0.002
SPARE_SPOOLS_KEPT = 64
# Running jobs whose cgroups keep their `tasks` files open (two descriptors each) for the
# next spawn in them; beyond, they are closed after the spawn.
TASKS_FILES_KEPT = 64
# Jobs handed to the launcher ahead of each slot's running one: the loop may be that many
# jobs late in learning of starts before a slot waits for it.
QUEUED_PER_SLOT = 6
# The launcher wakes the loop once fewer than NOTIFY_BELOW jobs wait behind a slot's running
# one (or a slot is idle), else within NOTIFY_DELAY_SECONDS of an end or start: a wake-up
# handles the ends and starts of several jobs (see _launcher.c).
NOTIFY_BELOW = QUEUED_PER_SLOT // 2
NOTIFY_DELAY_SECONDS = 0.01
# Jobs queued behind one that has run this long are taken back, to start on the next slot
# free (and none are queued behind it): the queue covers the loop's delays, which are
# milliseconds, and jobs wait behind a long one at most this long, not for its end.
QUEUED_BEHIND_SECONDS = 0.2


@dataclass(slots=True, eq=False)
class _Attempt:
    assignment: Assignment
    process: Process
    pidfd: int
    stdout_path: str
    stderr_path: str
    started_at: float
    started_monotonic: float
    sample_every: float
    next_sample: float
    time_limit_at: float | None
    sigkill_at: float | None = None
    peak_tree_rss_bytes: int = 0
    over_limit_bytes: int = 0  # the sampled use it was killed for, if over its memory
    stop_outcome: Outcome | None = None  # set when the runner itself ends the job
    stop_reason: str | None = None
    gate: Gate | None = None  # gated attempts only
    released: bool = True  # False while held at the start line
    awaiting_stamp: bool = False  # released, its start not yet reported
    ready: ReadyItem | None = None  # what was reported when it reached the line
    cgroup: JobCgroup | None = None  # where the machine allows it
    tracked: bool = True  # told to the keeper one by one (not through its cgroup)
    slot: int = 0  # SHOAL_SLOT: unique among this runner's running jobs, lowest free first
    native: bool = False  # started and reaped by the launcher (see launcher.py)

    @property
    def pid(self) -> int:
        return self.process.pid

    def next_event(self) -> float:
        return min(self.next_sample, self.time_limit_at or math.inf, self.sigkill_at or math.inf)


@dataclass(slots=True, eq=False)
class _Launching:
    """An assignment handed to the native launcher, not known to have started yet."""

    assignment: Assignment
    received_at: float
    received_monotonic: float
    stdout_path: str
    stderr_path: str
    cgroup: JobCgroup | None
    slot: int
    program: str  # what it execs last (bash, if the program itself fails): errors name it
    # Whether its cores count as busy: from the start for the first job of an idle slot; a
    # job queued behind a running one (never more cores than it) once that one has ended.
    counted: bool
    kill_reason: str | None = None  # killed while it was starting: ended once it has
    in_pid_table: bool = False  # started outside cgroups, it is in the keeper's pid table


class _LaunchedProcess(SpawnedProcess):
    """A job the launcher started; only the launcher may reap it."""

    __slots__ = ()

    def wait(self) -> int:
        raise RuntimeError("a launched job is reaped by the launcher")


@dataclass(slots=True, eq=False)
class _Preparation:
    """A gated attempt whose files are being staged; it has no process yet."""

    assignment: Assignment
    received_at: float
    received_monotonic: float
    task: asyncio.Task[None] | None = None
    kill_reason: str | None = None
    release_requested: bool = False  # released before it was ready: open its line at once


class Runner:
    """Runs assignments as local process groups and reports each start and finish."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        host: str,
        on_started: Callable[[StartedItem], None],
        on_finished: Callable[[AttemptResult], None],
        capture_bytes: int = 64 * 1024,
        offered_gpus: Sequence[str] = (),
        enforce_memory: bool = True,
        on_ready: Callable[[ReadyItem], None] | None = None,
        fetch_blob: FetchBlob | None = None,
        workdir_base: Path | None = None,
        contain: bool = True,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        # Each job in a cgroup of its own where this machine allows it (`contain`=False: never).
        self._containment = (
            Containment.detect() if contain else None
        )
        self._keeper = Keeper()
        if self._containment is not None:
            self._keeper.track_parents([str(parent)
                                        for parent in self._containment.parents.values()])
        self._spawner = Spawner(hide_unassigned_gpus=bool(offered_gpus))
        self._enforce_memory = enforce_memory
        self._spool_dir = Path(spool_dir)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        # Spool file pairs an ended job left empty, with no process of it left: the next jobs'.
        self._spare_spools: list[tuple[str, str]] = []
        self._on_started = on_started
        self._on_finished = on_finished
        self._on_ready = on_ready or (lambda _: None)
        self._fetch_blob = fetch_blob
        self._workdir_base = workdir_base
        # Where a gated attempt with a relative cwd runs (None: this process's directory).
        self.workdir = workdir
        self._capture_bytes = capture_bytes
        self._attempts: dict[int, _Attempt] = {}  # by lease id
        self._preparing: dict[int, _Preparation] = {}  # by lease id
        self._busy_cores = 0
        self._free_slots: list[int] = []  # a heap: given back by ended jobs
        self._slots_made = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._drained: asyncio.Future[None] | None = None
        self._closing = False
        self._closing_kill = False
        # Assignments beyond what runs at once, in order: (assignment, received, monotonic).
        self.max_running_cores: int | None = None
        self.start_interval_seconds = 0.0
        self._backlog: deque[tuple[Assignment, float, float]] = deque()
        self._last_start = -math.inf
        self._pump_timer: asyncio.TimerHandle | None = None
        # Shown each ended job's assignment and spool files (stdout, stderr) before they go.
        self.on_output: Callable[[Assignment, str, str], None] | None = None
        # Told of each job's end (its id, whether it succeeded) before the next job starts.
        self.on_exit: Callable[[int, bool], None] | None = None
        self._holding = False
        # Jobs started and reaped off the loop (see launcher.py), where it is built.
        self._launcher: Launcher | None = None
        self._pid_table_slots = 0  # slots below this have their entry in the keeper's table
        self._native = available()
        self._launching: dict[int, _Launching] = {}  # by lease id
        # slot -> lease ids of the jobs queued on it, in order
        self._queued_on_slot: dict[int, deque[int]] = {}
        self._on_slot: dict[int, _Attempt] = {}  # the running attempts, by slot
        # Slots whose running launched job may have more queued behind it (see
        # _queue_successors): only these are looked at, not every running job.
        self._hungry: set[int] = set()

    # ---- public interface ----------------------------------------------------------------

    @property
    def busy_cores(self) -> int:
        return self._busy_cores

    @property
    def running_count(self) -> int:
        """Jobs whose process exists now."""
        return len(self._attempts)

    def spool_paths(self, lease_id: int) -> tuple[str, str] | None:
        """Where a running attempt's stdout and stderr are being written."""
        attempt = self._attempts.get(lease_id)
        return None if attempt is None else (attempt.stdout_path, attempt.stderr_path)

    @property
    def containment(self) -> str:
        """How a job's processes are held together: ``cgroup-v1``, ``cgroup-v2`` or
        ``process-group``."""
        return self._containment.name if self._containment else "process-group"

    def watch_stalls(self, timeout: float | None) -> None:
        """Have the keeper kill every job once this worker's event loop has not run for
        `timeout` seconds (None: never), e.g. while the worker is stopped with SIGSTOP.
        Must be called from the thread running the event loop."""
        self._keeper.watch_stalls(timeout, self._on_stall)

    def running(self) -> list[RunningAttempt]:
        """Every attempt this runner holds, including gated ones still preparing (no pid yet)."""
        return [
            RunningAttempt(
                job_id=attempt.assignment.job_id,
                lease_id=attempt.assignment.lease_id,
                pid=attempt.pid,
                started_at=attempt.started_at,
                gpus=list(attempt.assignment.gpus),
            )
            for attempt in self._attempts.values()
        ] + [_held(assignment, received_at) for assignment, received_at in (
            *((preparation.assignment, preparation.received_at)
              for preparation in self._preparing.values()),
            *((assignment, received_at) for assignment, received_at, _ in self._backlog),
            *((launching.assignment, launching.received_at)
              for launching in self._launching.values()))]

    def held(self) -> list[ReadyItem]:
        """The Ready reports of the gated attempts still held at their start line."""
        return [
            attempt.ready
            for attempt in self._attempts.values()
            if attempt.ready is not None and not attempt.released
        ]

    def start(self, assignment: Assignment) -> None:
        """Spawn at once, then report `on_started`, or `on_finished` with a spawn error.

        A gated assignment is prepared in a task instead: files staged, process spawned and
        held at the start line, then `on_ready` (or `on_finished` with a spawn error).
        Must be called from the thread running the event loop.
        """
        self._loop = asyncio.get_running_loop()
        lease_id = assignment.lease_id
        if lease_id in self._attempts or lease_id in self._preparing \
                or lease_id in self._launching \
                or any(held.lease_id == lease_id for held, _, _ in self._backlog):
            _log.warning("lease %d is already running; assignment ignored", lease_id)
            return
        if self._closing:
            self._report_unstarted(assignment, time.time(), time.monotonic(),
                                   "the worker is shutting down")
            return
        if assignment.gate:
            self._prepare(assignment)
            return
        if self._backlog or not self._may_start(assignment):
            self._backlog.append((assignment, time.time(), time.monotonic()))
            self._pump()
            self._queue_successors()
            return
        self._start_now(assignment)

    def hold_starts(self) -> None:
        """Start nothing more (what is assigned waits) until `resume_starts`."""
        self._holding = True
        self._take_back(self._queued(), to_front=True)

    def resume_starts(self) -> None:
        self._holding = False
        self._pump()

    def not_started(self) -> list[int]:
        """After `hold_starts`: the jobs held here that have not started and will not until
        `resume_starts` (waiting, or preparing). A job the launcher is starting already is not
        among them, though its start is not seen yet: it runs (`running` lists it without a
        pid until then)."""
        return [assignment.job_id for assignment, _, _ in self._backlog] + \
            [preparation.assignment.job_id for preparation in self._preparing.values()]

    def _may_start(self, assignment: Assignment) -> bool:
        if self._holding:
            return False
        cap = self.max_running_cores
        if cap is not None and (self._attempts or self._launching) \
                and self._busy_cores + assignment.cores > cap:
            return False
        return time.monotonic() - self._last_start >= self.start_interval_seconds

    def _pump(self) -> None:
        """Start what waits in the backlog while there is room; wake when the interval ends."""
        self._pump_timer = None
        while self._backlog and not self._closing_kill and self._may_start(self._backlog[0][0]):
            self._start_now(*self._backlog.popleft())
        if not self._backlog and self._reclaim_queued():
            self._pump()  # what waited behind running jobs starts on the free slots
        if self._backlog and self.start_interval_seconds and self._pump_timer is None \
                and self._loop is not None:
            wait = self._last_start + self.start_interval_seconds - time.monotonic()
            if wait > 0:
                self._pump_timer = self._loop.call_later(wait, self._pump)

    def drop_backlog(self, reason: str) -> None:
        """Report every assignment still waiting here as killed, unstarted."""
        for launching in self._queued():
            self._kill_queued(launching, reason)
        while self._backlog:
            assignment, received_at, received_monotonic = self._backlog.popleft()
            self._report_unstarted(assignment, received_at, received_monotonic, reason,
                                   "killed")
        self._check_drained()

    def _start_now(self, assignment: Assignment, received_at: float | None = None,
                   received_monotonic: float | None = None) -> None:
        self._last_start = time.monotonic()
        if self._native and self._hand_over(
                assignment, self._take_slot(), received_at or time.time(),
                received_monotonic or self._last_start):
            return
        attempt = self._launch(assignment, assignment.cwd)
        if attempt is not None:
            self._on_started(StartedItem.trusted(  # our own values: nothing to check
                job_id=assignment.job_id, lease_id=assignment.lease_id, pid=attempt.pid,
                started_at=attempt.started_at))

    async def release(self, lease_ids: Iterable[int], at: float) -> int:
        """Open the start lines of these held attempts at `at`, on this host's `time.time()`.

        Returns how many were opened then. One still preparing is opened as soon as it is
        ready; unknown, already released or dying ones are left alone.
        """
        wanted = set(lease_ids)
        await sleep_until_shortly_before(at)
        # From here until the gates are open the loop is blocked (about 15 ms): no attempt can
        # end in between, so no gate descriptor can be closed and reused.
        held = [
            attempt
            for lease_id in wanted
            if (attempt := self._attempts.get(lease_id)) is not None
            and not attempt.released
            and attempt.stop_outcome is None
        ]
        gates = [attempt.gate for attempt in held if attempt.gate is not None]
        for lease_id in wanted:
            if (preparation := self._preparing.get(lease_id)) is not None:
                preparation.release_requested = True
        for attempt in held:
            if attempt.gate is not None:
                boost(attempt.gate, attempt.pid)
        with releasing_priority():
            block_until(at)
            open_gates(gates)
        self._after_release(held)
        return len(held)

    def peek(self, lease_id: int, stream: Literal["stdout", "stderr"], offset: int,
             limit: int) -> tuple[str, int, bool]:
        """Live output of a running attempt: (up to `limit` bytes from `offset` as text,
        bytes written so far, whether the attempt is here)."""
        attempt = self._attempts.get(lease_id)
        if attempt is None:
            return "", 0, lease_id in self._preparing
        path = attempt.stdout_path if stream == "stdout" else attempt.stderr_path
        data, total_bytes = _read_range(path, offset, limit)
        return data.decode("utf-8", errors="replace"), total_bytes, True

    def kill(self, job_id: int, lease_id: int, reason: str) -> bool:
        """SIGTERM the job's process group, SIGKILL it after a grace period.

        False if that attempt is not running here.
        """
        attempt = self._attempts.get(lease_id)
        for waiting in self._backlog:
            if waiting[0].lease_id == lease_id and waiting[0].job_id == job_id:
                self._backlog.remove(waiting)
                self._report_unstarted(waiting[0], waiting[1], waiting[2], reason, "killed")
                return True
        launching = self._launching.get(lease_id)
        if launching is not None and launching.assignment.job_id == job_id:
            self._kill_queued(launching, reason)
            self._check_drained()
            return True
        if attempt is None:
            preparation = self._preparing.get(lease_id)
            if preparation is None or preparation.assignment.job_id != job_id:
                return False
            self._cancel_preparation(preparation, reason)
            return True
        if attempt.assignment.job_id != job_id:
            return False
        self._stop(attempt, "killed", reason)
        return True

    async def shutdown(self, *, kill: bool) -> None:
        """Wait until every job has finished and been reported, killing them first if asked."""
        self._closing = True
        if kill:
            self._closing_kill = True
            self.drop_backlog("the worker is shutting down")
            for preparation in list(self._preparing.values()):
                self._cancel_preparation(preparation, "the worker is shutting down")
            for attempt in list(self._attempts.values()):
                self._stop(attempt, "killed", "the worker is shutting down")
        if self._attempts or self._preparing or self._backlog or self._launching:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)  # several callers may wait on the same drain
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_due = None, math.inf
        self._spawner.close()
        if self._launcher is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._launcher.fileno())
            self._launcher.close()
            self._launcher = None
        for pair in self._spare_spools:
            for path in pair:
                remove_quietly(path)
        self._spare_spools.clear()
        self._keeper.close()
        if self._containment is not None:
            self._containment.close()

    # ---- spawning ------------------------------------------------------------------------

    def _launch(self, assignment: Assignment, cwd: str, gate: Gate | None = None
                ) -> _Attempt | None:
        """Spawn the process and watch it; None (and `on_finished`) if it could not start."""
        assert self._loop is not None
        stdout_path, stderr_path, _ = self._spool_paths(assignment.lease_id)
        started_at, started_monotonic = time.time(), time.monotonic()
        cgroup = (
            self._containment.create(f"job-{assignment.lease_id}")
            if self._containment is not None else None
        )
        slot = self._take_slot()
        try:
            # Under cgroup v1 the job is born in its cgroup; under v2 it is moved in at once.
            with (self._containment.spawning(cgroup)
                  if cgroup is not None and self._containment is not None
                  else contextlib.nullcontext()):
                process = self._spawner.spawn(assignment, cwd, stdout_path, stderr_path, slot,
                                              gate)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._unstarted(assignment, started_at, started_monotonic,
                            spawn_error_message(exc, cwd), cgroup, gate,
                            (stdout_path, stderr_path), slot)
            return None
        finally:
            if gate is not None:
                gate.close_child_ends()
        if cgroup is not None:
            cgroup.adopt(process.pid)
            if len(self._attempts) >= TASKS_FILES_KEPT:
                cgroup.close()  # many jobs at once: descriptors matter more than 15 µs a spawn
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError as exc:  # e.g. out of descriptors: the child cannot be watched, end it
            if cgroup is not None:
                cgroup.kill()
            abandon(process)
            self._unstarted(assignment, started_at, started_monotonic,
                            f"cannot watch process: {exc}", cgroup, gate,
                            (stdout_path, stderr_path), slot)
            return None
        return self._watch(assignment, process, pidfd, stdout_path, stderr_path, started_at,
                           started_monotonic, gate, cgroup, slot)

    def _watch(self, assignment: Assignment, process: Process, pidfd: int, stdout_path: str,
               stderr_path: str, started_at: float, started_monotonic: float,
               gate: Gate | None, cgroup: JobCgroup | None, slot: int,
               in_pid_table: bool = False) -> _Attempt:
        """A started job, from now on one of this runner's: its record, and what watches it
        (its pidfd on the loop, unless -1: the launcher reaps it)."""
        assert self._loop is not None
        # The job's group and cgroup die with this worker, however it dies: the keeper knows
        # every job cgroup through their parents, and is told of the others one by one, but
        # for those the launcher keeps in its pid table from their start.
        if in_pid_table and cgroup is None:  # (`pid_table` saw to the keeper's start)
            attempt_tracked = False
        elif cgroup is None or not cgroup.contained:
            self._keeper.track(process.pid, cgroup.directories if cgroup is not None else ())
            attempt_tracked = True
        else:
            self._keeper.covered()
            attempt_tracked = False
        memory_limited = self._enforce_memory and assignment.memory_bytes > 0
        limit = assignment.time_limit_seconds
        attempt = _Attempt(
            assignment=assignment,
            process=process,
            pidfd=pidfd,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            started_at=started_at,
            started_monotonic=started_monotonic,
            sample_every=(
                SAMPLE_EVERY_SECONDS_UNDER_MEMORY_LIMIT if memory_limited else SAMPLE_EVERY_SECONDS
            ),
            next_sample=started_monotonic + SAMPLE_AFTER_SECONDS,
            # A held attempt's time limit counts from its release.
            time_limit_at=(
                started_monotonic + limit if limit is not None and gate is None else None
            ),
            gate=gate,
            released=gate is None,
            cgroup=cgroup,
            tracked=attempt_tracked,
            slot=slot,
        )
        self._attempts[assignment.lease_id] = attempt
        self._on_slot[slot] = attempt
        self._busy_cores += assignment.cores
        if pidfd >= 0:
            self._loop.add_reader(pidfd, self._on_exit, attempt)
        self._wake_at(attempt.next_event())
        return attempt

    def _spool_paths(self, lease_id: int) -> tuple[str, str, bool]:
        """Where the job's stdout and stderr go: a pair emptied by a job that left no
        process behind (True), else new files."""
        if self._spare_spools:
            return *self._spare_spools.pop(), True
        return (f"{self._spool_dir}/{lease_id}.stdout", f"{self._spool_dir}/{lease_id}.stderr",
                False)

    def _take_slot(self) -> int:
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        self._slots_made += 1
        return self._slots_made

    def _unstarted(self, assignment: Assignment, at: float, at_monotonic: float, error: str,
                   cgroup: JobCgroup | None, gate: Gate | None,
                   spool: tuple[str, str], slot: int | None) -> None:
        """A spawn that failed, or a child that cannot be watched (and was ended): what it
        was given goes away (its slot, unless None: not its own to give back), and it is
        reported as not started."""
        if slot is not None:
            heapq.heappush(self._free_slots, slot)
        self._discard_cgroup(cgroup)
        for path in spool:
            remove_quietly(path)
        if gate is not None:
            gate.close()
        self._report_unstarted(assignment, at, at_monotonic, error)

    def _report_unstarted(
        self, assignment: Assignment, at: float, at_monotonic: float, error: str,
        outcome: Outcome = "spawn_error",
    ) -> None:
        """`at` and `at_monotonic`: when it was received, on the wall and monotonic clocks."""
        waited = max(0.0, time.monotonic() - at_monotonic) if outcome != "spawn_error" else 0.0
        self._on_finished(
            AttemptResult(
                job_id=assignment.job_id,
                lease_id=assignment.lease_id,
                outcome=outcome,
                started_at=at,
                ended_at=at + waited,
                wall_seconds=0.0,
                cpu_seconds=0.0,
                peak_rss_bytes=0,
                error=error,
            )
        )

    def _kill_all_of(self, attempt: _Attempt) -> None:
        self._signal_group(attempt, signal.SIGKILL)
        if attempt.cgroup is not None:
            attempt.cgroup.kill()

    def _signal_group(self, attempt: _Attempt, signal_number: int) -> None:
        """Signal the job's process group while it is certainly still the job's: a launched
        job's through the launcher, which knows whether it has reaped the leader yet."""
        if attempt.native:
            if self._launcher is not None:
                self._launcher.signal(attempt.assignment.lease_id, signal_number)
        else:
            signal_group(attempt.pid, signal_number)

    # ---- native starts: the launcher (see launcher.py) ------------------------------------

    def _hand_over(self, assignment: Assignment, slot: int, received_at: float,
                   received_monotonic: float) -> bool:
        """Queue the job on `slot` of the launcher (it starts once the slot's running job has
        ended, or at once); False, with the slot given back if it was free, if the launcher
        cannot start it (`_launch` then does)."""
        try:
            start = self._spawner.native_start(assignment, assignment.cwd, slot) \
                if not assignment.gate else None
        except UnicodeError:  # not encodable: the usual path says so
            start = None
        successor = slot in self._on_slot
        if start is None:
            if not successor:
                heapq.heappush(self._free_slots, slot)
            return False
        if self._launcher is None:
            self._launcher = make_launcher(notify_below=NOTIFY_BELOW,
                                           notify_delay=NOTIFY_DELAY_SECONDS)
            assert self._loop is not None
            self._loop.add_reader(self._launcher.fileno(), self._on_launched)
            # The keeper knows the jobs it starts outside cgroups before this loop does: a
            # worker killed before it has read their start leaves none behind.
            table = self._keeper.pid_table()
            with contextlib.suppress(OSError, ValueError):  # else: lines, as for the others
                if table is not None:
                    self._launcher.share_pids(*table)
                    self._pid_table_slots = table[1]
        lease_id = assignment.lease_id
        stdout_path, stderr_path, emptied = self._spool_paths(lease_id)
        cgroup = (self._containment.create(f"job-{lease_id}")
                  if self._containment is not None else None)
        entry_fds = cgroup.entry_fds() if cgroup is not None else []
        in_pid_table = slot < self._pid_table_slots
        contained_at = (len(cgroup.paths) if cgroup is not None else 1) if in_pid_table else -1
        try:
            fds = self._job_fds(stdout_path, stderr_path, emptied)
            self._launcher.queue(
                slot, lease_id, start.path, start.argv, start.envp, fds, entry_fds,
                start.fallback, start.rlimit, start.cwd,
                None if cgroup is None else os.fsencode(cgroup.procs_file), contained_at)
        except (OSError, ValueError) as exc:
            self._unstarted(assignment, received_at, received_monotonic,
                            spawn_error_message(exc, ""), cgroup, None,
                            (stdout_path, stderr_path),
                            None if successor else slot)  # else it stays its running job's
            return True
        self._launching[lease_id] = _Launching(
            assignment, received_at, received_monotonic, stdout_path, stderr_path, cgroup,
            slot, os.fsdecode((start.fallback or start)[0]), counted=not successor,
            in_pid_table=in_pid_table)
        self._queued_on_slot.setdefault(slot, deque()).append(lease_id)
        if not successor:
            self._busy_cores += assignment.cores  # held from now, as for a running job
        return True

    def _job_fds(self, stdout_path: str, stderr_path: str,
                 emptied: bool) -> tuple[int, int, int]:
        opened: list[int] = []
        try:
            opened.append(self._spawner.stdin())
            opened.append(open_spool_file(stdout_path, empty=emptied))
            opened.append(open_spool_file(stderr_path, empty=emptied))
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        return opened[0], opened[1], opened[2]

    def _queue_successors(self) -> None:
        """Hand the launcher the next waiting jobs of each slot whose running job it started,
        up to QUEUED_PER_SLOT behind it, so that each starts the moment the one before ends;
        none behind a job that has run QUEUED_BEHIND_SECONDS. Not while an ended job may stop
        the run first (`on_exit`), nor with starts spaced out."""
        if not self._native or self._holding or self._closing_kill or self.on_exit is not None \
                or self.start_interval_seconds or not self._backlog:
            return
        now = time.monotonic()
        for slot in sorted(self._hungry):
            attempt = self._on_slot.get(slot)
            if attempt is None or not attempt.native or attempt.stop_outcome is not None \
                    or now - attempt.started_monotonic >= QUEUED_BEHIND_SECONDS:
                self._hungry.discard(slot)
                continue
            if slot not in self._queued_on_slot:  # the first behind it
                self._check_behind_later(attempt)
            while len(queued := self._queued_on_slot.get(slot, ())) < QUEUED_PER_SLOT:
                if not self._backlog:
                    return
                assignment, received_at, received_monotonic = self._backlog[0]
                # Never more cores than the job it follows holds: the slot's cores pass on.
                follows = self._launching[queued[-1]] if queued else attempt
                if assignment.cores > follows.assignment.cores or assignment.gate:
                    return  # it waits for a free slot, as before
                self._backlog.popleft()
                if not self._hand_over(assignment, slot, received_at, received_monotonic):
                    self._backlog.appendleft((assignment, received_at, received_monotonic))
                    return
            self._hungry.discard(slot)

    def _kill_queued(self, launching: _Launching, reason: str) -> None:
        """Report a job handed to the launcher killed if it can still be taken back; else it
        is starting, and is ended as soon as it has."""
        if self._withdraw(launching):
            self._report_unstarted(launching.assignment, launching.received_at,
                                   launching.received_monotonic, reason, "killed")
        else:
            launching.kill_reason = launching.kill_reason or reason

    def _reclaim_queued(self) -> bool:
        """With nothing left to start and room to start it, take back the jobs queued behind
        running ones (they would wait for those to end) into the backlog, in the order they
        came; whether any was."""
        if self._holding or self._closing_kill or self.max_running_cores is None \
                or self._busy_cores >= self.max_running_cores:
            return False
        return self._take_back([launching for launching in self._queued()
                                if not launching.counted], to_front=False)

    def _reclaim_behind_long(self, now: float) -> float:
        """Take back the jobs queued behind one that has run QUEUED_BEHIND_SECONDS, to the
        front of the backlog in the order they came: the next free slot starts them. Returns
        when the next running job with jobs queued behind it will have run that long."""
        waiting: list[_Launching] = []
        next_due = math.inf
        for slot, queued in self._queued_on_slot.items():
            ahead = self._on_slot.get(slot)
            if ahead is None:
                continue
            due = ahead.started_monotonic + QUEUED_BEHIND_SECONDS
            if due > now:
                next_due = min(next_due, due)
                continue
            waiting += [launching for lease_id in queued
                        if not (launching := self._launching[lease_id]).counted
                        and launching.kill_reason is None]
        if self._take_back(waiting, to_front=True):
            self._pump()
            self._queue_successors()
        return next_due

    def _check_behind_later(self, attempt: _Attempt) -> None:
        """Jobs are queued behind `attempt`: the timer takes them back if it runs long."""
        self._wake_at(attempt.started_monotonic + QUEUED_BEHIND_SECONDS)

    def _take_back(self, launchings: list[_Launching], *, to_front: bool) -> bool:
        """Withdraw these queued jobs from the launcher, newest first (a lane may meanwhile
        start the oldest, never one behind a job taken back), and put those taken back in
        the backlog in the order they came, at its front or its end; whether any was."""
        taken = [launching for launching in sorted(
            launchings, key=lambda launching: launching.received_monotonic, reverse=True)
                 if self._withdraw(launching)]
        entries = [(launching.assignment, launching.received_at, launching.received_monotonic)
                   for launching in taken]
        if to_front:
            self._backlog.extendleft(entries)  # newest first: the oldest ends up in front
        else:
            self._backlog.extend(reversed(entries))
        return bool(taken)

    def _queued(self) -> list[_Launching]:
        return [launching for launching in self._launching.values()
                if launching.kill_reason is None]

    def _withdraw(self, launching: _Launching) -> bool:
        """Take a queued job back from the launcher (False: it is starting; its start comes
        as an event). What it was given goes."""
        assert self._launcher is not None
        if not self._launcher.withdraw(launching.assignment.lease_id):
            return False
        self._forget_launching(launching)
        self._discard_cgroup(launching.cgroup)
        for path in (launching.stdout_path, launching.stderr_path):
            remove_quietly(path)
        return True

    def _forget_launching(self, launching: _Launching, *, started: bool = False) -> None:
        """No longer queued: it has `started` (and counts as running from now), or never
        will. Then the slot's next job, if any, holds the slot's cores in its place, or the
        slot is given back if nothing else holds it."""
        lease_id, slot = launching.assignment.lease_id, launching.slot
        del self._launching[lease_id]
        if launching.counted:
            self._busy_cores -= launching.assignment.cores
        queued = self._queued_on_slot[slot]
        queued.remove(lease_id)
        if started:
            if not queued:
                del self._queued_on_slot[slot]
            return
        running = slot in self._on_slot
        if running:
            self._hungry.add(slot)  # its queue is shorter now
        if queued:
            if launching.counted and not running:
                self._count_next_on(slot)
            return
        del self._queued_on_slot[slot]
        if not running:
            heapq.heappush(self._free_slots, slot)

    def _count_next_on(self, slot: int) -> None:
        """The slot's running job has ended (or the job before it will never run): its next
        queued job now holds the slot's cores."""
        following = self._launching[self._queued_on_slot[slot][0]]
        if not following.counted:
            following.counted = True
            self._busy_cores += following.assignment.cores

    def _on_launched(self) -> None:
        """The launcher's ends and starts, in the order they happened."""
        assert self._launcher is not None
        for event in read_events(self._launcher):
            try:  # taken from the launcher: each is handled, whatever another raises
                if event.kind == "e":
                    attempt = self._attempts.get(event.token)
                    if attempt is not None:
                        self._launched_ended(attempt, event)
                else:
                    launching = self._launching.get(event.token)
                    if launching is not None:
                        self._launched_started(launching, event)
            except Exception:
                _log.exception("handling the launcher's event %s failed", event)
        self._queue_successors()

    def _launched_ended(self, attempt: _Attempt, event: LaunchEvent) -> None:
        self._keeper.check_stall()  # a job the keeper killed is reported as its kill
        if attempt.cgroup is not None:
            attempt.cgroup.kill(known_empty=event.empty == 1)  # those that left the group
        self._ended(attempt, None if event.status < 0 else event.status,
                    event.user_seconds + event.system_seconds, event.max_rss_kib * 1024,
                    event.monotonic)

    def _launched_started(self, launching: _Launching, event: LaunchEvent) -> None:
        assignment = launching.assignment
        self._forget_launching(launching, started=event.kind == "s")
        if event.kind == "f":
            cwd = assignment.cwd
            error = spawn_error_message(OSError(event.status, os.strerror(event.status),
                                                cwd if event.in_cwd else launching.program),
                                        cwd)
            self._unstarted(assignment, event.wall, event.monotonic, error, launching.cgroup,
                            None, (launching.stdout_path, launching.stderr_path), None)
            self._check_drained()
            return
        cgroup = launching.cgroup
        if cgroup is not None:
            cgroup.entered(event.entered)
            cgroup.adopt(event.pid)
            if len(self._attempts) >= TASKS_FILES_KEPT:
                cgroup.close()
        attempt = self._watch(assignment, _LaunchedProcess(event.pid), -1,
                              launching.stdout_path, launching.stderr_path, event.wall,
                              event.monotonic, None, cgroup, launching.slot,
                              in_pid_table=launching.in_pid_table)
        attempt.native = True
        self._hungry.add(attempt.slot)
        if attempt.slot in self._queued_on_slot:
            self._check_behind_later(attempt)
        self._on_started(StartedItem.trusted(
            job_id=assignment.job_id, lease_id=assignment.lease_id, pid=attempt.pid,
            started_at=attempt.started_at))
        if launching.kill_reason is not None:
            self._stop(attempt, "killed", launching.kill_reason)

    # ---- gated attempts: prepare, hold, release ------------------------------------------

    def _prepare(self, assignment: Assignment) -> None:
        assert self._loop is not None
        preparation = _Preparation(assignment, received_at=time.time(),
                                   received_monotonic=time.monotonic())
        self._preparing[assignment.lease_id] = preparation
        self._busy_cores += assignment.cores  # held for it from now, as for a running job
        preparation.task = self._loop.create_task(self._stage_and_spawn(preparation))

    async def _stage_and_spawn(self, preparation: _Preparation) -> None:
        assignment = preparation.assignment
        try:
            try:
                cwd = workdir_for(assignment, self._workdir_base, self.workdir)
                staged = await stage_files(
                    assignment.files, Path(cwd), self._fetch_blob,
                    always_copy=assignment.always_copy,
                )
                gate = Gate.create()
            finally:
                del self._preparing[assignment.lease_id]
                self._busy_cores -= assignment.cores
        except (StagingError, OSError) as exc:
            error = str(exc) if isinstance(exc, StagingError) else f"cannot open a gate: {exc}"
            self._report_unstarted(assignment, preparation.received_at,
                                   preparation.received_monotonic, error)
            self._check_drained()
            return
        except asyncio.CancelledError:
            reason = preparation.kill_reason or "cancelled"
            self._report_unstarted(assignment, preparation.received_at,
                                   preparation.received_monotonic, reason, "killed")
            self._check_drained()
            return
        attempt = self._launch(assignment, cwd, gate)
        if attempt is None:
            self._check_drained()
            return
        attempt.ready = _ready_item(attempt, cwd, staged)
        self._on_ready(attempt.ready)
        if preparation.release_requested:
            open_gates([gate])
            self._after_release([attempt])

    def _cancel_preparation(self, preparation: _Preparation, reason: str) -> None:
        if preparation.kill_reason is None and preparation.task is not None:
            preparation.kill_reason = reason
            preparation.task.cancel()

    def _after_release(self, attempts: list[_Attempt]) -> None:
        """Bookkeeping once the gates are open: the time limit starts, the stamp is awaited."""
        assert self._loop is not None
        released_at, released_monotonic = time.time(), time.monotonic()
        for attempt in attempts:
            attempt.released = True
            gate = attempt.gate
            if gate is None or not gate.opened:  # gone already; its exit is reported as usual
                continue
            attempt.started_at, attempt.started_monotonic = released_at, released_monotonic
            limit = attempt.assignment.time_limit_seconds
            if limit is not None:
                attempt.time_limit_at = released_monotonic + limit
                self._wake_at(attempt.time_limit_at)
            attempt.awaiting_stamp = True
            self._loop.add_reader(gate.stamp_read_fd, self._on_stamp, attempt)

    def _on_stamp(self, attempt: _Attempt) -> None:
        assert attempt.gate is not None
        if attempt.gate.read_stamp():
            unboost(attempt.gate, attempt.pid)  # not reaped yet: the pid is still its own
            self._report_gated_start(attempt)

    def _report_gated_start(self, attempt: _Attempt) -> None:
        """Report the start at the instant the process's own shell passed the line."""
        assert self._loop is not None and attempt.gate is not None
        self._loop.remove_reader(attempt.gate.stamp_read_fd)
        attempt.awaiting_stamp = False
        attempt.started_at = attempt.gate.started_at() or attempt.started_at
        self._on_started(
            StartedItem(
                job_id=attempt.assignment.job_id,
                lease_id=attempt.assignment.lease_id,
                pid=attempt.pid,
                started_at=attempt.started_at,
            )
        )

    def _discard_cgroup(self, cgroup: JobCgroup | None) -> None:
        if cgroup is not None and self._containment is not None:
            self._containment.discard(cgroup)

    def _on_stall(self, seconds: float) -> None:
        """The loop did not run for `seconds`, past the keeper's timeout: the keeper has
        killed every job (their second copies may be running elsewhere by now). Report them
        killed and make sure of it."""
        # Those started before the stall. The loop started none during it; the launcher may
        # have started a slot's next job, which the keeper killed too if it was in a cgroup
        # or in the launcher's pid table: that one is reported as it ended.
        stalled_since = time.monotonic() - seconds + _TIMER_SLACK_SECONDS
        stalled = [attempt for attempt in self._attempts.values()
                   if attempt.started_monotonic < stalled_since]
        if not stalled:
            return
        _log.warning("this worker was stopped for %.1f s: its keeper killed its %d jobs",
                     seconds, len(stalled))
        reason = f"the worker was stopped for {seconds:.0f} s; its keeper killed the job"
        for attempt in stalled:
            self._stop(attempt, "killed", reason, grace=False)

    def _check_drained(self) -> None:
        if self._attempts or self._preparing or self._backlog or self._launching:
            return
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ---- exit ----------------------------------------------------------------------------

    def _on_exit(self, attempt: _Attempt) -> None:
        """The pidfd is readable: the leader has exited and waits, a zombie, to be reaped."""
        self._keeper.check_stall()  # a job the keeper killed is reported as its kill
        signal_group(attempt.pid, signal.SIGKILL)  # leftovers; the zombie keeps the group id ours
        if attempt.cgroup is not None:
            attempt.cgroup.kill()  # and those that left the group
        try:
            pid, status, rusage = os.wait4(attempt.pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it: the status is lost
            pid, status, rusage = attempt.pid, None, None
        if pid == 0:  # not reapable yet after all; the reader fires again when it is
            return
        assert self._loop is not None
        self._loop.remove_reader(attempt.pidfd)
        os.close(attempt.pidfd)
        self._ended(attempt, status, rusage.ru_utime + rusage.ru_stime if rusage else 0.0,
                    rusage.ru_maxrss * 1024 if rusage else 0, time.monotonic())

    def _ended(self, attempt: _Attempt, status: int | None, cpu_seconds: float,
               reaped_max_rss_bytes: int, ended_monotonic: float) -> None:
        """The job's leader was reaped (`status` None: by someone else): report it."""
        cgroup_peak_bytes = attempt.cgroup.peak_memory_bytes() if attempt.cgroup else None
        # No process of the job is left to write to its spool files: they can serve the next.
        spools_reusable = attempt.cgroup is not None and attempt.cgroup.emptied
        self._discard_cgroup(attempt.cgroup)
        del self._attempts[attempt.assignment.lease_id]
        del self._on_slot[attempt.slot]
        if attempt.slot in self._queued_on_slot:  # the next jobs have it already
            self._count_next_on(attempt.slot)
        else:
            heapq.heappush(self._free_slots, attempt.slot)
        if attempt.tracked:
            self._keeper.untrack(attempt.pid)
        self._busy_cores -= attempt.assignment.cores
        if attempt.gate is not None:
            if attempt.awaiting_stamp:  # it may have exited before its stamp was read
                attempt.gate.read_stamp()
                self._report_gated_start(attempt)
            unboost(attempt.gate, None)  # reaped: only the count is left to settle
            attempt.gate.close()
        exit_code, signal_number, error = None, None, attempt.stop_reason
        if status is None:
            attempt.process.returncode = -1
            error = error or "the exit status was lost: the process was reaped elsewhere"
        else:
            attempt.process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap
            if os.WIFSIGNALED(status):
                signal_number = os.WTERMSIG(status)
                exit_code = 128 + signal_number  # as bash reports it
            else:
                exit_code = os.WEXITSTATUS(status)
        if self.on_exit is not None:
            self.on_exit(attempt.assignment.job_id,
                         attempt.stop_outcome is None and exit_code == 0)
        # The next job starts before this one is even reported (or, with none waiting, one
        # queued behind a running job is taken back to start in this slot).
        self._pump()
        wall_seconds = max(0.0, ended_monotonic - attempt.started_monotonic)
        if self.on_output is not None:
            try:
                self.on_output(attempt.assignment, attempt.stdout_path, attempt.stderr_path)
            except Exception:  # a failing viewer must not lose the job's result
                _log.exception("showing the output of job %d failed", attempt.assignment.job_id)
        stdout, stderr = self._collect_output(attempt, spools_reusable)
        # Made from this process's own measurements, every field given: not checked again (a
        # server checks what reaches it over the network as it decodes it).
        result = AttemptResult.trusted(
            job_id=attempt.assignment.job_id,
            lease_id=attempt.assignment.lease_id,
            outcome=attempt.stop_outcome or "exited",
            exit_code=exit_code,
            signal=signal_number,
            pid=attempt.pid,
            started_at=attempt.started_at,
            ended_at=attempt.started_at + wall_seconds,  # never before it started
            wall_seconds=wall_seconds,
            cpu_seconds=cpu_seconds,
            peak_rss_bytes=peak_memory_bytes(
                cgroup_peak_bytes=cgroup_peak_bytes,
                reaped_max_rss_bytes=reaped_max_rss_bytes,
                sampled_tree_bytes=attempt.peak_tree_rss_bytes,
                over_limit_bytes=attempt.over_limit_bytes,
            ),
            stdout=stdout,
            stderr=stderr,
            error=error,
        )
        try:
            self._on_finished(result)
        finally:
            self._check_drained()

    def _collect_output(self, attempt: _Attempt, reusable: bool) -> tuple[Captured, Captured]:
        """What the attempt wrote; its spool files emptied for the next job, or deleted."""
        reuse = reusable and len(self._spare_spools) < SPARE_SPOOLS_KEPT
        stdout, stdout_kept = collect(attempt.stdout_path, self._capture_bytes, reuse=reuse)
        stderr, stderr_kept = collect(attempt.stderr_path, self._capture_bytes, reuse=reuse)
        if stdout_kept and stderr_kept:
            self._spare_spools.append((attempt.stdout_path, attempt.stderr_path))
        elif stdout_kept or stderr_kept:  # a pair or nothing: the other was deleted
            remove_quietly(attempt.stdout_path)
            remove_quietly(attempt.stderr_path)
        return stdout, stderr

    # ---- the one timer: sampling, time limits, SIGKILL escalation ------------------------

    def _wake_at(self, due: float) -> None:
        if due >= self._timer_due or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_later(max(due - time.monotonic(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_due = None, math.inf
        now = time.monotonic()
        due = now + _TIMER_SLACK_SECONDS
        to_sample = [attempt for attempt in self._attempts.values() if attempt.next_sample <= due]
        if to_sample:
            self._sample(to_sample, now)
        for attempt in self._attempts.values():
            if attempt.time_limit_at is not None and attempt.time_limit_at <= due:
                attempt.time_limit_at = None
                limit = attempt.assignment.time_limit_seconds
                self._stop(attempt, "time_limit", f"time limit of {limit:g} s reached")
            if attempt.sigkill_at is not None and attempt.sigkill_at <= due:
                attempt.sigkill_at = None
                self._kill_all_of(attempt)
        if self._queued_on_slot and not self._holding and not self._closing_kill:
            self._wake_at(self._reclaim_behind_long(due))
        if self._attempts:
            self._wake_at(min(attempt.next_event() for attempt in self._attempts.values()))

    def _sample(self, attempts: list[_Attempt], now: float) -> None:
        table = ProcessTable.scan()
        for attempt in attempts:
            attempt.next_sample = now + attempt.sample_every
            rss_bytes = table.tree_rss_bytes(attempt.pid)
            attempt.peak_tree_rss_bytes = max(attempt.peak_tree_rss_bytes, rss_bytes)
            limit = attempt.assignment.memory_bytes
            if self._enforce_memory and 0 < limit < rss_bytes:
                attempt.over_limit_bytes = rss_bytes
                # No grace period: a job over its memory may take the host down with it.
                self._stop(
                    attempt,
                    "memory_limit",
                    f"memory use of {rss_bytes} bytes exceeded the limit of {limit} bytes",
                    grace=False,
                )

    def _stop(
        self, attempt: _Attempt, outcome: Outcome, reason: str, *, grace: bool = True
    ) -> None:
        """End a job on the runner's own account; the first reason given is the one reported."""
        if attempt.stop_outcome is None:
            attempt.stop_outcome, attempt.stop_reason = outcome, reason
        if not grace:
            self._kill_all_of(attempt)
            return
        self._signal_group(attempt, signal.SIGTERM)
        if attempt.cgroup is not None:
            attempt.cgroup.signal(signal.SIGTERM)  # those that left the group are asked too
        if attempt.sigkill_at is None:
            attempt.sigkill_at = time.monotonic() + KILL_GRACE_SECONDS
            self._wake_at(attempt.sigkill_at)


def _held(assignment: Assignment, received_at: float) -> RunningAttempt:
    """An assignment held here without a process yet (preparing, waiting, queued)."""
    return RunningAttempt(job_id=assignment.job_id, lease_id=assignment.lease_id,
                          started_at=received_at, gpus=list(assignment.gpus))


def _ready_item(attempt: _Attempt, cwd: str, staged: StagingReport) -> ReadyItem:
    return ReadyItem(
        job_id=attempt.assignment.job_id,
        lease_id=attempt.assignment.lease_id,
        pid=attempt.pid,
        cwd=cwd,
        copied_files=staged.copied_files,
        copied_bytes=staged.copied_bytes,
        skipped_files=staged.skipped_files,
    )


def _read_range(path: str, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to `limit` bytes of a spool file from `offset`, and the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", 0
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, max(0, min(limit, size - offset)), offset), size
    finally:
        os.close(fd)

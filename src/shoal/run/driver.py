"""`shoal run` on a file of commands, on stdin, or on arguments: the run loop.

The service and an in-process worker run in this process (see shoal.embedded), with the run's
own database (see shoal.run.state). Input is added as it comes, one durable add per batch;
every job is a place in its input (identical lines are distinct jobs), matched with what an
earlier run of the same input left: done jobs are skipped, failed ones run again (with
`--resume`, failed ones are skipped too), jobs an interrupted run left are run again. What
ends is shown (see output), logged (`--joblog`), kept (`--results`), and checked against
`--halt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.core.errors import BatchInputError, InputError, ShoalError
from shoal.core.models import FINAL_STATES, Job, JobState
from shoal.core.protocol import Resources
from shoal.core.states import Transition
from shoal.home import DATABASE_FILE, private_directory, try_lock_home
from shoal.run import state
from shoal.run.inputs import BATCH, Item, RunInput, too_much_memory
from shoal.run.output import Joblog, OutputSettings, Printer, Results, Shown
from shoal.run.summary_parts import MAX_FAILURES_SHOWN, SlowestJobs, failure_entry
from shoal.run.terminal import Terminal, bar_text
from shoal.server.reactor import ReactorConfig
from shoal.server.service import IN_PROCESS_STEP_INTERVAL_SECONDS, Service
from shoal.store import JobQuery, Store
from shoal.worker.agent import Agent, InProcessLink
from shoal.worker.resources import machine_memory
from shoal.worker.runner import QUEUED_PER_SLOT

if TYPE_CHECKING:
    from shoal.embedded import RunReport
    from shoal.provision.hosts import SshHost
    from shoal.runfile.listen import ListenSettings

LOCAL_WORKER = "local"
LINE_POLL_SECONDS = 0.1
BAR_SECONDS = 0.2
MAX_RUNS_AT_ONCE = 64  # runs of one stdin or command in one directory, each its own state
# Jobs fed but not ended, at most (10,240): a file is read into the queue as it drains. A
# whole number of batches, so that a file's batches fill it exactly.
AHEAD = 80 * BATCH
# The least the feed waits after an add that added jobs: one of the service's steps.
FEED_PAUSE_SECONDS = IN_PROCESS_STEP_INTERVAL_SECONDS
_NOT_STARTED = (JobState.WAITING, JobState.QUEUED, JobState.DELAYED)

# What an earlier run of the same input left, by what each mode does with it.
AUTO, RESUME, RESUME_FAILED, FRESH = "auto", "resume", "resume-failed", "fresh"


@dataclass(frozen=True)
class Halt:
    """GNU parallel's --halt: when (now: kill running jobs; soon: let them finish), on what
    (fail, success, done) and how many (a count, or a percentage of the jobs)."""

    when: str
    what: str
    count: int | None = None
    percent: float | None = None

    def reached(self, done: int, failed: int, total: int) -> bool:
        seen = {"fail": failed, "success": done, "done": done + failed}[self.what]
        if self.count is not None:
            return seen >= self.count
        assert self.percent is not None
        return seen > 0 and total > 0 and seen * 100 >= self.percent * total


_HALT_SHORT = {"0": None, "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1",
               "-2": "now,success=1"}


def parse_halt(text: str) -> Halt | None:
    value = text.strip()
    if value in ("never", "0"):
        return None
    if value in _HALT_SHORT:
        value = _HALT_SHORT[value] or ""
    elif value.endswith("%") and "," not in value and "=" not in value:
        value = f"soon,fail={value}"
    when, _, rule = value.partition(",")
    what, _, amount = rule.partition("=")
    problem = when not in ("now", "soon") or what not in ("fail", "success", "done")
    count: int | None = None
    percent: float | None = None
    try:
        if amount.endswith("%"):
            percent = float(amount[:-1])
            problem = problem or not 0 < percent <= 100
        else:
            count = int(amount)
            problem = problem or count < 1
    except ValueError:
        problem = True
    if problem:
        raise InputError(f"--halt: {text!r} is not WHEN,WHY=N (e.g. now,fail=1, soon,fail=10%, "
                         "now,success=1) nor never")
    return Halt(when, what, count, percent)


@dataclass
class RunSettings:
    parallel: int
    output: OutputSettings = field(default_factory=OutputSettings)
    bar: bool = False
    halt: Halt | None = None
    delay: float = 0.0
    resume: str = AUTO
    joblog: Path | None = None
    joblog_plus: bool = False  # `--joblog +FILE`: append, with no header, as GNU parallel
    results: Path | None = None
    hosts: Sequence[SshHost] = ()
    listen: ListenSettings | None = None


@dataclass(slots=True)
class _Tracked:
    number: int  # the job's line (or place) in the input
    tag: str
    index: int


class Run:
    def __init__(self, run_input: RunInput, settings: RunSettings, report: RunReport):
        self.input = run_input
        self.settings = settings
        self.report = report
        self.tracked: dict[int, _Tracked] = {}
        self.pending: set[int] = set()
        self.order: list[int] = []  # this run's job ids in input order
        self.input_open = True
        self.halted: str | None = None
        self.finished = asyncio.Event()
        self.terminal = Terminal(bar=settings.bar)
        self.service: Service | None = None
        self.agent: Agent | None = None
        self.printer: Printer | None = None
        self.results = Results(settings.results) if settings.results else None
        self.joblog: Joblog | None = None
        self.began = time.monotonic()
        self.failures_seen = 0
        self.memory_bytes = machine_memory()
        # What an earlier run left: cmd -> job ids in input order, and their states.
        self._earlier: dict[str, deque[int]] = defaultdict(deque)
        self._earlier_states: dict[int, JobState] = {}
        self._feed_error: Exception | None = None
        self._room = asyncio.Event()  # set when jobs end: the feed may add more
        self._slowest = SlowestJobs()
        # With --halt: jobs whose result the runner has but the run has not counted yet, and
        # whether each succeeded (see _saw_end).
        self._deciding: dict[int, bool] = {}
        self._last_ended_ok = False  # whether the job counted last succeeded

    # ---- the run ---------------------------------------------------------------------------

    async def go(self, home: Path) -> None:
        store = Store(home / DATABASE_FILE)
        service = Service(store, ReactorConfig(lost_grace_seconds=0.0,
                                               restart_grace_seconds=0.0))
        self.service = service
        if not self.settings.hosts:  # every worker is in this process
            service.serve_in_process(jobs_ahead=not self.settings.delay)
        await service.start()
        self._read_earlier(store)
        self.printer = Printer(self.settings.output, self.terminal, home / "kept",
                               store.output, keep_files=self.results is not None)
        if self.settings.joblog is not None:
            plus = self.settings.joblog_plus  # a resumed run appends too, under a header
            self.joblog = Joblog(self.settings.joblog, header=not plus,
                                 append=plus or self.settings.resume in (RESUME, RESUME_FAILED))
        service.listeners.append(self._follow)
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted.set)
        remote = None
        timers: list[asyncio.Task[None]] = []
        worker_id: int | None = None
        try:
            if self.settings.hosts:
                from shoal.embedded import _ssh_workers

                remote = await _ssh_workers(service, home, self.settings.hosts,
                                            self.settings.listen)
            agent = self._agent(home)
            worker_id = service.join(agent.register_message(), InProcessLink(agent))
            joined = worker_id
            agent.connected(lambda message: service.deliver(joined, message))
            timers.append(asyncio.create_task(self._tick()))
            timers.append(asyncio.create_task(self._feed()))
            waiters = [asyncio.create_task(self.finished.wait()),
                       asyncio.create_task(interrupted.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if self._feed_error is not None:
                raise self._feed_error
            # Interrupted with jobs left, or while the input still comes (`... | shoal run`
            # waiting for more lines): a partial run either way.
            if interrupted.is_set() and (self.pending or self.input_open):
                self.report.interrupted = True
                self.report.total = self._expected_total()  # the lines not yet fed too
                agent.begin_stop()
                await agent.runner.shutdown(kill=True)
                await asyncio.sleep(0.05)  # let the last reports reach the service
                service.leave(worker_id)  # what it still held goes back to the queue
                worker_id = None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for timer in timers:
                timer.cancel()
            self.input.close()
            if self.agent is not None and worker_id is not None:
                self.agent.begin_stop()
                await self.agent.runner.shutdown(kill=True)
            if remote is not None:
                workers, listener = remote
                await workers.stop()
                await listener.stop()
            self.report.wall_seconds = time.monotonic() - self.began
            if self.printer is not None:
                self.printer.flush_held()
            self.terminal.close()
            self._summarise()
            if self.joblog is not None:
                self.joblog.close()
            await service.stop()
            store.close()

    def _agent(self, home: Path) -> Agent:
        parallel = self.settings.parallel
        # Offered more than its slots: the next jobs wait in the runner (queued in the
        # launcher, and one more for each slot) and start the moment a slot frees, without a
        # round trip through the service (see worker.runner). With other hosts' workers in
        # the run, four times: what this one holds, theirs cannot take as the run ends.
        ahead = 4 if self.settings.hosts else QUEUED_PER_SLOT + 2
        offered = parallel * ahead if not self.settings.delay else parallel
        agent = Agent(LOCAL_WORKER, Resources(cores=offered, memory_bytes=self.memory_bytes),
                      private_directory(home / "spool"), host=socket.gethostname())
        agent.runner.max_running_cores = parallel
        printer = self.printer
        assert printer is not None
        agent.runner.on_output = lambda assignment, out, err: printer.take(
            assignment.job_id, out, err)
        agent.runner.start_interval_seconds = self.settings.delay
        if self.settings.halt is not None:
            agent.runner.on_exit = self._saw_end
        self.agent = agent
        return agent

    def _read_earlier(self, store: Store) -> None:
        """What an earlier run of this input left (nothing after --fresh): live jobs are
        cancelled (the input decides what runs), then matched with the input again."""
        assert self.service is not None
        after: int | None = None
        while True:
            page = store.list_jobs(JobQuery(), after_id=after, limit=5000)
            for job in page:
                self._earlier[job.cmd].append(job.id)
                self._earlier_states[job.id] = job.state
            if len(page) < 5000:
                break
            after = page[-1].id
        live = [job.id for job in self.service.reactor.jobs.values()
                if job.state not in FINAL_STATES]
        if live:
            self.service.act("kill", live, None, reason="left unfinished by an earlier run")
            for job_id in live:
                self._earlier_states[job_id] = JobState.CANCELLED

    async def _feed(self) -> None:
        try:
            async for batch in self.input.batches():
                # Jobs go in as room is made: a million lines are never a million queued jobs
                # in memory at once, and the first starts as soon as its batch is read.
                while len(self.pending) >= AHEAD and self.halted is None:
                    self._room.clear()
                    await self._room.wait()
                if self.halted is not None:
                    break
                began = time.monotonic()
                if self._add(batch):
                    # The loop gets as long as the add took (and at least a service step) to
                    # hand the slots their next jobs before the next add: adds back to back
                    # left the slots idle. (A batch that added nothing, all done before, waits
                    # for nothing.)
                    await asyncio.sleep(max(FEED_PAUSE_SECONDS, time.monotonic() - began))
        except InputError as error:
            if not self.tracked and self.input.total is not None:
                # Input read whole (a file, arguments) refused before any job was taken: one
                # line and exit 2, as its parse errors are.
                self._feed_error = error
                self.finished.set()
            else:  # a bad line of a stream: what came before it runs
                self.report.input_error = str(error)
                self._stop_taking("bad input")
        except Exception as error:
            self._feed_error = error
            self.finished.set()
        finally:
            self.input_open = False
            self._check_finished()

    def _add(self, batch: list[Item]) -> int:
        """Add the batch's jobs (those an earlier run left undone are run again); how many
        the run now follows."""
        assert self.service is not None
        mode = self.settings.resume
        new: list[Item] = []
        again: list[tuple[int, Item]] = []
        for item in batch:
            spec = item.spec
            if spec.cores > self.settings.parallel:
                raise InputError(f"asks for {spec.cores} cores but -j is "
                                 f"{self.settings.parallel}", source=self.input.label,
                                 line=item.number)
            if spec.memory_bytes > self.memory_bytes > 0:
                raise InputError(too_much_memory(spec.memory_bytes, self.memory_bytes),
                                 source=self.input.label, line=item.number)
            earlier = self._earlier.get(spec.cmd)
            if earlier:
                job_id = earlier.popleft()
                before = self._earlier_states.get(job_id)
                if before is JobState.DONE:
                    self.report.skipped_done += 1
                    self.input.ended(item.number, succeeded=True)
                    continue
                if before is JobState.FAILED and mode == RESUME:
                    self.report.skipped_failed += 1
                    self.input.ended(item.number, succeeded=False)
                    continue
                again.append((job_id, item))
                continue
            new.append(item)
        if again:
            self.service.act("retry", [job_id for job_id, _ in again], None)
        ids: list[int] = []
        if new:
            try:
                ids = self.service.add([item.spec for item in new], distinct=True)["ids"]
            except BatchInputError as error:  # named by its place in the input
                raise InputError(error.reason, source=self.input.label,
                                 line=new[error.index].number) from None
        for job_id, item in [*again, *zip(ids, new, strict=True)]:
            self._track(job_id, item)
        return len(again) + len(ids)

    def _track(self, job_id: int, item: Item) -> None:
        self.tracked[job_id] = _Tracked(item.number, item.tag, len(self.order))
        self.order.append(job_id)
        self.pending.add(job_id)
        self.report.total += 1
        if self.printer is not None:
            self.printer.watch(job_id, item.tag, self.tracked[job_id].index)

    # ---- following the jobs ----------------------------------------------------------------

    def _saw_end(self, job_id: int, succeeded: bool) -> None:
        """With --halt: a job's end that, once counted, would stop the run holds every further
        start until it is counted (GNU parallel starts nothing after the job that halts it;
        the runner would otherwise start what waits in it before the count is made)."""
        if self.settings.halt is None or self.halted is not None or job_id not in self.pending:
            return
        self._deciding[job_id] = succeeded
        if self._would_halt() and self.agent is not None:
            self.agent.runner.hold_starts()

    def _would_halt(self) -> bool:
        """Whether the results not yet counted would reach --halt if they all end the jobs."""
        halt = self.settings.halt
        assert halt is not None
        succeeded = sum(self._deciding.values())
        failed = len(self._deciding) - succeeded
        return halt.reached(self.report.done + succeeded, self.report.failed + failed,
                            self._expected_total())

    def _follow(self, transitions: list[Transition]) -> None:
        ended = [entry.job_id for entry in transitions
                 if entry.to_state in FINAL_STATES and entry.job_id in self.pending]
        if ended:
            assert self.service is not None
            for job in sorted(self.service.find(ended), key=lambda job: job.id):
                if job.id in self.pending and job.state in FINAL_STATES:
                    self.pending.discard(job.id)
                    self._ended(job)
            self._room.set()
            self._check_halt()
            self._check_finished()
        if self._deciding:  # after the halt is decided: starts go on only if it was not
            self._counted([entry.job_id for entry in transitions
                           if entry.from_state is JobState.RUNNING])

    def _counted(self, left_running: list[int]) -> None:
        """These jobs' results are counted (ended, or queued again to retry): starts go on
        unless what is still uncounted, or the run itself, halts."""
        for job_id in left_running:
            self._deciding.pop(job_id, None)
        if self.halted is None and self.agent is not None and not (
                self._deciding and self._would_halt()):
            self.agent.runner.resume_starts()

    def _no_longer_running(self, job_ids: list[int]) -> list[int]:
        """Those of these jobs the service no longer has running, and whose end (if they
        ended) the run has counted: had a result been taken in without a transition out of
        running, the runner's starts are not held for ever."""
        assert self.service is not None
        jobs = {job.id: job for job in self.service.find(job_ids)}
        return [job_id for job_id in job_ids
                if (job := jobs.get(job_id)) is None or (
                    job.state is not JobState.RUNNING
                    and not (job.state in FINAL_STATES and job_id in self.pending))]

    def _ended(self, job: Job) -> None:
        self._last_ended_ok = job.state is JobState.DONE
        tracked = self.tracked[job.id]
        shown = Shown(job, tracked.number, tracked.tag, tracked.index)
        assert self.printer is not None
        sent = self.input.stdin_bytes(tracked.number)  # before the block is let go
        self.input.ended(tracked.number, succeeded=job.state is JobState.DONE)
        if job.state is JobState.DONE:
            self.report.done += 1
            self._slowest.saw(job.wall_seconds, job.id, tracked.number, job.cmd)
        elif job.state is JobState.CANCELLED and self.halted is not None:
            self.report.not_run += 1
        else:
            self.report.failed += 1
            self.failures_seen += 1
            if len(self.report.failures) < MAX_FAILURES_SHOWN:
                stderr = self.printer.output_of(job.id, "stderr").decode("utf-8", "replace")
                self.report.failures.append(failure_entry(job.id, tracked.number, job.cmd,
                                                          job.fail_reason, stderr))
        # A job cancelled before it had a process (by --halt, or an interrupt, while it
        # waited) has nothing to keep: GNU parallel's --results and --joblog leave it out too.
        ran = not (job.state is JobState.CANCELLED and job.pid is None)
        if self.results is not None and ran:
            self.results.write(shown, self.printer)
        if self.joblog is not None and ran:
            received = len(self.printer.output_of(job.id, "stdout"))
            self.joblog.write(shown, sent, received, LOCAL_WORKER)
        self.printer.ended(shown)
        self._update_bar(force=True)

    def _check_halt(self) -> None:
        halt = self.settings.halt
        if halt is None or self.halted is not None:
            return
        report = self.report
        if not halt.reached(report.done, report.failed, self._expected_total()):
            return
        self.halted = f"{halt.when},{halt.what}"
        self.report.halted = f"--halt {halt.when},{halt.what}=" + (
            f"{halt.count}" if halt.count is not None else f"{halt.percent:g}%")
        # GNU parallel exits as the job that met the rule: a success rule, or a done rule
        # met by a job that succeeded, is a success.
        self.report.halted_on_success = halt.what == "success" or (
            halt.what == "done" and self._last_ended_ok)
        asyncio.get_running_loop().call_soon(self._halt, halt.when)

    def _halt(self, when: str) -> None:
        """Start no more jobs; `now` also kills those running."""
        self._stop_taking(None)
        if when == "now":
            self._cancel([job_id for job_id in self.pending], "killed by --halt now")
        self._check_finished()

    def _expected_total(self) -> int:
        """The jobs this run has: all of a file's (less those skipped so far), though fed as
        room is made; a stream's, as far as it has come."""
        if self.input.total is None or not self.input_open:
            return self.report.total
        report = self.report
        return max(report.total,
                   self.input.total - report.skipped_done - report.skipped_failed)

    def _stop_taking(self, reason: str | None) -> None:
        """No new job starts: the input is left, what is queued is cancelled, and what was
        never fed counts as not run."""
        assert self.service is not None
        if self.halted is None:
            self.halted = reason or "stopped"
        unfed = self._expected_total() - self.report.total
        self.report.total += unfed
        self.report.not_run += unfed
        self.input_open = False
        queued = [job_id for job_id in self.pending
                  if (job := self.service.reactor.jobs.get(job_id)) is not None
                  and job.state in _NOT_STARTED]
        # Given to the runner but waiting in it: killed through the service, so that they
        # end cancelled (handed back by the runner, they would be queued again). One that the
        # launcher has started already runs to its end, as a running job does.
        held: list[int] = []
        if self.agent is not None:
            self.agent.runner.hold_starts()
            held = self.agent.runner.not_started()
        self._cancel(queued + held, "not started: the run stopped")

    def _cancel(self, ids: list[int], reason: str) -> None:
        if ids and self.service is not None:
            self.service.act("kill", ids, None, reason=reason)

    def _check_finished(self) -> None:
        if not self.input_open and not self.pending:
            self.finished.set()

    async def _tick(self) -> None:
        """The bar's clock, and --line-buffer's reading of running jobs' output."""
        line_mode = self.settings.output.mode == "line"
        while True:
            await asyncio.sleep(LINE_POLL_SECONDS if line_mode else BAR_SECONDS)
            if self._deciding:
                self._counted(self._no_longer_running(list(self._deciding)))
            if line_mode and self.agent is not None and self.printer is not None:
                runner = self.agent.runner
                for attempt in runner.running():
                    if attempt.pid is not None and attempt.job_id in self.tracked \
                            and (paths := runner.spool_paths(attempt.lease_id)) is not None:
                        self.printer.stream(attempt.job_id, *paths)
            self._update_bar()

    def _update_bar(self, *, force: bool = False) -> None:
        if not self.terminal.bar:
            return
        running = self.agent.runner.running_count if self.agent is not None else 0
        report = self.report
        self.terminal.status(bar_text(
            self.input.label, done=report.done, failed=report.failed,
            total=self._expected_total(), running=running,
            elapsed=time.monotonic() - self.began, input_open=self.input_open), force=force)

    def _summarise(self) -> None:
        report = self.report
        report.failures_more = max(0, self.failures_seen - len(report.failures))
        report.slowest = self._slowest.entries()


def take_home(run_input: RunInput, mode: str) -> tuple[Path, int, bool, bytes | None]:
    """Lock the input's state directory (one run of an input at a time), start it over if
    asked, and make it the last run of its base; also whether the directory is new.

    An input that starts over anyway (stdin, arguments; not with --resume) whose directory
    another run holds gets one of its own beside it (`stdin.2`, ...): two pipelines into
    `shoal run` in one directory run side by side, as two GNU parallels do."""
    key = run_input.key
    others = range(2, MAX_RUNS_AT_ONCE + 1) if run_input.starts_over and mode == AUTO else ()
    for candidate in (key, *(f"{key}.{n}" for n in others)):
        run_input.key = candidate  # the run's other files (--pipe's blocks) follow it
        home = state.run_dir(run_input.base, candidate)
        created = not home.exists()
        try:
            state.make_private(run_input.base)
            fd = try_lock_home(home)
        except OSError as error:
            raise ShoalError(f"{home}: cannot keep the run's state there: "
                             f"{error.strerror or error}") from None
        if fd is not None:
            break
    else:
        home = state.run_dir(run_input.base, key)
        raise InputError(f"{run_input.label}: another `shoal run` of it is going on "
                         f"(its state: {home})")
    if mode == FRESH or (run_input.starts_over and mode == AUTO):
        state.clear(home)
    last_before = state.remember_last(run_input.base, home)
    return home, fd, created, last_before


async def run_input(run_input: RunInput, settings: RunSettings) -> RunReport:
    from shoal.embedded import RunReport

    report = RunReport(total=0, skipped_done=0, numbered_by=run_input.numbered_by,
                       rerun_resumes=not run_input.starts_over)
    run = Run(run_input, settings, report)  # its options are checked before any state is made
    base_is_new = not run_input.base.exists()
    home, fd, created, last_before = take_home(run_input, settings.resume)
    report.state_dir = str(home)
    try:
        await run.go(home)
    except ShoalError:
        if not report.total:  # refused before any job was taken: leave things as they were
            state.forget_last(run_input.base, home, last_before)
            if created:
                shutil.rmtree(home, ignore_errors=True)
            if base_is_new:  # what this run made of it, if no other run is in it now
                for made in (run_input.base / state.RUNS, run_input.base):
                    with contextlib.suppress(OSError):
                        made.rmdir()
        raise
    finally:
        os.close(fd)
    return report


async def dry_run(run_input: RunInput, mode: str) -> None:
    """--dry-run: print the commands a run would start, one a line; nothing runs, nothing is
    written (an earlier run's state is read to leave out what it would skip)."""
    import sys

    earlier: dict[str, deque[JobState]] = defaultdict(deque)
    home = state.run_dir(run_input.base, run_input.key)
    starting_over = mode == FRESH or (run_input.starts_over and mode == AUTO)
    if not starting_over and (home / DATABASE_FILE).is_file():
        from shoal.run.local import RunState  # read as `shoal jobs` reads it: damage is said

        earlier_run = RunState(home)
        try:
            for job in earlier_run.jobs(page_size=5000):
                earlier[job["cmd"]].append(JobState(job["state"]))
        finally:
            earlier_run.close()
    out = sys.stdout
    run_input.writes = False
    try:
        async for batch in run_input.batches():
            for item in batch:
                states = earlier.get(item.spec.cmd)
                before = states.popleft() if states else None
                if before is JobState.DONE or (before is JobState.FAILED and mode == RESUME):
                    continue
                out.write(item.spec.cmd + "\n")
            out.flush()
    finally:
        run_input.close()

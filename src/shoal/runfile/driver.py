"""`shoal run` on a runmaker file: the file is the queue, shared with whoever else works on it.

A line runs here only once this runner has claimed it, and it is claimed only when there is a
slot to run it: the claim (see claims.py) is a compare-and-set of the line's state byte under
runmaker4's lock, made again every time, so `shoal run` processes (on this host or on others
sharing the directory) and runmaker4 processes can all work on one file, each line once. What
decides whether a line runs is its state character; the runner's database only keeps the
history: attempts, output, times. Each claimed line is a job of its own (two identical lines are
two jobs), kept as a lines file's run is: in `<base>/runs/<name>/` (see shoal.run.state), or in
`runners/N/` under it while other runners of the file hold that (see `take_runner_home`), and
named in `<base>/last` once the run has started, so that `shoal logs`, `status` and `jobs` read
it afterwards.

The runner claims lines ahead of its free slots when jobs end quickly (as many as ended in the
last half second), and claims again only when half of those have started, so short jobs are
added to the service in batches (each add is one synchronous commit); a line so claimed shows
`r` about half a second at most before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.core.errors import InputError, ShoalError
from shoal.core.models import FINAL_STATES, Job, JobState
from shoal.core.protocol import FromWorker, Resources, Started
from shoal.core.states import Transition
from shoal.formats import RunmakerFile
from shoal.home import DATABASE_FILE, private_directory, try_lock_home
from shoal.run import state as run_state
from shoal.run.summary_parts import MAX_FAILURES_SHOWN, SlowestJobs, failure_entry
from shoal.runfile.claims import CheckReport, ClaimBook, check_claims
from shoal.runfile.guard import Guard
from shoal.runfile.lines import Line, read_lines
from shoal.runfile.output import LiveLines, RunmakerLog, captured_lines
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store

if TYPE_CHECKING:
    from shoal.embedded import RunReport
    from shoal.runfile.listen import ListenSettings

log = logging.getLogger("shoal.runfile")

LOCAL_WORKER = "local"
MAX_RUNNER_HOMES = 256
AHEAD_WINDOW_SECONDS = 0.5
MAX_AHEAD = 128
LISTEN_POLL_SECONDS = 0.5


@dataclass
class RunfileOptions:
    """What runmaker4's options become (see docs/formats.md, "coming from runmaker4")."""

    parallel: int  # jobs at once on this host; 0: none (only workers that join)
    retry_failed: bool = False  # -r: lines `!` and `e` run again
    one_only: bool = False  # -1: each slot stops after its first job that succeeds
    log_path: Path | None = None  # -l: runmaker4's output log
    log_lines: int = 3  # -n
    live: Callable[[str], None] | None = None  # runmaker4's live lines, one call each
    listen: ListenSettings | None = None  # --listen: serve workers on other hosts


@dataclass
class Active:
    line: Line
    pid: int | None = None
    host: str = ""
    announced: bool = False  # "executing" shown
    forked: bool = False  # "forked" shown
    remote: bool = False  # running on a --listen worker: the guard holds its line a while


@dataclass
class FileRunReport:
    """What the runner found and did beyond the run report: for the summary's last lines."""

    recovered: list[int] = field(default_factory=list)  # line numbers set back to "."
    unjudgeable: list[int] = field(default_factory=list)  # `r`/`?` nobody here can judge
    elsewhere: int = 0  # lines running elsewhere when this runner ended
    home: Path | None = None


def runner_home(run: Path) -> tuple[Path, int]:
    """The first home under `run` no other runner holds: `run`, then run/runners/2, ..."""
    for index in range(1, MAX_RUNNER_HOMES + 1):
        home = run if index == 1 else run / "runners" / str(index)
        fd = try_lock_home(home)
        if fd is not None:
            return home, fd
    raise ShoalError(f"{run}: {MAX_RUNNER_HOMES} runners already work from here")


def take_runner_home(path: Path, base: Path | None = None) -> tuple[Path, Path, int]:
    """Where this runner of the runmaker file at `path` keeps its state, locked: the file's
    run under `base` (`.shoal` beside it, or $SHOAL_HOME), named as a lines file's run is, or
    `runners/N` in it when other runners of the file hold that. Returns (base, home, lock)."""
    base = run_state.base_dir(path) if base is None else base
    run = run_state.run_dir(base, run_state.run_key(path, run_state.file_key(path)))
    try:
        run_state.make_private(base)
        home, fd = runner_home(run)
    except OSError as error:
        raise ShoalError(f"{run}: cannot keep the run's state there: "
                         f"{error.strerror or error}") from None
    return base, home, fd


class FileRunner:
    def __init__(self, path: Path, options: RunfileOptions, defaults: dict[str, object],
                 progress: Callable[[int, int, int], None] | None = None):
        from shoal.embedded import RunReport

        self.path = path
        self.options = options
        self.defaults = defaults
        self.progress = progress
        self.claimable = ".!e" if options.retry_failed else "."
        self.runmaker = RunmakerFile(path)
        self.book = ClaimBook(path)
        self.guard: Guard | None = None
        self.lines: list[Line] = []
        self.data = b""
        self.cursor = 0
        self.attempted: set[tuple[int, bytes]] = set()
        self.active: dict[int, Active] = {}  # job id -> the line it runs
        self.slowest = SlowestJobs()
        # (job id, line) of the first jobs that failed, as they ended, for the summary
        self.failures: list[tuple[int, int]] = []
        self.recent_ends: deque[float] = deque()
        self.began = time.monotonic()
        self.successes = 0
        self.rescan_broken = False
        self.wake = asyncio.Event()
        self.report = RunReport(total=0, skipped_done=0)
        self.file_report = FileRunReport()
        self.live = LiveLines(options.live) if options.live else None
        self.log: RunmakerLog | None = None
        if options.log_path is not None:
            self.log = RunmakerLog(options.log_path, options.log_lines)
        self.service: Service | None = None

    # ---- the file --------------------------------------------------------------------------

    def recover(self) -> CheckReport:
        """Set a dead shoal runner's lines back to ".", then read the file again."""
        data, lines = read_lines(self.runmaker, self.defaults)
        found = check_claims(self.runmaker, data, [line.parsed for line in lines], self.path,
                             recover=True)
        if found.recovered:
            data, lines = read_lines(self.runmaker, self.defaults)
        self.data, self.lines, self.cursor = data, lines, 0
        known = set(self.file_report.recovered)
        self.file_report.recovered += [ref.line for ref in found.recovered
                                       if ref.line not in known]
        self.file_report.unjudgeable = [ref.line for ref in found.unjudgeable]
        for ref in found.recovered:
            log.info("line %d was claimed by a shoal runner that is gone: set back to '.'",
                     ref.line)
        return found

    def rescan(self) -> bool:
        """Read the file again; True if it has lines this runner may still claim."""
        if self.rescan_broken:
            return False
        try:
            self.recover()
        except InputError as error:
            log.warning("%s; no more lines are taken from the file", error)
            self.rescan_broken = True
            return False
        return any(self._claimable(line) for line in self.lines)

    def _claimable(self, line: Line) -> bool:
        return line.key not in self.attempted and (line.parsed.state_char or "") in self.claimable

    # ---- claiming ----------------------------------------------------------------------------

    def slots(self) -> int:
        assert self.service is not None
        offered = sum(worker.cores for worker in self.service.reactor.workers.values()
                      if worker.connected and worker.accepting)
        if self.options.one_only:
            return max(0, min(offered, self.options.parallel - self.successes))
        return offered

    def ahead(self) -> int:
        if self.options.one_only:
            return 0
        now = time.monotonic()
        while self.recent_ends and self.recent_ends[0] < now - AHEAD_WINDOW_SECONDS:
            self.recent_ends.popleft()
        # In the first half second, the rate so far stands for the whole window.
        seen = min(AHEAD_WINDOW_SECONDS, max(now - self.began, 0.05))
        return min(round(len(self.recent_ends) * AHEAD_WINDOW_SECONDS / seen), MAX_AHEAD)

    def claim(self, line: Line) -> bool:
        offset = line.offset
        if not self.book.try_hold(offset):
            return False  # another live shoal runner holds it
        if self.runmaker.compare_and_set(offset, self.claimable, "r", line.rest) is None:
            self.book.release(offset)
            return False
        self.book.mark(offset)
        return True

    def refill(self) -> None:
        assert self.service is not None
        slots = self.slots()
        ahead = self.ahead() if slots else 0
        if len(self.active) > slots + ahead // 2:
            return  # enough claimed: let the lines ahead run down to half, then claim a batch
        want = slots + ahead - len(self.active)
        batch: list[Line] = []
        candidates = self._candidates()
        while len(batch) < want:
            line = next(candidates, None)
            if line is None:
                break
            if not self.claim(line):
                continue
            self.attempted.add(line.key)
            batch.append(line)
        if not batch:
            return
        try:
            # Each line a job of its own: identical lines too, and lines this home's history
            # already has (an earlier run of the file; the file decides what runs again).
            result = self.service.add([line.parsed.spec for line in batch], distinct=True)
        except BaseException:
            for line in batch:
                self.unclaim(line, ".")
            raise
        jobs = self.service.reactor.jobs
        for job_id, line in zip(result["ids"], batch, strict=True):
            active = self.active[job_id] = Active(line)
            job = jobs.get(job_id)
            if job is not None and job.state is JobState.RUNNING:  # assigned within the add
                self._assigned(active, job)
        self.report.total += len(batch)
        self._progress()

    def _candidates(self) -> Iterator[Line]:
        """The file's lines this runner may claim, in order."""
        while self.cursor < len(self.lines):
            line = self.lines[self.cursor]
            self.cursor += 1
            if self._claimable(line):
                yield line

    def unclaim(self, line: Line, state: str) -> None:
        """Give the line up: clear the mark, set its state, unlock (in that order)."""
        self.book.clear(line.offset)
        try:
            self.runmaker.compare_and_set(line.offset, "r", state, line.rest)
        finally:
            self.book.release(line.offset)

    # ---- following the jobs ----------------------------------------------------------------

    def follow(self, transitions: list[Transition]) -> None:
        assert self.service is not None
        jobs = self.service.reactor.jobs
        for entry in transitions:
            active = self.active.get(entry.job_id)
            if active is None:
                continue
            job = jobs.get(entry.job_id)
            if entry.to_state is JobState.RUNNING and job is not None:
                self._assigned(active, job)
            elif entry.to_state in FINAL_STATES:
                self._ended(entry.job_id, active, entry.to_state)
        self.wake.set()

    def _assigned(self, active: Active, job: Job) -> None:
        active.host = job.host or ""
        here = self.options.parallel > 0 and job.worker == LOCAL_WORKER  # not a far "local"
        if not here and self.guard is not None:
            active.remote = True
            self.guard.remote_started(job.id)
        if self.live is not None and not active.announced:
            self.live.executing(active.line.parsed.spec.cmd)
        active.announced = True

    def local_started(self, message: FromWorker) -> None:
        """The local worker's Started report: the job's process (its group) is known."""
        if not isinstance(message, Started):
            return
        for item in message.items:
            active = self.active.get(item.job_id)
            if active is None:
                continue
            active.pid = item.pid
            if self.guard is not None:
                self.guard.started(item.pid)
            self._show_start(active)

    def _ended(self, job_id: int, active: Active, state: JobState) -> None:
        assert self.service is not None
        del self.active[job_id]
        job = self.service.reactor.jobs.get(job_id)
        exit_code = job.exit_code if job is not None else None
        if state is JobState.DONE:
            char = "d"
        elif state is JobState.CANCELLED and self.report.interrupted:
            char = "."  # given back: the next runner takes it
        else:
            char = "!" if exit_code is not None else "e"
        self.unclaim(active.line, char)
        if self.guard is not None and active.pid:
            self.guard.ended(active.pid)
        if self.guard is not None and active.remote:
            self.guard.remote_ended(job_id)
        if job is not None:
            active.host = job.host or active.host
            active.pid = job.pid or active.pid
        if not active.forked and job is not None and job.started_at is not None:
            self._show_start(active)  # a remote worker's job: its pid comes with the end
        if char == "d":
            self.report.done += 1
            self.successes += 1
            if job is not None:
                self.slowest.saw(job.wall_seconds, job_id, active.line.parsed.line, job.cmd)
        elif char != ".":
            self.report.failed += 1
            if len(self.failures) < MAX_FAILURES_SHOWN:
                self.failures.append((job_id, active.line.parsed.line))
        self.recent_ends.append(time.monotonic())
        self._show_end(job_id, active, exit_code, job.fail_reason if job else None)
        self._progress()

    def _progress(self) -> None:
        if self.progress is not None:
            self.progress(self.report.done, self.report.failed, self.report.total)

    def _show_start(self, active: Active) -> None:
        if active.forked:
            return
        active.forked = True
        spec = active.line.parsed.spec
        if self.live is not None:
            if not active.announced:
                self.live.executing(spec.cmd)
                active.announced = True
            self.live.forked(spec.cmd, active.host, active.pid)
        if self.log is not None:
            self.log.started(active.line.number, spec.cmd, spec.cwd or "", active.host,
                             active.pid)

    def _show_end(self, job_id: int, active: Active, exit_code: int | None,
                  reason: str | None) -> None:
        if self.live is None and self.log is None:
            return
        assert self.service is not None
        stdout = captured_lines(self.service.store.output(job_id, "stdout"))
        stderr = captured_lines(self.service.store.output(job_id, "stderr"))
        exit_text = f"exit {exit_code}" if exit_code is not None else f"error {reason or ''}"
        cmd = active.line.parsed.spec.cmd
        if self.live is not None:
            self.live.finished(cmd, active.host, active.pid, exit_text.strip(), stdout, stderr)
        if self.log is not None:
            self.log.finished(active.line.number, cmd, active.host, active.pid,
                              exit_text.strip(), stdout, stderr)

    # ---- the run -----------------------------------------------------------------------------

    def finished(self) -> bool:
        """Nothing runs here and nothing is left to claim (after one more look at the file)."""
        if self.active:
            return False
        if self.options.one_only and self.successes >= self.options.parallel:
            return True
        if any(self._claimable(line) for line in self.lines[self.cursor:]):
            return False
        return not self.rescan()

    async def run(self, home: Path, base: Path | None = None) -> None:
        """Run the file's lines, keeping the history in `home`; named the last run of `base`
        (see shoal.run.state) once it has started."""
        config = ReactorConfig(lost_grace_seconds=0.0, restart_grace_seconds=0.0)
        if self.options.listen is not None:
            config = ReactorConfig(restart_grace_seconds=0.0)
        service = self.service = Service(Store(home / DATABASE_FILE), config)
        if self.options.listen is None:  # every worker is in this process
            service.serve_in_process(jobs_ahead=False)  # each job claimed in the file first
        await service.start()
        self._drop_leftovers()
        self.recover()
        if base is not None:  # `shoal logs`, `status` and `jobs` read this run from now on
            run_state.remember_last(base, home)
        self.report.state_dir = str(home)
        self.report.skipped_done = sum(1 for line in self.lines
                                       if line.parsed.state_char == "d")
        # A --listen worker cut off from this runner kills its jobs within the hold it was
        # told (half of it, by default): the guard keeps their lines that long.
        self.guard = Guard(self.book.fd, remote_hold_seconds=config.lease_timeout_seconds
                           + config.lost_grace_seconds)
        service.listeners.append(self.follow)
        started = self.began = time.monotonic()
        agent = None
        worker_id = None
        listener = None
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()

        def interrupt() -> None:
            interrupted.set()
            self.wake.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        try:
            if self.options.parallel > 0:
                from shoal.worker.agent import Agent, InProcessLink
                from shoal.worker.resources import machine_memory

                agent = Agent(LOCAL_WORKER, Resources(cores=self.options.parallel,
                                                      memory_bytes=machine_memory()),
                              private_directory(home / "spool"), host=socket.gethostname())
                worker_id = service.join(agent.register_message(), InProcessLink(agent))
                local_id = worker_id

                def report(message: FromWorker) -> None:
                    service.deliver(local_id, message)
                    self.local_started(message)

                agent.connected(report)
            if self.options.listen is not None:
                from shoal.runfile.listen import start_listening

                listener = await start_listening(service, home, self.options.listen)
            while not interrupted.is_set():
                self.refill()
                if self.finished():
                    break
                self.wake.clear()
                timeout = LISTEN_POLL_SECONDS if listener is not None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            if interrupted.is_set() and self.active:
                self.report.interrupted = True
                if agent is not None and worker_id is not None:
                    agent.begin_stop()
                    await agent.runner.shutdown(kill=True)
                    await asyncio.sleep(0.05)  # let the last reports reach the service
                    service.leave(worker_id)
                service.act("kill", list(self.active), None, reason="interrupted")
                await asyncio.sleep(0.05)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for active in list(self.active.values()):  # what did not end is given back,
                if not active.remote:  # but a far copy may still run: the guard keeps its line
                    self.unclaim(active.line, ".")
            self.active.clear()
            self.report.wall_seconds = time.monotonic() - started
            summarise(service, self.report, self.slowest, self.failures)
            if listener is not None:
                await listener.stop()
            await service.stop()
            self.file_report.elsewhere = self._running_elsewhere()

    def _drop_leftovers(self) -> None:
        """Jobs an earlier runner of this home left unfinished: the file decides, not them."""
        assert self.service is not None
        left = [job.id for job in self.service.reactor.jobs.values()
                if job.state not in FINAL_STATES]
        if left:
            self.service.act("kill", left, None,
                             reason="left by an earlier run; the file decides what runs")

    def _running_elsewhere(self) -> int:
        try:
            states = self.runmaker.states(line.offset for line in self.lines)
        except InputError:
            return 0
        return sum(1 for state in states if state in "r?")

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.book.close()
        self.runmaker.close()
        if self.log is not None:
            self.log.close()


def summarise(service: Service, report: RunReport, slowest: SlowestJobs,
              failures: Sequence[tuple[int, int]]) -> None:
    """A runmaker file's summary, as shoal.run.driver makes a lines file's: the slowest of the
    jobs that succeeded, and the first that failed (`failures`: (job id, line), as they
    ended), each with its line in the file."""
    report.slowest = slowest.entries()
    report.failures_more = max(0, report.failed - len(failures))
    jobs = {job.id: job for job in service.find(sorted(job_id for job_id, _ in failures))}
    for job_id, line in failures:
        job = jobs.get(job_id)
        if job is None:
            continue
        stderr = service.store.output(job.id, "stderr")
        report.failures.append(failure_entry(job.id, line, job.cmd, job.fail_reason,
                                             stderr.tail or stderr.head))


async def run_runmaker_file(path: Path, options: RunfileOptions, defaults: dict[str, object],
                            progress: Callable[[int, int, int], None] | None = None,
                            base_home: Path | None = None) -> tuple[RunReport, FileRunReport]:
    """Run the runmaker file at `path`; returns (RunReport, FileRunReport). Its state is kept
    under `base_home` (default: `.shoal` beside it, or $SHOAL_HOME; see take_runner_home)."""
    runner = FileRunner(path, options, defaults, progress)  # a refused -l makes no state
    try:
        base, home, home_fd = take_runner_home(path, base_home)
    except BaseException:
        runner.close()
        raise
    runner.file_report.home = home
    try:
        await runner.run(home, base)
    finally:
        runner.close()
        os.close(home_fd)
    return runner.report, runner.file_report

"""Run assigned commands: spawn them, reap them without threads, measure them, enforce limits.

Each command runs as ``bash -c CMD`` in a session of its own, so its process group id is its pid
and the whole job can be signalled at once. Its environment is the worker's (as it was when the
Runner was made) plus the assignment's, ``SHOAL_JOB_ID``, ``SHOAL_ATTEMPT_LEASE`` and
``SHOAL_GPUS`` (the GPU ids granted, comma-separated, empty if none). stdin is /dev/null; stdout
and stderr go to files in the spool directory (see ``capture``), so a running job costs the event
loop nothing.

GPUs: a job granted GPUs gets ``CUDA_VISIBLE_DEVICES`` set to exactly their ids. On a worker
that offers GPUs, a job granted none gets ``CUDA_VISIBLE_DEVICES=""``, so it cannot use a GPU
the scheduler has given to another job; either value overrides one in the job's own env. On a
worker that offers none, the variable is left as the worker and the job have it.

Reaping needs no thread per child: the loop watches a pidfd for each child and, once it becomes
readable, reaps the child with ``wait4`` for its status and rusage (CPU time and peak RSS, which
include the descendants the job reaped itself). Nothing else in the process may reap with
``waitpid(-1)``, or it would take these statuses.

When the leader exits, whatever is left of its process group is SIGKILLed, so background children
cannot outlive their job holding cores, memory or output files. This is done while the leader is
still an unreaped zombie, so the group id cannot have been reused by then. Processes that left
the group on purpose (``setsid``, ``setpgid``) are out of reach.

One loop timer serves all jobs: it samples the process trees of jobs older than 0.2 s (every
0.5 s, or every 0.1 s under a memory limit) and fires time limits and SIGKILL escalations. A short
job therefore costs a spawn and a reap, nothing more. With ``enforce_memory=False`` a job's memory
is only a figure for the scheduler: it is measured but never enforced, time limits still are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.core.protocol import (
    Assignment,
    AttemptResult,
    Outcome,
    RunningAttempt,
    StartedItem,
)
from shoal.worker.capture import collect_and_remove, open_spool_file, remove_quietly
from shoal.worker.keeper import Keeper
from shoal.worker.measure import ProcessTable

_log = logging.getLogger(__name__)

SAMPLE_AFTER_SECONDS = 0.2
SAMPLE_EVERY_SECONDS = 0.5
SAMPLE_EVERY_SECONDS_UNDER_MEMORY_LIMIT = 0.1
KILL_GRACE_SECONDS = 3.0
# The loop may fire a timer a hair early; treat anything due this soon as due now.
_TIMER_SLACK_SECONDS = 0.002


@dataclass(slots=True, eq=False)
class _Attempt:
    assignment: Assignment
    process: subprocess.Popen[bytes]
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
    stop_outcome: Outcome | None = None  # set when the runner itself ends the job
    stop_reason: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def next_event(self) -> float:
        return min(self.next_sample, self.time_limit_at or math.inf, self.sigkill_at or math.inf)


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
    ) -> None:
        self.host = host
        self._hide_unassigned_gpus = bool(offered_gpus)
        self._enforce_memory = enforce_memory
        self._spool_dir = Path(spool_dir)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._on_started = on_started
        self._on_finished = on_finished
        self._capture_bytes = capture_bytes
        self._bash = shutil.which("bash") or "/bin/bash"  # resolved once: one exec per spawn
        self._base_env = dict(os.environb)  # bytes, so Popen need not encode it for every job
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._attempts: dict[int, _Attempt] = {}  # by lease id
        self._busy_cores = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._drained: asyncio.Future[None] | None = None
        self._closing = False
        self._keeper = Keeper()

    # ---- public interface ----------------------------------------------------------------

    @property
    def busy_cores(self) -> int:
        return self._busy_cores

    def running(self) -> list[RunningAttempt]:
        return [
            RunningAttempt(
                job_id=attempt.assignment.job_id,
                lease_id=attempt.assignment.lease_id,
                pid=attempt.pid,
                started_at=attempt.started_at,
                gpus=list(attempt.assignment.gpus),
            )
            for attempt in self._attempts.values()
        ]

    def start(self, assignment: Assignment) -> None:
        """Spawn at once, then report `on_started`, or `on_finished` with a spawn error.

        Must be called from the thread running the event loop.
        """
        self._loop = asyncio.get_running_loop()
        if assignment.lease_id in self._attempts:
            _log.warning("lease %d is already running; assignment ignored", assignment.lease_id)
            return
        if self._closing:
            self._report_spawn_error(assignment, time.time(), "the worker is shutting down")
            return
        stdout_path = f"{self._spool_dir}/{assignment.lease_id}.stdout"
        stderr_path = f"{self._spool_dir}/{assignment.lease_id}.stderr"
        started_at, started_monotonic = time.time(), time.monotonic()
        try:
            process = self._spawn(assignment, stdout_path, stderr_path)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            remove_quietly(stdout_path)
            remove_quietly(stderr_path)
            self._report_spawn_error(assignment, started_at, _spawn_error_message(exc, assignment))
            return
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError as exc:  # e.g. out of descriptors: the child cannot be watched, end it
            _abandon(process)
            remove_quietly(stdout_path)
            remove_quietly(stderr_path)
            self._report_spawn_error(assignment, started_at, f"cannot watch process: {exc}")
            return

        self._keeper.track(process.pid)  # the job's group dies with this worker, however it dies
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
            time_limit_at=started_monotonic + limit if limit is not None else None,
        )
        self._attempts[assignment.lease_id] = attempt
        self._busy_cores += assignment.cores
        self._loop.add_reader(pidfd, self._on_exit, attempt)
        self._wake_at(attempt.next_event())
        self._on_started(
            StartedItem(
                job_id=assignment.job_id,
                lease_id=assignment.lease_id,
                pid=process.pid,
                started_at=started_at,
            )
        )

    def kill(self, job_id: int, lease_id: int, reason: str) -> bool:
        """SIGTERM the job's process group, SIGKILL it after a grace period.

        False if that attempt is not running here.
        """
        attempt = self._attempts.get(lease_id)
        if attempt is None or attempt.assignment.job_id != job_id:
            return False
        self._stop(attempt, "killed", reason)
        return True

    async def shutdown(self, *, kill: bool) -> None:
        """Wait until every job has finished and been reported, killing them first if asked."""
        self._closing = True
        if kill:
            for attempt in list(self._attempts.values()):
                self._stop(attempt, "killed", "the worker is shutting down")
        if self._attempts:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)  # several callers may wait on the same drain
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_due = None, math.inf
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        self._keeper.close()

    # ---- spawning ------------------------------------------------------------------------

    def _spawn(
        self, assignment: Assignment, stdout_path: str, stderr_path: str
    ) -> subprocess.Popen[bytes]:
        gpus = os.fsencode(",".join(assignment.gpus))
        env = {
            **self._base_env,
            **{os.fsencode(name): os.fsencode(value) for name, value in assignment.env.items()},
            b"SHOAL_JOB_ID": b"%d" % assignment.job_id,
            b"SHOAL_ATTEMPT_LEASE": b"%d" % assignment.lease_id,
            b"SHOAL_GPUS": gpus,
        }
        if assignment.gpus or self._hide_unassigned_gpus:
            env[b"CUDA_VISIBLE_DEVICES"] = gpus
        stdout_fd = open_spool_file(stdout_path)
        try:
            stderr_fd = open_spool_file(stderr_path)
            try:
                # The child gets its own copies of the descriptors; the parent's are not needed.
                return subprocess.Popen(
                    ["bash", "-c", assignment.cmd],
                    executable=self._bash,
                    stdin=self._devnull,
                    stdout=stdout_fd,
                    stderr=stderr_fd,
                    cwd=assignment.cwd or None,
                    env=env,
                    start_new_session=True,
                )
            finally:
                os.close(stderr_fd)
        finally:
            os.close(stdout_fd)

    def _report_spawn_error(self, assignment: Assignment, at: float, error: str) -> None:
        self._on_finished(
            AttemptResult(
                job_id=assignment.job_id,
                lease_id=assignment.lease_id,
                outcome="spawn_error",
                started_at=at,
                ended_at=at,
                wall_seconds=0.0,
                cpu_seconds=0.0,
                peak_rss_bytes=0,
                error=error,
            )
        )

    # ---- exit ----------------------------------------------------------------------------

    def _on_exit(self, attempt: _Attempt) -> None:
        """The pidfd is readable: the leader has exited and waits, a zombie, to be reaped."""
        _signal_group(attempt.pid, signal.SIGKILL)  # leftovers; the zombie keeps the group id ours
        try:
            pid, status, rusage = os.wait4(attempt.pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it: the status is lost
            pid, status, rusage = attempt.pid, None, None
        if pid == 0:  # not reapable yet after all; the reader fires again when it is
            return
        ended_at, ended_monotonic = time.time(), time.monotonic()
        assert self._loop is not None
        self._loop.remove_reader(attempt.pidfd)
        os.close(attempt.pidfd)
        del self._attempts[attempt.assignment.lease_id]
        self._keeper.untrack(attempt.pid)
        self._busy_cores -= attempt.assignment.cores

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
        result = AttemptResult(
            job_id=attempt.assignment.job_id,
            lease_id=attempt.assignment.lease_id,
            outcome=attempt.stop_outcome or "exited",
            exit_code=exit_code,
            signal=signal_number,
            pid=attempt.pid,
            started_at=attempt.started_at,
            ended_at=ended_at,
            wall_seconds=ended_monotonic - attempt.started_monotonic,
            cpu_seconds=rusage.ru_utime + rusage.ru_stime if rusage else 0.0,
            peak_rss_bytes=max(
                rusage.ru_maxrss * 1024 if rusage else 0, attempt.peak_tree_rss_bytes
            ),
            stdout=collect_and_remove(attempt.stdout_path, self._capture_bytes),
            stderr=collect_and_remove(attempt.stderr_path, self._capture_bytes),
            error=error,
        )
        try:
            self._on_finished(result)
        finally:
            if not self._attempts and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

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
                _signal_group(attempt.pid, signal.SIGKILL)
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
            _signal_group(attempt.pid, signal.SIGKILL)
            return
        _signal_group(attempt.pid, signal.SIGTERM)
        if attempt.sigkill_at is None:
            attempt.sigkill_at = time.monotonic() + KILL_GRACE_SECONDS
            self._wake_at(attempt.sigkill_at)


def _signal_group(pgid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal_number)


def _abandon(process: subprocess.Popen[bytes]) -> None:
    """Kill and reap a child that cannot be watched."""
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _spawn_error_message(exc: Exception, assignment: Assignment) -> str:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if assignment.cwd and exc.filename == assignment.cwd:
            return f"cwd {assignment.cwd}: {reason}"
        return f"{exc.filename}: {reason}" if exc.filename else reason
    return f"cannot start the command: {exc}"  # e.g. a NUL byte; never echoes env values

"""The keeper: kills a worker's jobs if the worker dies, or stops answering, without doing it.

Jobs run in their own sessions, so they outlive a worker killed with SIGKILL; the server would
then run them again elsewhere while the orphans go on. The same happens to a worker that is
stopped (SIGSTOP, a debugger, a swapped-out or wedged process) for longer than the server holds
its attempts: its jobs run on, unwatched, while their second copies start elsewhere.

The keeper is a small process in a session of its own (`shoal.worker.keeper_process`),
started once per worker. The worker writes to its stdin, one line each:

- ``P PARENT_DIR ...`` once, where the worker's job cgroups are made: every process in any
  cgroup below these directories belongs to a job;
- ``+PGID [CGROUP_DIR ...]`` when a job starts that is not wholly in such a cgroup (with the
  cgroup directories it has, if any);
- ``-PGID`` when it has been reaped;
- ``.`` as a heartbeat, from the worker's event loop, so only while that loop is running;
- ``T SECONDS`` to set the heartbeat timeout (0: none).

Lines written during one turn of the worker's event loop go in one write at its end: a write
wakes the keeper, and one wake per job start and end is most of what a short job costs. A job
in a cgroup is known to the keeper from the moment it exists, and costs it nothing. So is a
job the native launcher starts outside cgroups: its thread puts the job's pid in a table the
keeper reads only when it kills (`pid_table`, shared memory: no write, no wake), from its
start until just before it is reaped. Any other job is registered within the turn of the
loop that started it.

When the pipe closes (the worker is gone, however it went) the keeper kills every job still
registered and exits. When no heartbeat has come for the timeout, it kills them too but stays:
the worker, if it wakes up, reaps those jobs and reports them killed. The worker sets the
timeout to its server-lost timeout, which is shorter than the server's lease plus grace, so
a stopped worker's jobs are dead before the server gives them to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# The process is a module of its own that imports neither asyncio nor subprocess: it starts
# with every worker (and every `shoal run`), so its start-up is paid on the jobs' cores.
KEEPER_COMMAND = [sys.executable, "-m", "shoal.worker.keeper_process"]
# Entries of the launcher's pid table, one a slot (4 bytes each, in memory only once used):
# a launcher with more slots keeps the rest to the loop's lines.
PID_TABLE_SLOTS = 1 << 16
HEARTBEATS_PER_TIMEOUT = 4
MAX_HEARTBEAT_SECONDS = 1.0


class Keeper:
    """The worker's side: start the keeper lazily, tell it about each job, keep it assured."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._timeout: float | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._last_beat = 0.0
        self._stall_reported: float | None = None  # the last beat a stall was counted from
        self._on_stall: Callable[[float], None] | None = None
        self._unsent: list[bytes] = []
        self._closed = False
        self._parents_line = b""
        self._pids_fd: int | None = None

    def _pipe(self) -> int | None:
        if self._process is None:
            self._make_table()  # whether a launcher is made before or after: it can't wait
            table = () if self._pids_fd is None else (self._pids_fd,)
            try:
                self._process = subprocess.Popen(
                    [*KEEPER_COMMAND, *map(str, table)], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True, pass_fds=table)
            except OSError:
                return None  # without a keeper jobs still run; only this safety net is gone
            if self._parents_line and self._process.stdin is not None:
                with contextlib.suppress(OSError):
                    os.write(self._process.stdin.fileno(), self._parents_line)
            if self._timeout is not None:
                self._send(b"T %r\n" % self._timeout)
                self._schedule_beat()
        stdin = self._process.stdin
        return stdin.fileno() if stdin is not None else None

    def _send(self, line: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._unsent.append(line)
        if loop is None:
            self._flush()
        elif len(self._unsent) == 1:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        lines, self._unsent = self._unsent, []
        if self._closed:
            return
        fd = self._pipe() if lines else None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"".join(lines))

    def track(self, pgid: int, cgroup_dirs: Sequence[str] = ()) -> None:
        self._send(b" ".join([b"+%d" % pgid, *(os.fsencode(d) for d in cgroup_dirs)]) + b"\n")

    def track_parents(self, directories: Sequence[str]) -> None:
        """Every process in a cgroup below these directories is a job's; the keeper is told
        when it starts."""
        self._parents_line = b" ".join([b"P", *(os.fsencode(d) for d in directories)]) + b"\n"

    def covered(self) -> None:
        """A job the keeper finds without a line of its own has started (in a cgroup below
        the parents, or in the pid table), or soon will: make sure the keeper runs."""
        if self._process is None and not self._unsent:
            self._send(b"\n")  # an empty line: only starts the keeper

    def pid_table(self) -> tuple[int, int] | None:
        """A table for the native launcher to keep its running jobs' pids in, which the
        keeper (started at the end of this turn of the loop, as for a job's first line, if
        it is not running yet) reads when it kills: (its descriptor, entries), or None (no
        memfd on this system)."""
        if self._process is None and not self._closed:
            self._make_table()
            self.covered()
        return None if self._pids_fd is None else (self._pids_fd, PID_TABLE_SLOTS)

    def _make_table(self) -> None:
        if self._pids_fd is not None:
            return
        try:
            fd = os.memfd_create("shoal-keeper-pids")  # close-on-exec: no job inherits it
        except (OSError, AttributeError):
            return
        try:
            os.ftruncate(fd, PID_TABLE_SLOTS * 4)
        except OSError:
            os.close(fd)
            return
        self._pids_fd = fd

    def untrack(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def watch_stalls(self, timeout: float | None,
                     on_stall: Callable[[float], None] | None = None) -> None:
        """Have the keeper kill every job if this worker's event loop has not run for
        `timeout` seconds (None: never). Must be called from the thread running the loop.

        `on_stall(seconds)` is called when the loop finds it was not running for longer than
        that: the keeper will have killed the jobs."""
        self._timeout = timeout
        if on_stall is not None:
            self._on_stall = on_stall
        if self._process is not None:
            self._send(b"T %r\n" % (timeout or 0.0))
            self._schedule_beat()

    def _schedule_beat(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if not self._timeout:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._last_beat = time.monotonic()
        every = min(MAX_HEARTBEAT_SECONDS, self._timeout / HEARTBEATS_PER_TIMEOUT)
        self._beat = loop.call_later(every, self._heartbeat, loop, every)

    def _heartbeat(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        if self._process is None or self._timeout is None:
            self._beat = None
            return
        self._send(b".\n")
        self._beat = loop.call_later(every, self._heartbeat, loop, every)
        self.check_stall()
        self._last_beat = time.monotonic()

    def check_stall(self) -> None:
        """Call `on_stall`, once, if no heartbeat has gone out for longer than the timeout.
        The heartbeat's timer checks; so must what acts, first, on what may have happened
        during a stall: a loop stopped mid-turn rather than in its wait wakes to its jobs'
        exits before its timers, and must take those for the keeper's kills."""
        if self._beat is None or self._timeout is None or self._on_stall is None:
            return
        gap = time.monotonic() - self._last_beat
        if gap > self._timeout and self._stall_reported != self._last_beat:
            self._stall_reported = self._last_beat
            self._on_stall(gap)

    def close(self) -> None:
        """Normal end: every job was reaped, so the keeper has nothing left to kill."""
        self._closed = True
        self._unsent.clear()
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()
            self._process.wait()
            self._process = None
        if self._pids_fd is not None:
            os.close(self._pids_fd)
            self._pids_fd = None

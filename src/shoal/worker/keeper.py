"""The keeper: kills a worker's jobs if the worker dies without doing it.

Jobs run in their own sessions, so they outlive a worker killed with SIGKILL; the server would
then run them again elsewhere while the orphans go on. The keeper is a small process in a
session of its own, started once per worker. The worker writes `+PGID` when a job starts and
`-PGID` when it has been reaped; when the pipe closes (the worker is gone, however it went),
the keeper kills every group still registered and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


class Keeper:
    """The worker's side: start the keeper lazily, tell it about each job's process group."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def _pipe(self) -> int | None:
        if self._process is None:
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "shoal.worker.keeper"], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
            except OSError:
                return None  # without a keeper jobs still run; only this safety net is gone
        stdin = self._process.stdin
        return stdin.fileno() if stdin is not None else None

    def _send(self, line: bytes) -> None:
        fd = self._pipe()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, line)

    def track(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def untrack(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """Normal end: every job was reaped, so the keeper has nothing left to kill."""
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()
            self._process.wait()
            self._process = None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is not for us
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()

"""The claims guard: keeps a runner's line locks until the runner and its jobs are all gone.

A runner's claims are locks on its open description of the claims file (see claims.py). The
guard is a small process, in a session of its own, that inherits that description, so the locks
outlive a runner killed with SIGKILL for as long as the jobs it started may still run (its
worker's keeper kills them then). The runner writes to the guard's stdin, one line each:

- ``+PGID`` when a job starts here, ``-PGID`` when it has ended;
- ``+jID`` when job ID starts on a worker on another host (``--listen``), ``-jID`` when it
  has ended.

The guard reads them only a few times a second (a pipe holds thousands), so a runner of short
jobs does not wake it for each. When stdin closes, the runner is gone: the guard waits until
every process group still listed has no process left and, if jobs on other hosts were still
listed, until those hosts' workers have killed them (the hold the runner gave them, its first
argument after the descriptor), then exits, and the locks go with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

READ_EVERY_SECONDS = 0.25


class Guard:
    """The runner's side: start the guard with the claims description, tell it about jobs."""

    def __init__(self, claims_fd: int, remote_hold_seconds: float = 0.0):
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "shoal.runfile.guard", str(claims_fd),
                 str(remote_hold_seconds)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, pass_fds=(claims_fd,))
        except OSError:
            self._process = None  # the locks then last as long as the runner only

    def _say(self, text: str) -> None:
        if self._process is None or self._process.stdin is None:
            return
        try:
            os.write(self._process.stdin.fileno(), text.encode() + b"\n")  # one write, unbuffered
        except (BrokenPipeError, ValueError):
            self._process = None

    def started(self, pgid: int) -> None:
        self._say(f"+{pgid}")

    def ended(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    def remote_started(self, job_id: int) -> None:
        self._say(f"+j{job_id}")

    def remote_ended(self, job_id: int) -> None:
        self._say(f"-j{job_id}")

    def close(self) -> None:
        if self._process is not None:
            process, self._process = self._process, None
            with contextlib.suppress(OSError, ValueError):
                if process.stdin is not None:
                    process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    held_fd = int(argv[1])  # kept open until the end: the claims' locks live on it
    remote_hold = float(argv[2]) if len(argv) > 2 else 0.0
    groups: set[int] = set()
    remote: set[int] = set()
    pending = b""
    while True:
        time.sleep(READ_EVERY_SECONDS)
        chunk = os.read(0, 1 << 20)  # blocks only when nothing is there: then it is the end
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            text = raw.strip().decode("ascii", "replace")
            listed, number = (remote, text[2:]) if text[1:2] == "j" else (groups, text[1:])
            if text[:1] in ("+", "-") and number.isdigit():
                (listed.add if text[0] == "+" else listed.discard)(int(number))
    hold_until = time.monotonic() + remote_hold if remote else 0.0
    while time.monotonic() < hold_until:
        time.sleep(min(1.0, max(0.0, hold_until - time.monotonic())))
    while groups:
        groups = {pgid for pgid in groups if _alive(pgid)}
        if groups:
            time.sleep(0.05)
    os.close(held_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The keeper's process: reads the worker's lines (see `shoal.worker.keeper`) and kills the
jobs still registered when the pipe closes, or when no heartbeat came for the timeout: those
of its lines, and those in the native launcher's pid table (the descriptor in its argument).

Standard library and `kill_cgroup` only, so that it starts in a few milliseconds.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import sys
import time

from shoal.worker.cgroups import kill_cgroup


def _table(fd: int | None) -> list[int]:
    """The process groups in the launcher's table now."""
    if fd is None:
        return []
    try:
        entries = array.array("i", os.pread(fd, os.fstat(fd).st_size, 0))
    except OSError:
        return []
    return [pid for pid in entries if pid > 0]


def _kill(jobs: dict[int, list[str]], parents: list[str], table: int | None) -> None:
    for pgid in _table(table):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for pgid, cgroup_dirs in jobs.items():
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        if cgroup_dirs:
            kill_cgroup(cgroup_dirs)
    for parent in parents:
        try:
            children = [entry.path for entry in os.scandir(parent) if entry.is_dir()]
        except OSError:
            continue
        for child in children:
            kill_cgroup([child])


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is not for us
    jobs: dict[int, list[str]] = {}  # process group -> the job's cgroup directories
    parents: list[str] = []  # the job cgroups' parents
    timeout: float | None = None
    last_heard = time.monotonic()
    pending = b""
    fd = sys.stdin.fileno()
    table = int(sys.argv[1]) if len(sys.argv) > 1 else None
    while True:
        wait = None if timeout is None else max(0.0, last_heard + timeout - time.monotonic())
        readable, _, _ = select.select([fd], [], [], wait)
        if not readable:  # the worker's loop has not run for the timeout: it is stopped
            _kill(jobs, parents, table)
            jobs.clear()
            last_heard = time.monotonic()
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        last_heard = time.monotonic()
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            words = line.split()
            if not words:
                continue
            head = words[0]
            if head[:1] == b"+":
                jobs[int(head[1:])] = [os.fsdecode(word) for word in words[1:]]
            elif head[:1] == b"-":
                jobs.pop(int(head[1:]), None)
            elif head == b"T" and len(words) == 2:
                timeout = float(words[1]) or None
            elif head == b"P":
                parents = [os.fsdecode(word) for word in words[1:]]
    _kill(jobs, parents, table)


if __name__ == "__main__":
    main()

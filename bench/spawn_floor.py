"""The floor for a Python runner: `bash -c 'true I'` for I = 1..N, P at a time, started by
an asyncio loop as shoal's worker starts and reaps a job (os.posix_spawn in a session of its
own; a pidfd watched by the loop, then wait4), with nothing recorded, captured or shown.

bench/throughput.py times it beside xargs and shoal: what shoal does beyond this (its
database, the jobs' output, cgroups, the summary) is the difference between the two rows;
what a Python event loop pays for starting processes is this row's gap to xargs.

    python bench/spawn_floor.py N P [WORK_US]

WORK_US (default 0): CPU microseconds the loop spends on each job once it has ended and the
next has started, as a runner's bookkeeping would. bench/budget.py uses it to find how much
per-job work a ratio to xargs allows.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time


async def run(jobs: int, parallel: int, work_seconds: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    environment = dict(os.environ)
    finished = loop.create_future()
    started = ended = 0

    def start() -> None:
        nonlocal started
        started += 1
        pid = os.posix_spawn("/bin/bash", ["bash", "-c", f"true {started}"], environment,
                             setsid=True)
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, on_exit, pid, pidfd)

    def on_exit(pid: int, pidfd: int) -> None:
        nonlocal ended
        loop.remove_reader(pidfd)
        os.close(pidfd)
        os.wait4(pid, 0)
        ended += 1
        if started < jobs:
            start()
        elif ended == jobs:
            finished.set_result(None)
        if work_seconds:
            spend(work_seconds)

    for _ in range(min(parallel, jobs)):
        start()
    if jobs:
        await finished


def spend(seconds: float) -> None:
    """Use this much of the thread's CPU time (not wall time: a preempted loop still pays)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


if __name__ == "__main__":
    work_us = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    asyncio.run(run(int(sys.argv[1]), int(sys.argv[2]), work_us / 1e6))

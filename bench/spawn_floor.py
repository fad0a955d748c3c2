"""The floor for a Python runner: `bash -c 'true I'` for I = 1..N, P at a time, started by
an asyncio loop as shoal's worker starts and reaps a job (os.posix_spawn in a session of its
own; a pidfd watched by the loop, then wait4), with nothing recorded, captured or shown.

bench/throughput.py times it beside xargs and shoal: what shoal does beyond this (its
database, the jobs' output, cgroups, the summary) is the difference between the two rows;
what a Python event loop pays for starting processes is this row's gap to xargs.

    python bench/spawn_floor.py N P [WORK_US] [--helpers | --launcher]

WORK_US (default 0): CPU microseconds the loop spends on each job once it has ended and the
next has started, as a runner's bookkeeping would. bench/budget.py uses it to find how much
per-job work a ratio to xargs allows.

--helpers: the loop spawns nothing itself. Each of P helper processes (this script, run as
`spawn_floor.py --slot`) starts and reaps one job at a time from the numbers sent down its
stdin, two ahead, and writes back each that ended; the loop reads those, spends WORK_US on
each and sends the next number. This is a runner whose spawns are off the loop (a spawner
process of its own per slot): the helper is the job's parent, woken where the job ends, and
the next job is already waiting in its pipe.

--launcher: the spawns in shoal's native launcher (src/shoal/worker/launcher.py), as
`shoal run` starts its jobs: each slot's next jobs queued ahead (the runner's
QUEUED_PER_SLOT), started by the launcher's thread the moment the one before ends; the loop,
woken as the runner's is (NOTIFY_BELOW, NOTIFY_DELAY_SECONDS), reads the launcher's events,
spends WORK_US on each job that ended and queues the slot's next.
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


async def run_with_helpers(jobs: int, parallel: int, work_seconds: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    sent = ended = 0

    def send(helper: asyncio.subprocess.Process, count: int) -> None:
        nonlocal sent
        numbers = range(sent + 1, min(jobs, sent + count) + 1)
        sent += len(numbers)
        if numbers:
            assert helper.stdin is not None
            helper.stdin.write(b"".join(b"%d\n" % number for number in numbers))

    def on_ended(helper: asyncio.subprocess.Process, lines: int) -> None:
        nonlocal ended
        for _ in range(lines):
            ended += 1
            send(helper, 1)
            if work_seconds:
                spend(work_seconds)
        if ended == jobs and not finished.done():
            finished.set_result(None)

    async def follow(helper: asyncio.subprocess.Process) -> None:
        assert helper.stdout is not None
        while chunk := await helper.stdout.read(65536):
            on_ended(helper, chunk.count(b"\n"))

    helpers = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--slot", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE) for _ in range(min(parallel, jobs))]
    followers = [asyncio.ensure_future(follow(helper)) for helper in helpers]
    for helper in helpers:
        send(helper, 2)
    if jobs:
        await finished
    for helper in helpers:
        assert helper.stdin is not None
        helper.stdin.close()
        await helper.wait()
    await asyncio.gather(*followers)


async def run_with_launcher(jobs: int, parallel: int, work_seconds: float = 0.0) -> None:
    from shoal.worker.launcher import make_launcher, read_events
    from shoal.worker.runner import NOTIFY_BELOW, NOTIFY_DELAY_SECONDS, QUEUED_PER_SLOT

    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    launcher = make_launcher(notify_below=NOTIFY_BELOW, notify_delay=NOTIFY_DELAY_SECONDS)
    environment = [name + b"=" + value for name, value in os.environb.items()]
    queued = ended = 0
    slot_of: dict[int, int] = {}

    def queue(slot: int) -> None:
        nonlocal queued
        if queued == jobs:
            return
        queued += 1
        slot_of[queued] = slot
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        launcher.queue(slot, queued, b"/bin/bash", [b"bash", b"-c", b"true %d" % queued],
                       environment, (null, os.dup(null), os.dup(null)), [])

    def on_events() -> None:
        nonlocal ended
        for event in read_events(launcher):
            if event.kind == "s":
                queue(slot_of[event.token])  # one more behind the one started
            elif event.kind == "e":
                ended += 1
                if work_seconds:
                    spend(work_seconds)
        if ended == jobs and not finished.done():
            finished.set_result(None)

    loop.add_reader(launcher.fileno(), on_events)
    for slot in range(1, min(parallel, jobs) + 1):
        for _ in range(QUEUED_PER_SLOT + 1):  # the running one and those queued behind it
            queue(slot)
    if jobs:
        await finished
    loop.remove_reader(launcher.fileno())
    launcher.close()


def slot() -> None:
    """A helper: one job at a time, from the numbers on stdin; a line out for each ended."""
    environment = dict(os.environ)
    for line in sys.stdin.buffer:
        pid = os.posix_spawn("/bin/bash", [b"bash", b"-c", b"true " + line.strip()],
                             environment, setsid=True)
        os.wait4(pid, 0)
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()


def spend(seconds: float) -> None:
    """Use this much of the thread's CPU time (not wall time: a preempted loop still pays)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


if __name__ == "__main__":
    if sys.argv[1:] == ["--slot"]:
        slot()
        sys.exit(0)
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    work_us = float(args[2]) if len(args) > 2 else 0.0
    runner = run_with_helpers if "--helpers" in sys.argv else \
        run_with_launcher if "--launcher" in sys.argv else run
    asyncio.run(runner(int(args[0]), int(args[1]), work_us / 1e6))

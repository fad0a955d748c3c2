"""The keeper process: it kills the jobs it was told about when the worker's pipe closes, and
when the worker stops sending heartbeats for the timeout, but not while they come."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

KEEPER = [sys.executable, "-m", "shoal.worker.keeper"]


def start_job() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


def dead(job: subprocess.Popen[bytes], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if job.poll() is not None:
            return True
        time.sleep(0.02)
    return False


def test_no_heartbeat_for_the_timeout_kills_the_jobs_and_the_keeper_stays() -> None:
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    job, later = start_job(), start_job()
    assert keeper.stdin is not None
    try:
        keeper.stdin.write(b"T 0.5\n+%d\n" % job.pid)
        keeper.stdin.flush()
        began = time.monotonic()
        assert dead(job, within=3.0)
        assert job.returncode == -9
        assert time.monotonic() - began >= 0.45
        assert keeper.poll() is None  # still there for a worker that wakes up
        # A worker that woke up goes on: its new jobs are watched as before.
        keeper.stdin.write(b"+%d\n" % later.pid)
        keeper.stdin.flush()
        keeper.stdin.close()
        assert dead(later, within=3.0)
        keeper.wait(timeout=3)
    finally:
        for process in (job, later, keeper):
            process.kill()
            process.wait()


def test_heartbeats_keep_the_jobs_alive() -> None:
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    job = start_job()
    assert keeper.stdin is not None
    try:
        keeper.stdin.write(b"T 0.4\n+%d\n" % job.pid)
        keeper.stdin.flush()
        for _ in range(12):  # 1.2 s, three times the timeout
            time.sleep(0.1)
            keeper.stdin.write(b".\n")
            keeper.stdin.flush()
        assert job.poll() is None
        keeper.stdin.write(b"-%d\n" % job.pid)  # reaped by the worker: not the keeper's any more
        keeper.stdin.close()
        keeper.wait(timeout=3)
        assert job.poll() is None
    finally:
        job.kill()
        job.wait()
        keeper.kill()
        keeper.wait()


def test_without_a_timeout_only_a_closed_pipe_kills() -> None:
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    job = start_job()
    assert keeper.stdin is not None
    try:
        keeper.stdin.write(b"+%d\n" % job.pid)
        keeper.stdin.flush()
        time.sleep(0.5)
        assert job.poll() is None
        keeper.stdin.close()
        assert dead(job, within=3.0)
    finally:
        job.kill()
        job.wait()
        keeper.kill()
        keeper.wait()


def test_the_keeper_kills_what_left_the_group_through_the_jobs_cgroup() -> None:
    """With a cgroup directory on the job's line, a child that called setsid dies too."""
    from shoal.worker.cgroups import Containment

    containment = Containment.detect("shoal-test-keeper-")
    if containment is None:
        import pytest

        pytest.skip("no cgroups to put a job in")
    cgroup = containment.create("job-1")
    assert cgroup is not None
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    assert keeper.stdin is not None
    with cgroup.spawning(containment.home):
        job = subprocess.Popen(["bash", "-c", "setsid sleep 30 & wait"], start_new_session=True)
    cgroup.adopt(job.pid)
    try:
        time.sleep(0.2)
        pids = cgroup.pids()
        assert len(pids) == 2
        escaped = [pid for pid in pids if os.getpgid(pid) != job.pid]
        assert len(escaped) == 1
        line = b" ".join([b"+%d" % job.pid, *(os.fsencode(d) for d in cgroup.directories)])
        keeper.stdin.write(line + b"\n")
        keeper.stdin.close()
        keeper.wait(timeout=3)
        assert dead(job, within=3.0)
        deadline = time.monotonic() + 3
        while psutil.pid_exists(escaped[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not psutil.pid_exists(escaped[0]) \
            or psutil.Process(escaped[0]).status() == psutil.STATUS_ZOMBIE
    finally:
        job.kill()
        job.wait()
        keeper.kill()
        keeper.wait()
        containment.close()


def test_the_keeper_kills_every_job_cgroup_below_the_parents_it_was_given() -> None:
    """Jobs born in a cgroup under the worker's parents need no line of their own."""
    from shoal.worker.cgroups import Containment

    containment = Containment.detect("shoal-test-keeper-")
    if containment is None:
        import pytest

        pytest.skip("no cgroups to put a job in")
    cgroup = containment.create("job-1")
    assert cgroup is not None
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    assert keeper.stdin is not None
    with cgroup.spawning(containment.home):
        job = subprocess.Popen(["bash", "-c", "setsid sleep 30 & wait"], start_new_session=True)
    cgroup.adopt(job.pid)
    try:
        time.sleep(0.2)
        pids = cgroup.pids()
        assert len(pids) == 2
        parents = [str(parent) for parent in containment.parents.values()]
        keeper.stdin.write(b" ".join([b"P", *(os.fsencode(p) for p in parents)]) + b"\n")
        keeper.stdin.close()
        keeper.wait(timeout=3)
        assert dead(job, within=3.0)
        deadline = time.monotonic() + 3
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                  != psutil.STATUS_ZOMBIE for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                       != psutil.STATUS_ZOMBIE for pid in pids)
    finally:
        job.kill()
        job.wait()
        keeper.kill()
        keeper.wait()
        containment.close()

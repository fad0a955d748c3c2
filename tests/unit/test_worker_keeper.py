"""The keeper process: it kills the jobs it was told about when the worker's pipe closes, and
when the worker stops sending heartbeats for the timeout, but not while they come."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from shoal.worker.cgroups import Containment, JobCgroup
from shoal.worker.keeper import PID_TABLE_SLOTS, Keeper
from tests.system import require

KEEPER = [sys.executable, "-m", "shoal.worker.keeper_process"]


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


def test_the_keeper_kills_the_jobs_in_the_launchers_pid_table() -> None:
    """The native launcher keeps the pid of each job it runs outside cgroups in a table the
    keeper reads when it kills: on a stall, and when the worker is gone. A pid taken out (the
    job was reaped) is left alone."""
    table = os.memfd_create("test-pids")
    os.ftruncate(table, 4 * 4)
    job, later, reaped = start_job(), start_job(), start_job()
    keeper = subprocess.Popen([*KEEPER, str(table)], stdin=subprocess.PIPE, pass_fds=[table])
    assert keeper.stdin is not None
    try:
        os.pwrite(table, struct.pack("4i", 0, job.pid, 0, reaped.pid), 0)
        os.pwrite(table, struct.pack("i", 0), 12)  # out of the table before it is reaped
        keeper.stdin.write(b"T 0.4\n")
        keeper.stdin.flush()
        assert dead(job, within=3.0)  # no heartbeat came
        os.pwrite(table, struct.pack("i", later.pid), 8)
        keeper.stdin.close()  # the worker is gone
        assert dead(later, within=3.0)
        assert reaped.poll() is None
    finally:
        for process in (job, later, reaped, keeper):
            process.kill()
            process.wait()
        os.close(table)


def test_a_keeper_started_before_any_launcher_has_the_pid_table_all_the_same() -> None:
    """The keeper may start for a job the loop spawned itself (a staged one, say) before
    the launcher exists: it is given the table at its start, and the launcher made later
    shares it."""
    keeper, job = Keeper(), start_job()
    try:
        keeper.track(job.pid)  # outside a loop: sent, and the keeper started, at once
        assert keeper._process is not None
        table = keeper.pid_table()
        assert table is not None and table[1] == PID_TABLE_SLOTS
        assert str(table[0]) in keeper._process.args  # type: ignore[operator]
    finally:
        keeper.close()
        job.kill()
        job.wait()


@dataclass
class CgroupJob:
    """A job in a cgroup of its own that has put a child out of its process group (setsid),
    and a keeper not yet told anything."""

    containment: Containment
    cgroup: JobCgroup
    job: subprocess.Popen[bytes]
    keeper: subprocess.Popen[bytes]
    pids: list[int]

    def tell_keeper(self, line: bytes) -> None:
        assert self.keeper.stdin is not None
        self.keeper.stdin.write(line + b"\n")
        self.keeper.stdin.close()  # as when its worker dies
        self.keeper.wait(timeout=3)

    def all_dead(self, within: float = 3.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                       != psutil.STATUS_ZOMBIE for pid in self.pids):
                return True
            time.sleep(0.02)
        return False


@pytest.fixture
def cgroup_job() -> Iterator[CgroupJob]:
    containment = Containment.detect("shoal-test-keeper-")
    require(containment is not None, "cgroups to put a job in")
    assert containment is not None
    cgroup = containment.create("job-1")
    assert cgroup is not None
    keeper = subprocess.Popen(KEEPER, stdin=subprocess.PIPE)
    with containment.spawning(cgroup):
        job = subprocess.Popen(["bash", "-c", "setsid sleep 30 & wait"], start_new_session=True)
    cgroup.adopt(job.pid)
    try:
        time.sleep(0.2)
        pids = cgroup.pids()
        assert len(pids) == 2
        assert len([pid for pid in pids if os.getpgid(pid) != job.pid]) == 1  # one escaped
        yield CgroupJob(containment, cgroup, job, keeper, pids)
    finally:
        job.kill()
        job.wait()
        keeper.kill()
        keeper.wait()
        containment.close()


def test_the_keeper_kills_what_left_the_group_through_the_jobs_cgroup(
        cgroup_job: CgroupJob) -> None:
    """With a cgroup directory on the job's line, a child that called setsid dies too."""
    cgroup_job.tell_keeper(b" ".join([b"+%d" % cgroup_job.job.pid, *(
        os.fsencode(d) for d in cgroup_job.cgroup.directories)]))
    assert dead(cgroup_job.job, within=3.0)
    assert cgroup_job.all_dead()


def test_the_keeper_kills_every_job_cgroup_below_the_parents_it_was_given(
        cgroup_job: CgroupJob) -> None:
    """Jobs born in a cgroup under the worker's parents need no line of their own."""
    parents = [str(parent) for parent in cgroup_job.containment.parents.values()]
    cgroup_job.tell_keeper(b" ".join([b"P", *(os.fsencode(p) for p in parents)]))
    assert dead(cgroup_job.job, within=3.0)
    assert cgroup_job.all_dead()

"""A job the native launcher starts is known to the keeper from its start, not from when the
worker's loop reads that start: a worker killed in between (its loop busy, or within the
launcher's notify delay) leaves no job behind, with or without cgroups."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal.worker import launcher as launcher_module
from shoal.worker.launcher import make_launcher
from tests.integration.test_launcher import collect
from tests.system import require

# The first job runs 0.3 s; the second, queued behind it in the launcher, starts the moment
# it ends. The loop is held from 0.1 s on (no take-back, no events read), until the second
# job has written its pid: then the worker dies.
WORKER = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    from pathlib import Path
    from shoal.core.protocol import Assignment
    from shoal.worker.runner import Runner

    spool, pid_file, contain = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "yes"

    def job(lease_id, cmd):
        return Assignment(job_id=lease_id, lease_id=lease_id, cmd=cmd, cwd="", env={},
                          cores=1, memory_bytes=0, gpus=[], time_limit_seconds=None)

    async def main():
        runner = Runner(spool, host="h", on_started=lambda _: None,
                        on_finished=lambda _: None, contain=contain)
        runner.max_running_cores = 1
        runner.start(job(1, "sleep 0.3"))
        runner.start(job(2, f"echo $$ > {pid_file}.new; mv {pid_file}.new {pid_file}; "
                            "exec sleep 60"))
        await asyncio.sleep(0.1)
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper that may never come here."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("contain", ["no", "yes"])
def test_a_job_started_while_the_loop_is_held_dies_with_its_worker(
        tmp_path: Path, contain: str) -> None:
    require(launcher_module._Native is not None, "the compiled native launcher")
    pid_file = tmp_path / "pid"
    worker = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "spool"),
                             str(pid_file), contain], timeout=60,
                            env={name: value for name, value in os.environ.items()
                                 if name != launcher_module.LAUNCHER_VARIABLE})
    assert worker.returncode == -signal.SIGKILL
    pid = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(pid), "the job outlived its worker"
    finally:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_a_jobs_pid_is_in_the_table_from_its_start_until_it_is_reaped() -> None:
    """At its slot's index; a job its cgroups contain (it entered as many as `contained_at`)
    is never there: the keeper finds it through its cgroup."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    table = os.memfd_create("test-pids")
    os.ftruncate(table, 4 * 4)
    launcher = make_launcher()
    try:
        launcher.share_pids(table, 4)
        for slot, contained_at in ((1, 1), (2, 0)):
            launcher.queue(slot, slot, b"/bin/bash", [b"bash", b"-c", b"sleep 0.5"], [],
                           job_fds(), [], contained_at=contained_at)
        starts = {e.token: e.pid for e in collect(launcher, 2) if e.kind == "s"}
        assert struct.unpack("4i", os.pread(table, 16, 0)) == (0, starts[1], 0, 0)
        assert {e.token for e in collect(launcher, 2) if e.kind == "e"} == {1, 2}
        assert struct.unpack("4i", os.pread(table, 16, 0)) == (0, 0, 0, 0)
    finally:
        launcher.close()
        os.close(table)


def job_fds() -> tuple[int, int, int]:
    return tuple(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # type: ignore[return-value]
                 for _ in range(3))

"""The runner against real processes: exit status, output, environment, kills, limits, measures."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from shoal.core.protocol import Assignment, AttemptResult, StartedItem
from shoal.worker.resources import detect_resources
from shoal.worker.runner import Runner

PYTHON = sys.executable
MB = 1024 * 1024

During = Callable[[Runner], Awaitable[None]]


def job(
    cmd: str,
    *,
    lease_id: int = 1,
    cwd: Path | str = "/",
    env: dict[str, str] | None = None,
    cores: int = 1,
    memory_bytes: int = 0,
    gpus: list[str] | None = None,
    time_limit_seconds: float | None = None,
) -> Assignment:
    return Assignment(
        job_id=1000 + lease_id,
        lease_id=lease_id,
        cmd=cmd,
        cwd=str(cwd),
        env=env or {},
        cores=cores,
        memory_bytes=memory_bytes,
        gpus=gpus or [],
        time_limit_seconds=time_limit_seconds,
    )


def run(
    spool: Path,
    *assignments: Assignment,
    during: During | None = None,
    capture_bytes: int = 64 * 1024,
    offered_gpus: list[str] | None = None,
    enforce_memory: bool = True,
    parallel: int | None = None,
) -> tuple[list[StartedItem], dict[int, AttemptResult]]:
    """Start the assignments, run `during` alongside, and wait for every job to finish.
    `parallel`: the runner runs that many cores' worth at once, the rest wait in it."""
    started: list[StartedItem] = []
    finished: dict[int, AttemptResult] = {}

    async def main() -> None:
        runner = Runner(
            spool,
            host="test-host",
            on_started=started.append,
            on_finished=lambda result: finished.__setitem__(result.lease_id, result),
            capture_bytes=capture_bytes,
            offered_gpus=offered_gpus or [],
            enforce_memory=enforce_memory,
        )
        runner.max_running_cores = parallel
        for assignment in assignments:
            runner.start(assignment)
        if during is not None:
            await during(runner)
        await runner.shutdown(kill=False)

    asyncio.run(main())
    assert set(finished) == {a.lease_id for a in assignments}
    return started, finished


def python_cmd(code: str) -> str:
    return f"{PYTHON} -c '{code}'"


def group_has_live_process(pgid: int) -> bool:
    """Whether any process of the group is still alive.

    Zombies do not count: where init does not reap orphans they linger, holding nothing.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def wait_until_group_gone(pgid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while group_has_live_process(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_exit_codes_and_signals(tmp_path: Path) -> None:
    started, results = run(
        tmp_path,
        job("true", lease_id=1),
        job("exit 3", lease_id=2),
        job("kill -KILL $$", lease_id=3),
    )
    assert [r.exit_code for r in (results[1], results[2], results[3])] == [0, 3, 128 + 9]
    assert [r.signal for r in (results[1], results[2], results[3])] == [None, None, 9]
    assert {r.outcome for r in results.values()} == {"exited"}
    assert {item.lease_id for item in started} == {1, 2, 3}
    for item in started:
        result = results[item.lease_id]
        assert result.pid == item.pid
        assert result.job_id == item.job_id == 1000 + item.lease_id
        assert result.started_at <= result.ended_at
        assert result.wall_seconds >= 0
    assert list(tmp_path.iterdir()) == []  # spool files are deleted


def test_output_keeps_head_tail_and_size(tmp_path: Path) -> None:
    body = 'sys.stdout.write("A" * 1000 + "x" * (2**20 - 2000) + "Z" * 1000)'
    _, results = run(
        tmp_path,
        job(python_cmd(f'import sys; {body}; sys.stderr.write("oops\\n")'), lease_id=1),
        job("printf 'h\\xe9llo'", lease_id=2),
        job("true", lease_id=3),
    )
    big = results[1]
    assert big.stdout.total_bytes == MB
    assert len(big.stdout.head) == len(big.stdout.tail) == 64 * 1024
    assert big.stdout.head.startswith("A" * 1000 + "x")
    assert big.stdout.tail.endswith("x" + "Z" * 1000)
    assert (big.stderr.head, big.stderr.tail, big.stderr.total_bytes) == ("oops\n", "", 5)
    assert results[2].stdout.head == "h\ufffdllo"  # invalid UTF-8 is replaced, not fatal
    assert results[3].stdout.total_bytes == results[3].stderr.total_bytes == 0


def test_capture_bytes_is_respected(tmp_path: Path) -> None:
    _, results = run(tmp_path, job("printf 0123456789", lease_id=1), capture_bytes=4)
    assert (results[1].stdout.head, results[1].stdout.tail) == ("0123", "6789")
    assert results[1].stdout.total_bytes == 10


def test_env_and_cwd_are_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("SHOAL_TEST_INHERITED", "from-worker")
    cmd = 'pwd; echo "$GREETING"; echo "$SHOAL_JOB_ID $SHOAL_ATTEMPT_LEASE $SHOAL_TEST_INHERITED"'
    _, results = run(
        tmp_path / "spool", job(cmd, lease_id=7, cwd=workdir, env={"GREETING": "hi there"})
    )
    assert results[7].stdout.head == f"{workdir}\nhi there\n1007 7 from-worker\n"


def test_a_job_in_the_workers_own_directory_gets_sigpipe_back(tmp_path: Path) -> None:
    """Such a job is started by posix_spawn, not Popen; Python's ignored SIGPIPE must not
    reach it, or `yes` would end on a write error instead of the signal."""
    cmd = "yes | head -1 > /dev/null; echo ${PIPESTATUS[0]}"
    _, results = run(tmp_path, job(cmd, lease_id=1, cwd=os.getcwd()))
    assert results[1].stdout.head == "141\n"


def test_stdin_is_empty(tmp_path: Path) -> None:
    _, results = run(tmp_path, job("wc -c", lease_id=1))
    assert results[1].stdout.head.strip() == "0"


def test_missing_cwd_is_a_spawn_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    started, results = run(tmp_path / "spool", job("true", lease_id=1, cwd=missing))
    result = results[1]
    assert started == []
    assert result.outcome == "spawn_error"
    assert result.error == f"cwd {missing}: No such file or directory"
    assert result.exit_code is None
    assert list((tmp_path / "spool").iterdir()) == []


def test_kill_ends_the_whole_group_quickly(tmp_path: Path) -> None:
    async def kill_soon(runner: Runner) -> None:
        await asyncio.sleep(0.2)
        assert runner.kill(job_id=9999, lease_id=1, reason="wrong job") is False
        assert runner.kill(job_id=1001, lease_id=1, reason="user asked") is True
        assert runner.kill(job_id=1002, lease_id=2, reason="not running") is False

    t0 = time.monotonic()
    _, results = run(tmp_path, job("sleep 30 & sleep 30; wait", lease_id=1), during=kill_soon)
    result = results[1]
    assert time.monotonic() - t0 < 2
    assert result.outcome == "killed"
    assert result.error == "user asked"
    assert result.signal == 15
    assert result.pid is not None
    assert wait_until_group_gone(result.pid)


def test_kill_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    async def kill_soon(runner: Runner) -> None:
        await asyncio.sleep(0.2)
        runner.kill(job_id=1001, lease_id=1, reason="stop")

    _, results = run(tmp_path, job("trap '' TERM; sleep 30; true", lease_id=1), during=kill_soon)
    result = results[1]
    assert result.outcome == "killed"
    assert result.signal == 9
    assert 3.0 <= result.wall_seconds < 5
    assert result.pid is not None
    assert wait_until_group_gone(result.pid)


def test_a_loop_stalled_mid_turn_reports_the_keepers_kill_as_one(tmp_path: Path) -> None:
    """The loop blocked inside a callback (as a worker stopped with SIGSTOP mid-turn) past the
    keeper's timeout: the keeper kills the job, and on waking the loop sees the job's exit
    before its heartbeat's timer. The job is still reported killed because of the stall."""
    async def stall(runner: Runner) -> None:
        runner.watch_stalls(0.5)
        await asyncio.sleep(0.5)  # the job runs, the keeper has had heartbeats
        time.sleep(2.0)  # no heartbeat: the keeper kills the job after 0.5 s of this
        await asyncio.sleep(0.5)

    _, results = run(tmp_path, job("sleep 30", lease_id=1), during=stall)
    result = results[1]
    assert (result.outcome, result.signal) == ("killed", 9)
    assert result.error is not None and "its keeper killed the job" in result.error
    # Killed once the keeper's 0.5 s ran out, not after its 30 s (reaped off the loop, by the
    # launcher, its end is the kill's instant; reaped by the loop, the loop's waking).
    assert 0.5 <= result.wall_seconds < 10


def test_background_child_is_killed_when_the_leader_exits(tmp_path: Path) -> None:
    _, results = run(tmp_path, job("sleep 30 & echo $!", lease_id=1))
    result = results[1]
    assert result.outcome == "exited"
    assert result.exit_code == 0
    assert result.wall_seconds < 2
    assert result.pid is not None
    assert wait_until_group_gone(result.pid)
    child = int(result.stdout.head)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_time_limit(tmp_path: Path) -> None:
    _, results = run(tmp_path, job("sleep 30", lease_id=1, time_limit_seconds=0.5))
    result = results[1]
    assert result.outcome == "time_limit"
    assert result.signal == 15
    assert 0.45 <= result.wall_seconds < 2
    assert result.error is not None and "time limit" in result.error


def test_memory_limit(tmp_path: Path) -> None:
    hog = python_cmd('import time; data = b"x" * (300 * 2**20); time.sleep(20)')
    _, results = run(tmp_path, job(hog, lease_id=1, memory_bytes=100 * MB))
    result = results[1]
    assert result.outcome == "memory_limit"
    assert result.signal == 9
    assert result.wall_seconds < 5
    assert result.peak_rss_bytes > 100 * MB
    assert result.error is not None and "memory" in result.error


def test_memory_is_not_enforced_when_told_so(tmp_path: Path) -> None:
    hog = python_cmd('import time; data = b"x" * (300 * 2**20); time.sleep(1)')
    _, results = run(tmp_path, job(hog, lease_id=1, memory_bytes=100 * MB), enforce_memory=False)
    result = results[1]
    assert (result.outcome, result.exit_code, result.error) == ("exited", 0, None)
    assert result.peak_rss_bytes > 100 * MB  # still measured


def test_time_limit_holds_when_memory_is_not_enforced(tmp_path: Path) -> None:
    _, results = run(
        tmp_path, job("sleep 30", lease_id=1, time_limit_seconds=0.5), enforce_memory=False
    )
    assert results[1].outcome == "time_limit"


SHOW_GPUS = 'echo "${CUDA_VISIBLE_DEVICES-unset}|$SHOAL_GPUS"'


def test_granted_gpus_are_the_only_visible_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the worker's own allocation
    _, results = run(
        tmp_path,
        job(SHOW_GPUS, lease_id=1, gpus=["1", "3"], env={"CUDA_VISIBLE_DEVICES": "0"}),
        job(SHOW_GPUS, lease_id=2),
        offered_gpus=["0", "1", "2", "3"],
    )
    assert results[1].stdout.head == "1,3|1,3\n"
    assert results[2].stdout.head == "|\n"  # asked for none: sees none


def test_gpu_variable_is_left_alone_on_a_worker_without_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _, results = run(tmp_path, job(SHOW_GPUS, lease_id=1))
    assert results[1].stdout.head == "unset|\n"


def test_running_reports_the_granted_gpus(tmp_path: Path) -> None:
    async def main() -> None:
        runner = Runner(
            tmp_path,
            host="test-host",
            on_started=lambda _: None,
            on_finished=lambda _: None,
            offered_gpus=["0", "1"],
        )
        runner.start(job("sleep 30", lease_id=1, gpus=["1"]))
        runner.start(job("sleep 30", lease_id=2))
        gpus = {attempt.lease_id: attempt.gpus for attempt in runner.running()}
        assert gpus == {1: ["1"], 2: []}
        await asyncio.wait_for(runner.shutdown(kill=True), timeout=5)

    asyncio.run(main())


def test_cpu_seconds_of_a_busy_loop(tmp_path: Path) -> None:
    busy = python_cmd(
        "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    )
    _, results = run(tmp_path, job(busy, lease_id=1))
    assert results[1].exit_code == 0
    assert results[1].cpu_seconds > 0.3


def test_peak_rss_covers_the_whole_tree(tmp_path: Path) -> None:
    # The memory is held by a background child that the leader never reaps (it is killed when
    # the leader exits), so only sampling the process tree can see it.
    holder = python_cmd('import time; data = b"x" * (200 * 2**20); time.sleep(30)')
    _, results = run(tmp_path, job(f"{holder} & sleep 1.5", lease_id=1))
    assert results[1].exit_code == 0
    assert results[1].peak_rss_bytes >= 200 * MB


def test_running_busy_cores_and_shutdown_with_kill(tmp_path: Path) -> None:
    finished: list[AttemptResult] = []

    async def main() -> None:
        runner = Runner(
            tmp_path, host="test-host", on_started=lambda _: None, on_finished=finished.append
        )
        runner.start(job("sleep 30", lease_id=1, cores=2))
        runner.start(job("sleep 30", lease_id=2, cores=3))
        runner.start(job("true", lease_id=3, cores=1))
        await asyncio.sleep(0.2)
        running = sorted(runner.running(), key=lambda attempt: attempt.lease_id)
        assert [(a.job_id, a.lease_id) for a in running] == [(1001, 1), (1002, 2)]
        assert all(a.pid is not None and psutil.pid_exists(a.pid) for a in running)
        assert runner.busy_cores == 5
        await asyncio.wait_for(runner.shutdown(kill=True), timeout=5)
        assert runner.running() == []
        assert runner.busy_cores == 0
        runner.start(job("true", lease_id=4))  # refused once shut down

    asyncio.run(main())
    outcomes = {result.lease_id: result.outcome for result in finished}
    assert outcomes == {1: "killed", 2: "killed", 3: "exited", 4: "spawn_error"}


def test_detect_resources() -> None:
    resources = detect_resources()
    assert resources.cores == len(os.sched_getaffinity(0))
    assert 0 < resources.memory_bytes <= psutil.virtual_memory().total


def test_peek_reads_the_live_output_of_a_running_job(tmp_path: Path) -> None:
    async def during(runner: Runner) -> None:
        deadline = time.monotonic() + 5
        while runner.peek(1, "stderr", 0, 100)[1] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert runner.peek(1, "stdout", 0, 100) == ("first\nsecond", 12, True)
        assert runner.peek(1, "stdout", 6, 3) == ("sec", 12, True)
        assert runner.peek(1, "stdout", 50, 10) == ("", 12, True)  # past the end: nothing yet
        assert runner.peek(1, "stderr", 0, 100) == ("w\ufffd", 2, True)  # bad UTF-8 replaced
        assert runner.peek(2, "stdout", 0, 100) == ("", 0, False)  # not running here
        runner.kill(1001, 1, "seen enough")

    cmd = "printf 'first\\nsecond'; printf 'w\\xff' >&2; sleep 30"
    _, results = run(tmp_path, job(cmd, lease_id=1), during=during)
    assert results[1].stdout.head == "first\nsecond"


# ---- containment: each job in a cgroup where the machine allows it ------------------------


def _containment_or_skip(tmp_path: Path) -> str:
    """This machine's containment; without cgroups the test skips, or fails where system
    tests are required (SHOAL_REQUIRE_SYSTEM_TESTS=1)."""
    from tests.system import require

    async def detect() -> str:
        runner = Runner(tmp_path / "probe", host="test-host", on_started=lambda _: None,
                        on_finished=lambda _: None)
        try:
            return runner.containment
        finally:
            await runner.shutdown(kill=False)

    containment = asyncio.run(detect())
    require(containment != "process-group", "permission to create cgroups (root, cgroup fs)")
    return containment


def _escapees(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", marker] \
                and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.mark.parametrize("end", ["exit", "kill", "time_limit"])
def test_a_child_that_left_the_group_dies_with_its_job(tmp_path: Path, end: str) -> None:
    """`setsid` takes a child out of the job's process group and session; its cgroup still
    holds it, so it dies when its job ends, however the job ends."""
    _containment_or_skip(tmp_path)
    marker = f"300.{os.getpid()}{time.monotonic_ns() % 10**6:06d}"  # sleep's argument: unique
    escape = f"setsid sleep {marker} < /dev/null > /dev/null 2>&1 &"
    cmd = {"exit": f"{escape} sleep 0.3",
           "kill": f"{escape} sleep 30",
           "time_limit": f"{escape} sleep 30"}[end]
    seen: list[int] = []

    async def during(runner: Runner) -> None:
        await asyncio.sleep(0.2)
        [attempt] = runner.running()
        seen.extend(process.pid for process in _escapees(marker)
                    if os.getpgid(process.pid) != attempt.pid)  # it did leave the group
        if end == "kill":
            runner.kill(job_id=1001, lease_id=1, reason="user asked")

    try:
        _, results = run(tmp_path, job(cmd, lease_id=1,
                                       time_limit_seconds=0.5 if end == "time_limit" else None),
                         during=during)
        assert seen, "the setsid child never ran outside the job's group"
        assert results[1].outcome == {"exit": "exited", "kill": "killed",
                                      "time_limit": "time_limit"}[end]
        deadline = time.monotonic() + 2.0
        while _escapees(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _escapees(marker) == []
    finally:
        for process in _escapees(marker):
            process.kill()


def test_peak_memory_is_the_jobs_own_under_a_cgroup(tmp_path: Path) -> None:
    """wait4 counts the worker's image copied at the fork (tens of MiB for `true`); the
    cgroup's peak counts only what the job used."""
    _containment_or_skip(tmp_path)
    _, results = run(tmp_path, job("true", lease_id=1),
                     job(python_cmd('data = b"x" * (100 * 2**20)'), lease_id=2))
    assert results[1].exit_code == 0
    assert 0 < results[1].peak_rss_bytes < 20 * MB
    assert results[2].exit_code == 0
    assert results[2].peak_rss_bytes >= 100 * MB


def test_jobs_in_turn_share_kept_cgroups_and_each_peak_is_its_own(tmp_path: Path) -> None:
    """Under v1 an ended job's empty cgroups serve the next job, their peak reset: `true`
    after a 100 MiB job still measures a few MiB. A job that leaves much charged (its
    written file's cache) gets its cgroups removed, not kept. Under v2 every job gets new
    ones."""
    containment = _containment_or_skip(tmp_path)
    peaks: dict[int, int] = {}
    cgroups_seen: list[set[str]] = []
    big_file = tmp_path / "written"

    async def main() -> None:
        runner = Runner(tmp_path / "spool", host="test-host", on_started=lambda _: None,
                        on_finished=lambda result: peaks.__setitem__(
                            result.lease_id, result.peak_rss_bytes))
        runner.max_running_cores = 1  # one after the other
        commands = [python_cmd('data = b"x" * (100 * 2**20)'), "true",
                    f"head -c {8 * MB} /dev/zero > {big_file}", "true"]
        for lease_id, cmd in enumerate(commands, start=1):
            runner.start(job(cmd, lease_id=lease_id))
            while lease_id not in peaks:
                await asyncio.sleep(0.01)
            assert runner._containment is not None
            cgroups_seen.append({child.name for parent in runner._containment.parents.values()
                                 for child in parent.iterdir() if child.is_dir()})
        await runner.shutdown(kill=False)

    asyncio.run(main())
    assert peaks[1] >= 100 * MB
    assert 0 < peaks[2] < 20 * MB  # its own, not the 100 MiB job's before it
    assert 0 < peaks[4] < 20 * MB
    if containment == "cgroup-v1":
        assert cgroups_seen[0] == cgroups_seen[1] == {"job-1"}  # kept, then used again
        assert cgroups_seen[2] == set()  # 8 MiB of cache stayed charged: removed
        assert cgroups_seen[3] == {"job-4"}
    else:
        assert cgroups_seen == [set(), set(), set(), set()]


def test_spool_files_of_a_job_with_nothing_left_serve_the_next_and_linked_ones_do_not(
        tmp_path: Path) -> None:
    """A contained job that left no process has its spool files emptied for the next job
    (each job still sees only its own output); a spool file linked elsewhere (as `--results`
    keeps it) is left to that link, and the next job gets a new one."""
    _containment_or_skip(tmp_path)
    spool = tmp_path / "spool"
    results: dict[int, AttemptResult] = {}
    spool_files: list[list[str]] = []
    linked = tmp_path / "linked.stdout"

    def keep_third(assignment: Assignment, stdout_path: str, stderr_path: str) -> None:
        if assignment.lease_id == 3:
            os.link(stdout_path, linked)

    async def main() -> None:
        runner = Runner(spool, host="test-host", on_started=lambda _: None,
                        on_finished=lambda result: results.__setitem__(result.lease_id, result))
        runner.max_running_cores = 1  # one after the other
        runner.on_output = keep_third
        commands = ["printf 'a long first output'", "printf second; printf err >&2",
                    "printf third", "printf fourth"]
        for lease_id, cmd in enumerate(commands, start=1):
            runner.start(job(cmd, lease_id=lease_id))
            while lease_id not in results:
                await asyncio.sleep(0.01)
            spool_files.append(sorted(path.name for path in spool.iterdir()))
        await runner.shutdown(kill=False)

    asyncio.run(main())
    assert [results[n].stdout.head for n in (1, 2, 3, 4)] == [
        "a long first output", "second", "third", "fourth"]
    assert results[2].stderr.head == "err" and results[1].stderr.head == ""
    first_pair = ["1.stderr", "1.stdout"]
    assert spool_files[0] == spool_files[1] == first_pair  # emptied, then written again
    assert spool_files[2] == []  # linked: deleted here, its link keeps it
    assert linked.read_text() == "third"  # not overwritten by the fourth job
    assert spool_files[3] == ["4.stderr", "4.stdout"]  # new files for the next job
    assert list(spool.iterdir()) == []  # and none left after the runner stops


def test_job_cgroups_are_removed_after_their_jobs(tmp_path: Path) -> None:
    _containment_or_skip(tmp_path)
    parents: list[Path] = []

    async def look(runner: Runner) -> None:
        await asyncio.sleep(0.2)
        containment = runner._containment  # where its cgroups are
        assert containment is not None
        parents.extend(containment.parents.values())
        assert all(any(parent.iterdir()) for parent in parents)

    run(tmp_path, job("true", lease_id=1), job("sleep 0.5", lease_id=2), during=look)
    assert parents and not any(parent.exists() for parent in parents)

"""The native launcher (worker/_launcher.c) against real processes, and the runner's use of it:
each slot's queued jobs start one after the other, the moment the one before ends; a queued
job can be taken back until it starts; signals reach only a job not yet reaped; what is left
of a job's process group dies with its leader."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from shoal.core.protocol import Assignment, AttemptResult
from shoal.worker import launcher as launcher_module
from shoal.worker.launcher import Launcher, LaunchEvent, make_launcher, read_events
from shoal.worker.runner import QUEUED_PER_SLOT, Runner
from tests.integration.test_runner import run
from tests.system import require

BASH = b"/bin/bash"


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    require(launcher_module._Native is not None, "the compiled native launcher")
    made = make_launcher()
    yield made
    made.close()


def env() -> list[bytes]:
    return [name + b"=" + value for name, value in os.environb.items()]


def fds(out: Path) -> tuple[int, int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    return (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), os.open(out, flags),
            os.open(out, flags))


def shell(launcher: Launcher, slot: int, token: int, script: str, out: Path,
          cwd: bytes | None = None) -> None:
    launcher.queue(slot, token, BASH, [b"bash", b"-c", script.encode()], env(), fds(out), [],
                   cwd=cwd)


def collect(launcher: Launcher, count: int, timeout: float = 10.0) -> list[LaunchEvent]:
    events: list[LaunchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        select.select([launcher.fileno()], [], [], 0.2)
        events += read_events(launcher)
    return events


def test_a_slots_jobs_run_in_order_each_after_the_last_has_ended(
        launcher: Launcher, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for token in range(1, 4):
        shell(launcher, 1, token, f"echo start {token}; sleep 0.1; echo end {token}; "
              f"exit {token}", out)
    events = collect(launcher, 6)
    assert [(e.kind, e.token) for e in events] == [
        ("s", 1), ("e", 1), ("s", 2), ("e", 2), ("s", 3), ("e", 3)]
    assert out.read_text().split("\n")[:-1] == [
        f"{what} {token}" for token in (1, 2, 3) for what in ("start", "end")]
    ends = {e.token: e for e in events if e.kind == "e"}
    assert [os.waitstatus_to_exitcode(ends[t].status) for t in (1, 2, 3)] == [1, 2, 3]
    starts = {e.token: e for e in events if e.kind == "s"}
    for token in (2, 3):  # not before the one before it ended, and at once after
        gap = starts[token].monotonic - ends[token - 1].monotonic
        assert 0 <= gap < 0.5
        assert ends[token].monotonic - starts[token].monotonic >= 0.1


def wake_ups(launcher: Launcher, count: int, timeout: float = 10.0
             ) -> list[tuple[float, list[LaunchEvent]]]:
    """The events read at each wake-up (the moment the eventfd was readable, and what was
    read), until `count` events have come."""
    woken: list[tuple[float, list[LaunchEvent]]] = []
    deadline = time.monotonic() + timeout
    while sum(len(events) for _, events in woken) < count and time.monotonic() < deadline:
        if select.select([launcher.fileno()], [], [], 0.2)[0]:
            woken.append((time.monotonic(), read_events(launcher)))
    return woken


@pytest.mark.parametrize("slot", [1, 17])
def test_a_slot_with_jobs_queued_wakes_the_loop_once_for_several(tmp_path: Path,
                                                                  slot: int) -> None:
    """With `notify_below` 3, the loop is woken once fewer than 3 jobs wait behind the
    slot's running one: the wake-up with the first end brings the ends of 5 jobs. Only the
    slot whose jobs ended counts: slot 17 shares its lane with idle slots 1 and 33."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    made = make_launcher(notify_below=3, notify_delay=1.0)
    try:
        shell(made, 33, 100, "true", tmp_path / "other")  # an idle slot in the lane
        assert [e.kind for _, events in wake_ups(made, 2) for e in events] == ["s", "e"]
        for token in range(1, 9):
            shell(made, slot, token, "sleep 0.05", tmp_path / "out")
        woken = wake_ups(made, 16)
    finally:
        made.close()
    events = [event for _, first in woken for event in first]
    assert [(e.kind, e.token) for e in events] == [
        (kind, token) for token in range(1, 9) for kind in ("s", "e")]
    # (The first start may come alone: the lane may start it before the rest are queued.)
    with_first_end = next(read for _, read in woken if ("e", 1) in [(e.kind, e.token)
                                                                    for e in read])
    # (More, if the loop is late to read them: a loaded machine.)
    assert [e.token for e in with_first_end if e.kind == "e"][:5] == [1, 2, 3, 4, 5]
    assert len(woken) < 8


def test_an_end_reaches_the_loop_within_the_delay_however_many_wait(tmp_path: Path) -> None:
    """Deferred, an end is told within `notify_delay` of the first event not yet read."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    made = make_launcher(notify_below=3, notify_delay=0.1)
    try:
        for token in range(1, 7):  # without the delay's bound, the next wake-up is 1 s on
            shell(made, 1, token, "sleep 1", tmp_path / "out")
        woken = wake_ups(made, 3)  # the first start, then the first end with the next start
    finally:
        made.close()
    ended_seen, ended = next((seen, read) for seen, read in woken
                             if ("e", 1) in [(e.kind, e.token) for e in read])
    assert [(e.kind, e.token) for e in ended][:2] == [("e", 1), ("s", 2)]
    assert 0.09 <= ended_seen - ended[0].monotonic < 0.7  # room for a loaded machine


def test_slots_run_side_by_side(launcher: Launcher, tmp_path: Path) -> None:
    for slot in (1, 2, 3):
        shell(launcher, slot, slot, "sleep 0.5", tmp_path / f"out{slot}")
    events = collect(launcher, 6)
    starts = [e.monotonic for e in events if e.kind == "s"]
    ends = [e.monotonic for e in events if e.kind == "e"]
    assert len(starts) == len(ends) == 3
    assert max(starts) < min(ends)  # all three ran at once


def test_the_fallback_runs_when_the_program_cannot_be_executed(
        launcher: Launcher, tmp_path: Path) -> None:
    out = tmp_path / "out"
    launcher.queue(1, 1, b"/nonexistent/program", [b"program"], env(), fds(out), [],
                   fallback=(BASH, [b"bash", b"-c", b"echo fell back to bash"], env()))
    launcher.queue(1, 2, b"/nonexistent/program", [b"program"], env(), fds(out), [])
    shell(launcher, 1, 3, "echo after", out)  # a failed start does not stall the slot
    events = collect(launcher, 5)
    assert [(e.kind, e.token) for e in events] == [("s", 1), ("e", 1), ("f", 2), ("s", 3),
                                                   ("e", 3)]
    failed = events[2]
    assert failed.status == errno.ENOENT and not failed.in_cwd
    assert out.read_text() == "fell back to bash\nafter\n"


def test_a_job_runs_in_its_directory_and_a_missing_one_is_reported(
        launcher: Launcher, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shell(launcher, 1, 1, "pwd", out, cwd=str(tmp_path).encode())
    shell(launcher, 1, 2, "pwd", out, cwd=str(tmp_path / "gone").encode())
    events = collect(launcher, 3)
    assert [(e.kind, e.token) for e in events] == [("s", 1), ("e", 1), ("f", 2)]
    assert events[2].in_cwd and events[2].status == errno.ENOENT
    assert out.read_text() == f"{tmp_path}\n"


def test_a_queued_job_can_be_withdrawn_until_it_starts(launcher: Launcher, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    shell(launcher, 1, 1, "sleep 0.3", tmp_path / "out")
    shell(launcher, 1, 2, f"touch {ran}", tmp_path / "out")
    shell(launcher, 1, 3, "true", tmp_path / "out")
    assert launcher.withdraw(2) is True
    assert launcher.withdraw(2) is False  # gone already
    events = collect(launcher, 4)
    assert [(e.kind, e.token) for e in events] == [("s", 1), ("e", 1), ("s", 3), ("e", 3)]
    assert launcher.withdraw(3) is False  # started (and ended): too late
    assert not ran.exists()


def test_signals_reach_a_running_job_and_not_one_already_reaped(
        launcher: Launcher, tmp_path: Path) -> None:
    shell(launcher, 1, 1, "sleep 30", tmp_path / "out")
    assert collect(launcher, 1)[0].kind == "s"
    assert launcher.signal(1, signal.SIGTERM) is True
    ended = collect(launcher, 1)[0]
    assert ended.kind == "e" and os.WTERMSIG(ended.status) == signal.SIGTERM
    assert launcher.signal(1, signal.SIGTERM) is False  # reaped: its group id is not its own


def test_what_is_left_of_a_jobs_group_dies_with_its_leader(
        launcher: Launcher, tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    shell(launcher, 1, 1, f"sleep 30 & echo $! > {pid_file}", tmp_path / "out")
    events = collect(launcher, 2)
    assert [e.kind for e in events] == ["s", "e"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_the_environment_limits_and_session_a_job_gets(launcher: Launcher, tmp_path: Path) -> None:
    out = tmp_path / "out"
    soft, hard = 512, 4096
    script = b'echo "$ONLY"; ulimit -n; echo $(($$ == $(ps -o sid= -p $$)))'
    launcher.queue(1, 1, BASH, [b"bash", b"-c", script],
                   [b"ONLY=this", b"PATH=" + os.environb[b"PATH"]], fds(out), [],
                   rlimit=(soft, hard))
    assert [e.kind for e in collect(launcher, 2)] == ["s", "e"]
    lines = out.read_text().split("\n")
    assert lines[0] == "this" and lines[1] == str(soft)
    assert lines[-2] == "1"  # a session of its own: its group is the job's alone


def test_after_a_job_ends_its_cgroups_list_is_read_for_what_is_left(
        launcher: Launcher, tmp_path: Path) -> None:
    """The file named is read once the job is reaped: empty, not empty, or unreadable (here
    plain files stand for a cgroup's cgroup.procs)."""
    empty, listed = tmp_path / "empty", tmp_path / "listed"
    empty.write_text("")
    listed.write_text("4242\n")
    for token, procs in ((1, empty), (2, listed), (3, tmp_path / "missing")):
        launcher.queue(token, token, BASH, [b"bash", b"-c", b"true"], env(),
                       fds(tmp_path / "out"), [], procs=str(procs).encode())
    ended = {e.token: e.empty for e in collect(launcher, 6) if e.kind == "e"}
    assert ended == {1: 1, 2: 0, 3: -1}


def test_a_closed_launcher_refuses_new_jobs_and_closes_what_it_was_given(tmp_path: Path) -> None:
    require(launcher_module._Native is not None, "the compiled native launcher")
    launcher = make_launcher()
    shell(launcher, 1, 1, "true", tmp_path / "out")
    assert [e.kind for e in collect(launcher, 2)] == ["s", "e"]
    launcher.close()
    given = fds(tmp_path / "out")
    with pytest.raises(OSError):
        launcher.queue(1, 2, BASH, [b"bash"], env(), given, [])
    for fd in given:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by the launcher, not leaked


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- the runner with the launcher ----------------------------------------------------------


def assignment(lease_id: int, cmd: str, cwd: str = "") -> Assignment:
    return Assignment(job_id=1000 + lease_id, lease_id=lease_id, cmd=cmd, cwd=cwd, env={},
                      cores=1, memory_bytes=0, gpus=[], time_limit_seconds=None)


def run_queued(tmp_path: Path, commands: list[str], parallel: int,
               during: Callable[[Runner], Awaitable[None]] | None = None,
               ) -> dict[int, AttemptResult]:
    return run_assignments(tmp_path, [assignment(n, cmd) for n, cmd in
                                      enumerate(commands, start=1)], parallel, during)


def run_assignments(tmp_path: Path, assignments: list[Assignment], parallel: int,
                    during: Callable[[Runner], Awaitable[None]] | None = None,
                    ) -> dict[int, AttemptResult]:
    return run(tmp_path / "spool", *assignments, during=during, parallel=parallel)[1]


@pytest.mark.parametrize("launcher_kind", ["native", "python"])
def test_the_runner_never_runs_more_than_its_slots_and_each_slot_one_job_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher_kind: str) -> None:
    if launcher_kind == "native":
        require(launcher_module._Native is not None, "the compiled native launcher")
    monkeypatch.setenv(launcher_module.LAUNCHER_VARIABLE, launcher_kind)
    results = run_queued(tmp_path, ['echo "$SHOAL_SLOT"; sleep 0.02'] * 40, parallel=3)
    assert len(results) == 40 and all(r.exit_code == 0 for r in results.values())
    for r in results.values():  # the end derived from the start and the monotonic clock
        assert r.ended_at == pytest.approx(r.started_at + r.wall_seconds)
    spans = sorted((r.started_at, r.ended_at, int(r.stdout.head)) for r in results.values())
    assert {slot for _, _, slot in spans} <= {1, 2, 3}
    for start, _, slot in spans:
        running = [other for other in spans if other[0] <= start < other[1]]
        assert len(running) <= 3
        assert [other[2] for other in running].count(slot) == 1  # no slot used twice at once


def test_a_job_queued_behind_a_running_one_can_be_killed_before_it_starts(
        tmp_path: Path) -> None:
    require(launcher_module._Native is not None, "the compiled native launcher")
    ran = tmp_path / "ran"

    async def kill_second(runner: Runner) -> None:
        await asyncio.sleep(0.2)  # the first runs, the second waits behind it in the launcher
        assert runner.kill(1002, 2, "not wanted")

    results = run_queued(tmp_path, ["sleep 0.5", f"touch {ran}", "echo third"], parallel=1,
                         during=kill_second)
    assert results[2].outcome == "killed" and results[2].error == "not wanted"
    assert results[2].wall_seconds == 0 and results[2].pid is None
    assert not ran.exists()
    assert results[3].stdout.head == "third\n" and results[3].started_at >= results[1].ended_at


def test_held_starts_take_queued_jobs_back_until_resumed(tmp_path: Path) -> None:
    require(launcher_module._Native is not None, "the compiled native launcher")
    resumed_at: list[float] = []

    async def hold(runner: Runner) -> None:
        await asyncio.sleep(0.1)
        runner.hold_starts()
        await asyncio.sleep(0.6)  # the first has ended; nothing else may start meanwhile
        resumed_at.append(time.time())
        runner.resume_starts()

    results = run_queued(tmp_path, ["sleep 0.3", "true", "true"], parallel=1, during=hold)
    assert all(r.exit_code == 0 for r in results.values())
    assert results[2].started_at >= resumed_at[0] and results[3].started_at >= resumed_at[0]


def test_a_job_the_launcher_started_unseen_is_not_among_the_unstarted(tmp_path: Path) -> None:
    """What a stopping run kills as "not started" (`not_started` after `hold_starts`) never
    includes a job the launcher has started but whose start the loop has not seen yet: that
    one runs to its end (`--halt soon` counted it as not run, though it had run)."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    ran = tmp_path / "ran"
    unstarted: list[int] = []

    async def stop(runner: Runner) -> None:
        # The loop is held (no await) while the first job starts: its start is not read. An
        # idle slot's start is told at once.
        assert select.select([runner._launcher.fileno()], [], [], 5)[0]  # type: ignore[union-attr]
        assert [attempt.pid for attempt in runner.running()] == [None, None, None]
        runner.hold_starts()
        unstarted.extend(runner.not_started())
        for job_id in unstarted:
            assert runner.kill(job_id, job_id - 1000, "not started: the run stopped")

    results = run_queued(tmp_path, [f"sleep 0.3; touch {ran}", "true", "true"], parallel=1,
                         during=stop)
    assert unstarted == [1002, 1003]
    assert results[1].outcome == "exited" and results[1].exit_code == 0 and ran.exists()
    assert all(results[n].outcome == "killed" and results[n].pid is None for n in (2, 3))


def test_a_job_whose_spool_file_cannot_be_made_is_reported_and_its_slot_freed(
        tmp_path: Path) -> None:
    require(launcher_module._Native is not None, "the compiled native launcher")
    results: dict[int, AttemptResult] = {}
    spool = tmp_path / "spool"

    async def main() -> None:
        runner = Runner(spool, host="test-host", on_started=lambda _: None,
                        on_finished=lambda result: results.__setitem__(result.lease_id, result))
        spool.rmdir()  # its spool files cannot be created
        runner.start(assignment(1, "echo never"))
        spool.mkdir()
        runner.start(assignment(2, 'echo "$SHOAL_SLOT"'))
        await runner.shutdown(kill=False)

    asyncio.run(main())
    assert results[1].outcome == "spawn_error" and results[1].error is not None
    assert "No such file or directory" in results[1].error
    assert results[2].exit_code == 0 and results[2].stdout.head == "1\n"  # slot 1 was free


def test_jobs_queued_behind_a_long_one_start_on_a_slot_that_frees(tmp_path: Path) -> None:
    """Jobs handed to the launcher behind a long job are taken back and started on the
    other slot once it has nothing else to run: they do not wait for the long one."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    results = run_queued(tmp_path, ["sleep 3"] + ["sleep 0.05"] * 8, parallel=2)
    long = results[1]
    assert all(r.exit_code == 0 for r in results.values())
    assert max(r.ended_at for n, r in results.items() if n > 1) < long.ended_at - 1.5


def test_jobs_queued_behind_a_long_one_move_while_others_still_wait(tmp_path: Path) -> None:
    """Jobs behind one that has run QUEUED_BEHIND_SECONDS are taken back to start on the
    other slot next, not once everything else has run."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    # Jobs 3.. are queued behind 1 and 2, whichever starts first; 2 ends after 0.3 s, and
    # its slot then runs what was taken back from behind 1, in order. Without that they
    # would wait for 1 to end, or for the 40 short jobs to run on one slot: 2 s.
    results = run_queued(tmp_path, ["sleep 2", "sleep 0.3"] + ["sleep 0.05"] * 40,
                         parallel=2)
    long = results[1]
    assert all(r.exit_code == 0 for r in results.values())
    late = {n: round(r.started_at - long.started_at, 2) for n, r in results.items()
            if 2 < n <= 2 + 2 * QUEUED_PER_SLOT and r.started_at - long.started_at > 1.4}
    assert not late, late


def test_the_cores_a_slot_passes_on_are_never_more_than_the_runners(tmp_path: Path) -> None:
    """A job queued behind another takes over the cores of the one it follows: never more
    than it, so the cores in use never exceed the runner's."""
    cores = [2, 1, 2, 1, 1, 2, 1, 2, 1, 1]
    jobs = [Assignment(job_id=1000 + n, lease_id=n, cmd="sleep 0.1", cwd="", env={},
                       cores=c, memory_bytes=0, gpus=[], time_limit_seconds=None)
            for n, c in enumerate(cores, start=1)]
    results = run_assignments(tmp_path, jobs, parallel=2)
    assert all(r.exit_code == 0 for r in results.values())
    spans = [(r.started_at, r.ended_at, cores[n - 1]) for n, r in results.items()]
    for start, _, _ in spans:
        assert sum(c for s, e, c in spans if s <= start < e) <= 2


def test_a_command_that_cannot_be_encoded_is_refused_and_its_slot_freed(tmp_path: Path
                                                                       ) -> None:
    results = run_queued(tmp_path, ["echo \ud800", 'echo "$SHOAL_SLOT"'], parallel=1)
    assert results[1].outcome == "spawn_error"
    assert results[2].exit_code == 0 and results[2].stdout.head == "1\n"


def test_the_launchers_threads_block_every_signal(launcher: Launcher, tmp_path: Path) -> None:
    """Signals stay the interpreter's (its main thread's), and a job's vfork child, which
    shares its thread's memory until it execs, can run none of the worker's handlers."""
    before = set(os.listdir("/proc/self/task"))
    shell(launcher, 1, 1, "true", tmp_path / "out")
    assert [e.kind for e in collect(launcher, 2)] == ["s", "e"]
    lanes = set(os.listdir("/proc/self/task")) - before
    assert lanes
    for tid in lanes:
        status = Path(f"/proc/self/task/{tid}/status").read_text()
        blocked = int(status.split("SigBlk:")[1].split()[0], 16)
        # Every standard signal, 1 to 31, but SIGKILL and SIGSTOP, which nothing blocks.
        standard = 0x7FFFFFFF & ~(1 << (signal.SIGKILL - 1)) & ~(1 << (signal.SIGSTOP - 1))
        assert blocked & 0x7FFFFFFF == standard


def test_a_reused_spool_file_holds_only_its_own_jobs_output(tmp_path: Path) -> None:
    """The launcher's jobs reuse the spool files of jobs that left nothing behind, opened
    without truncation: they must have been emptied, or a short output would end in the
    longer one before it."""
    require(launcher_module._Native is not None, "the compiled native launcher")
    long, short = "a long line of output from the first job", "short"
    commands = [f"echo {long}; echo {long} >&2", f"echo {short}; echo {short} >&2"] * 10
    results = run_queued(tmp_path, commands, parallel=1)
    for lease_id, result in results.items():
        expected = (long if lease_id % 2 else short) + "\n"
        assert (result.stdout.head, result.stderr.head) == (expected, expected), lease_id

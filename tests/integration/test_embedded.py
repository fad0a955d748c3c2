"""`shoal run FILE -j N`: the embedded default, as a user runs it."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections import Counter
from pathlib import Path

from .cluster import SHOAL, wait_until


def run(path: Path, *args: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}
    return subprocess.run([*SHOAL, "run", str(path), *args], text=True, capture_output=True,
                          timeout=120, cwd=cwd or path.parent, env={**environment, **(env or {})})


def test_runs_everything_and_resumes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    marker = tmp_path / "marker"
    jobs = tmp_path / "jobs.txt"
    lines = [f"echo {i} >> {ledger}" for i in range(40)]
    lines.append(f"echo flaky >> {ledger}; test -f {marker} || {{ echo 'no marker' >&2; exit 3; }}")
    jobs.write_text("# forty good jobs and a flaky one\n\n" + "\n".join(lines) + "\n")

    first = run(jobs, "-j", "3")
    assert first.returncode == 1
    assert "40 done, 1 failed of 41" in first.stderr  # stdout is the jobs' own output
    assert "exit code 3" in first.stderr and "no marker" in first.stderr
    assert (tmp_path / ".shoal" / "runs" / "jobs.txt" / "shoal.db").exists()  # beside the file

    marker.touch()
    second = run(jobs, "-j", "3", "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads(second.stdout)
    assert (summary["done"], summary["failed"], summary["skipped_done"]) == (1, 0, 40)
    # Done jobs did not run again; the failed one ran twice in all.
    counts = Counter(ledger.read_text().split())
    assert counts == Counter({**{str(i): 1 for i in range(40)}, "flaky": 2})


def test_runs_n_at_a_time(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"sleep 0.3; echo {i}\n" for i in range(6)))
    result = run(jobs, "-j", "2", "--json")
    assert result.returncode == 0
    from shoal.store import Store

    store = Store(tmp_path / ".shoal" / "runs" / "jobs.txt" / "shoal.db")
    spans = [(j.started_at, j.ended_at) for j in store.load_jobs()]
    store.close()
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_runmaker_file_is_rewritten_in_place(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.rm"
    jobs.write_text("# runmaker file\n. echo first\nd echo already-done\n. exit 5\n. echo ünï\n")
    result = run(jobs, "-j", "2")
    assert result.returncode == 1
    assert jobs.read_text() == ("# runmaker file\nd echo first\nd echo already-done\n"
                                "! exit 5\nd echo ünï\n")
    assert "3 done" not in result.stderr and "2 done, 1 failed of 3" in result.stderr
    assert result.stdout == ""  # the summary is a message: stdout holds only data


def test_wr_format_and_shoal_home(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.wr"
    jobs.write_text('echo a\t{"rep_grp": "grp-a", "retries": 0}\necho b\t{"env": ["X=1"]}\n')
    home = tmp_path / "home"
    result = run(jobs, "-j", "2", env={"SHOAL_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    [state] = (home / "runs").glob("jobs.wr-*")  # named by the file and its directory
    assert (state / "shoal.db").exists()
    assert not (tmp_path / ".shoal").exists()

    # $SHOAL_HOME is shared by every directory: a file of the same name elsewhere is a run of
    # its own, nothing of it skipped as done; `shoal logs` finds the last run there.
    other = tmp_path / "other"
    other.mkdir()
    (other / "jobs.wr").write_text(f"echo made here; touch {other}/made\n")
    again = run(other / "jobs.wr", env={"SHOAL_HOME": str(home)})
    assert again.returncode == 0 and (other / "made").exists(), again.stderr
    assert len(list((home / "runs").glob("jobs.wr-*"))) == 2
    logs = subprocess.run([*SHOAL, "logs", "1"], cwd=other, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SHOAL_HOME": str(home)})
    assert logs.returncode == 0 and logs.stdout == "made here\n", logs.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.wr"
    jobs.write_text('echo a\t{"retries": 1}\necho b\t{"retries": 1,}\n')
    result = run(jobs)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{jobs}:2" in line
    assert not (tmp_path / ".shoal").exists()  # nothing was started or written
    assert run(tmp_path / "missing.txt").returncode == 2
    for bad_j in ("2.5", "+1%", "lots"):
        refused = run(jobs, "-j", bad_j)
        assert refused.returncode == 2
        assert refused.stderr.startswith("shoal: -j"), refused.stderr
    assert run(jobs, "--format", "xml").returncode == 2
    wide = tmp_path / "wide.wr"
    wide.write_text('echo a\t{"cpus": 1}\necho b\t{"cpus": 3}\n')
    result = run(wide, "-j", "2")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"{wide}:2: asks for 3 cores but -j is 2")
    # A wait for a group none of the file's jobs is in: one line naming the file's line.
    waiting = tmp_path / "waiting.wr"
    waiting.write_text('echo a\necho b\t{"deps": ["nosuch"]}\n')
    result = run(waiting)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"shoal: {waiting}:2: group:nosuch has no jobs in this file"], result.stderr


def test_interrupt_kills_running_jobs_and_a_rerun_finishes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"sleep 30; echo {i} >> {ledger}\n" for i in range(2))
                    + f"echo quick >> {ledger}\n")
    environment = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}
    process = subprocess.Popen([*SHOAL, "run", str(jobs), "-j", "2"], cwd=tmp_path,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_until(lambda: len(_children_sleeping(process.pid)) == 2, timeout=20,
               message="two sleeps running")
    sleepers = _children_sleeping(process.pid)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "; interrupted, run it again to finish" in err  # a file's rerun resumes
    for pid in sleepers:
        assert not _alive(pid)
    jobs.write_text(jobs.read_text().replace("sleep 30", "sleep 0.1"))
    # Edited commands are new jobs; the interrupted ones were requeued, not failed.
    from shoal.store import Store

    store = Store(tmp_path / ".shoal" / "runs" / "jobs.txt" / "shoal.db")
    states = Counter(job.state.value for job in store.load_jobs())
    store.close()
    assert states["failed"] == 0 and states["cancelled"] == 0


def _children_sleeping(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", b"30"] and parent in _ancestors(int(entry)):
            found.append(int(entry))  # this run's, not another test's
    return found


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_no_traceback_without_debug(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"echo \xff\xfe\n")
    result = run(jobs)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{jobs}:1" in result.stderr


def test_a_killed_run_resumes_without_running_a_recorded_job_again(tmp_path: Path) -> None:
    """`kill -9` of `shoal run` in the middle of many short jobs: its jobs die with it (the
    keeper), and a resume runs every line whose end was not recorded. A job recorded done
    ran exactly once; at most the last few, whose end was not yet committed, run twice."""
    ledger = tmp_path / "ledger"
    jobs = tmp_path / "jobs.txt"
    count = 400
    jobs.write_text("".join(f"echo {i} >> {ledger}; sleep 0.01\n" for i in range(count)))
    environment = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}
    process = subprocess.Popen([*SHOAL, "run", str(jobs), "-j", "2", "--quiet"],
                               cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_until(lambda: ledger.exists() and len(ledger.read_text().split()) >= count // 4,
               timeout=60, interval=0.01, message="a quarter of the jobs ran")
    process.kill()
    process.wait(timeout=20)
    wait_until(lambda: not _running_lines(jobs), timeout=20,
               message="the killed run's jobs gone with it")

    from shoal.store import Store

    store = Store(tmp_path / ".shoal" / "runs" / "jobs.txt" / "shoal.db")
    recorded_done = {int(job.cmd.split()[1]) for job in store.load_jobs()
                     if job.state.value == "done"}
    store.close()
    ran_before = Counter(ledger.read_text().split())
    assert recorded_done and recorded_done <= {int(n) for n in ran_before}
    assert len(ran_before) < count  # killed in the middle

    resumed = run(jobs, "-j", "2", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped_done"] == len(recorded_done)
    ran = Counter(int(n) for n in ledger.read_text().split())
    assert set(ran) == set(range(count))
    assert all(ran[n] == 1 for n in recorded_done)
    twice = [n for n in ran if ran[n] > 1]
    assert len(twice) <= 10, twice  # only the ends not yet committed: a few, never many


def _running_lines(jobs: Path) -> list[int]:
    """Processes running a line of this file (their `bash -c` command line names it)."""
    found = []
    ledger = str(jobs.parent / "ledger").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"bash\0-c\0") and ledger in cmdline:
            found.append(int(entry))
    return found


def test_hundreds_of_jobs_at_once_under_the_usual_open_files_limit(tmp_path: Path) -> None:
    """A soft limit of 1024 open files (the usual default) and -j 500: the runner raises its
    own limit to the hard one, and its jobs still see the limit it was started with."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 2048, "the test needs room above 1024"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("ulimit -Sn\n" + "sleep 1\n" * 599)
    environment = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}
    finished = subprocess.run(
        [*SHOAL, "run", str(jobs), "-j", "500", "--json", "--results", str(tmp_path / "out")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads(finished.stdout)
    assert (summary["done"], summary["failed"]) == (600, 0)
    [first] = [path for path in (tmp_path / "out").rglob("stdout")
               if (path.parent / "cmd").read_text().strip() == "ulimit -Sn"]
    assert first.read_text().strip() == "1024"

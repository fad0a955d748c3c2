"""A runmaker file's run as a run of its own: its state, its jobs, its summary.

`shoal run` on a runmaker file keeps its state as a lines file's run does (`.shoal/runs/NAME/`,
named in `.shoal/last`), so `shoal logs`, `status` and `jobs` read it afterwards; each line it
claims is a job of its own; and its summary is a lines file's: on stderr, jobs named by their
line, failures not among the slowest, what jobs wrote sanitized.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .cluster import SHOAL, wait_until

RED = "printf '\\033[31mred\\033[0m\\n' >&2; exit 2"  # colours on stderr
TITLE = "printf '\\033]0;title\\007err' >&2; exit 3"  # a title change, then text


def shoal(cwd: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("SHOAL_HOME", "SHOAL_SERVER", "SHOAL_TOKEN")}
    environment["HOME"] = str(cwd / "home")  # no server anywhere: ~/.shoal is empty
    return subprocess.run([*SHOAL, *args], cwd=cwd, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout,
                          env={**environment, **(env or {})})


def jobs_of(cwd: Path, *args: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    listed = shoal(cwd, "jobs", "--json", *args, env=env)
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout)["jobs"])


def test_afterwards_commands_read_the_runmaker_run_not_another(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("echo from-lines-file\n")
    (tmp_path / "b.rm").write_text(". echo from-runmaker; false\n")
    assert shoal(tmp_path, "run", "a.txt").returncode == 0
    ran = shoal(tmp_path, "run", "b.rm")
    assert ran.returncode == 1
    assert "failed line 1 (#1) (exit code 1): echo from-runmaker; false" in ran.stderr
    # Its state is a run of its own, beside the lines file's, and the last run.
    state = tmp_path / ".shoal" / "runs" / "b.rm"
    assert (state / "shoal.db").is_file()
    assert (tmp_path / ".shoal" / "last").read_text().strip() == "runs/b.rm"
    assert (tmp_path / ".shoal" / "runs" / "a.txt" / "shoal.db").is_file()
    assert not (tmp_path / ".shoal" / "shoal.db").exists()

    logs = shoal(tmp_path, "logs", "1")
    assert (logs.returncode, logs.stdout) == (0, "from-runmaker\n"), logs.stderr
    status = shoal(tmp_path, "status", "1", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["cmd"] == "echo from-runmaker; false"
    assert [job["cmd"] for job in jobs_of(tmp_path)] == ["echo from-runmaker; false"]
    # The summary says nothing of --state-dir: `shoal logs` here reads this run.
    assert "a job's whole output: shoal logs ID [--stderr] (ID is the #)" in ran.stderr

    # The lines file's run is still there, and the last again once run again.
    assert shoal(tmp_path, "run", "a.txt", "--fresh").returncode == 0
    assert shoal(tmp_path, "logs", "1").stdout == "from-lines-file\n"
    assert shoal(tmp_path, "logs", "1", "--state-dir", str(state)).stdout == "from-runmaker\n"


def test_an_older_version_s_runmaker_state_is_left_alone(tmp_path: Path) -> None:
    """Older versions kept a runmaker file's history in `.shoal/` itself: it stays as it is,
    and the afterwards commands read the new run."""
    from shoal.store import Store

    (tmp_path / ".shoal").mkdir(mode=0o700)
    Store(tmp_path / ".shoal" / "shoal.db").close()
    (tmp_path / "b.rm").write_text(". echo new-layout\n")
    ran = shoal(tmp_path, "run", "b.rm")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / ".shoal" / "shoal.db").is_file()
    assert shoal(tmp_path, "logs", "1").stdout == "new-layout\n"


def test_a_runmaker_run_under_shoal_home_is_named_by_its_file_and_directory(
        tmp_path: Path) -> None:
    home = tmp_path / "shared-home"
    env = {"SHOAL_HOME": str(home)}
    for name in ("one", "two"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "runs.rm").write_text(f". echo in-{name}\n")
        ran = shoal(directory, "run", "runs.rm", "--json", env=env)
        assert ran.returncode == 0, ran.stderr
        logs = shoal(directory, "logs", "1", env=env)
        assert (logs.returncode, logs.stdout) == (0, f"in-{name}\n"), logs.stderr
    assert not (home / "shoal.db").exists()  # $SHOAL_HOME's own database is no run's
    assert len(list((home / "runs").glob("runs.rm-*"))) == 2


def test_concurrent_runners_of_one_file_keep_their_state_in_the_file_s_run(
        tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    (tmp_path / "runs.rm").write_text("".join(
        f". echo {n} >> {started}; while [ ! -e {gate} ]; do sleep 0.05; done; echo {n}\n"
        for n in (1, 2)))
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("SHOAL_HOME", "SHOAL_SERVER", "SHOAL_TOKEN")}

    def runner() -> subprocess.Popen[str]:
        return subprocess.Popen([*SHOAL, "run", "runs.rm", "-j", "1"], cwd=tmp_path,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=environment)

    def ran(*jobs: str) -> bool:
        return started.exists() and started.read_text().split() == list(jobs)

    runners = [runner()]
    try:
        wait_until(lambda: ran("1"), 60, message="the first runner's job")
        runners.append(runner())
        wait_until(lambda: ran("1", "2"), 60, message="the second runner's job")
    finally:
        gate.touch()
    for process in runners:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    run = tmp_path / ".shoal" / "runs" / "runs.rm"
    assert (run / "shoal.db").is_file() and (run / "runners" / "2" / "shoal.db").is_file()
    assert [job["cmd"] for job in jobs_of(tmp_path, "--state-dir", str(run))] == [
        f"echo 1 >> {started}; while [ ! -e {gate} ]; do sleep 0.05; done; echo 1"]
    # The runner that started last is the last run: `shoal logs` reads it.
    assert (tmp_path / ".shoal" / "last").read_text().strip() == "runs/runs.rm/runners/2"
    assert shoal(tmp_path, "logs", "1").stdout == "2\n"


def test_identical_lines_are_jobs_of_their_own_and_run_at_once(tmp_path: Path) -> None:
    """Two identical lines are two jobs, running at the same time (each waits here until both
    have started); a second file with the same commands has jobs of its own."""
    both = (f"echo x >> {tmp_path}/started-$FILE; for i in $(seq 200); do "
            f"[ $(wc -l < {tmp_path}/started-$FILE) -ge 2 ] && exit 0; sleep 0.05; done; "
            "exit 1")
    for name in ("first.rm", "second.rm"):
        (tmp_path / name).write_text(f"# twins\n. {both}\n. {both}\n. echo y >> out2\n"
                                     ". echo y >> out2\n")
    ran = shoal(tmp_path, "run", "first.rm", "-j", "4", env={"FILE": "first"})
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "first.rm").read_text().startswith("# twins\nd ")
    assert (tmp_path / "out2").read_text() == "y\ny\n"
    first_jobs = jobs_of(tmp_path)
    assert sorted(job["id"] for job in first_jobs) == [1, 2, 3, 4]
    assert all(job["state"] == "done" for job in first_jobs)
    assert ran.stderr.startswith("4 done, 0 failed of 4")
    named = {line.split()[1] + " " + line.split()[2] for line in ran.stderr.splitlines()
             if line.startswith("  ") and "s  line " in line}
    assert len(named) == 3  # the three slowest, each a job of its own
    assert named <= {"line 2", "line 3", "line 4", "line 5"}

    again = shoal(tmp_path, "run", "second.rm", "-j", "4", env={"FILE": "second"})
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out2").read_text() == "y\ny\ny\ny\n"
    second_jobs = jobs_of(tmp_path)
    assert sorted(job["id"] for job in second_jobs) == [1, 2, 3, 4]
    assert {job["group"] for job in second_jobs} == {"second.rm"}
    # The first file's jobs are as they were: nothing of them reused or run again.
    first_state = tmp_path / ".shoal" / "runs" / "first.rm"
    assert jobs_of(tmp_path, "--state-dir", str(first_state)) == first_jobs


def test_summary_goes_to_stderr_names_lines_and_leaves_failures_out_of_the_slowest(
        tmp_path: Path) -> None:
    (tmp_path / "runs.rm").write_text("# ids and lines differ\n\n. echo ok\n"
                                      ". sleep 0.4; echo bad >&2; exit 4\n. true\n")
    ran = shoal(tmp_path, "run", "runs.rm", "-j", "3")
    assert ran.returncode == 1
    assert ran.stdout == ""  # stdout holds only data
    lines = ran.stderr.splitlines()
    assert lines[0].startswith("2 done, 1 failed of 3 in ")
    assert "failed line 4 (#2) (exit code 4): sleep 0.4; echo bad >&2; exit 4" in lines
    assert "    bad" in lines
    slowest = lines[lines.index("slowest:") + 1:lines.index("slowest:") + 3]
    assert sorted(text.split("  ")[2] for text in slowest) == ["line 3 (#1)", "line 5 (#3)"]
    assert not any("sleep 0.4" in text for text in slowest)

    (tmp_path / "runs.rm").write_text("# ids and lines differ\n\n. echo ok\n"
                                      ". sleep 0.4; echo bad >&2; exit 4\n. true\n")
    as_json = shoal(tmp_path, "run", "runs.rm", "-j", "3", "--json")
    assert as_json.returncode == 1
    summary = json.loads(as_json.stdout)
    assert sorted((job["line"], job["id"]) for job in summary["slowest"]) == [(3, 4), (5, 6)]
    assert [(job["line"], job["id"], job["reason"]) for job in summary["failures"]] == [
        (4, 5, "exit code 4")]
    assert summary["state_dir"] == str((tmp_path / ".shoal" / "runs" / "runs.rm").resolve())


@pytest.mark.parametrize("runmaker", [False, True], ids=["lines", "runmaker"])
def test_summary_removes_control_sequences_of_what_jobs_wrote(tmp_path: Path,
                                                              runmaker: bool) -> None:
    mark = ". " if runmaker else ""
    (tmp_path / "runs.txt").write_text(f"{mark}{RED}\n{mark}{TITLE}\n")
    # A lines file's jobs' own output is printed as they wrote it: --quiet leaves the summary.
    ran = shoal(tmp_path, "run", "runs.txt", "-j", "1", *(() if runmaker else ("--quiet",)))
    assert ran.returncode == 1
    lines = ran.stderr.splitlines()
    assert "    red" in lines and "    err" in lines, ran.stderr
    assert "\x1b" not in ran.stderr and "\x07" not in ran.stderr
    assert "?[31m" not in ran.stderr and "?]0;" not in ran.stderr
    # What `shoal status` shows of the same job.
    status = shoal(tmp_path, "status", "1")
    assert status.stdout.rstrip().endswith("  red"), status.stdout

"""`shoal run` as GNU parallel and xargs users use it: output, stdin, arguments, state per input,
controls, --joblog, --results, and reading a run's state afterwards with no server."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from shoal.core.models import MAX_COMMAND_BYTES
from tests.system import require

from .cluster import SHOAL, wait_until


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("SHOAL_HOME", "SHOAL_SERVER", "SHOAL_TOKEN")}
    return {**environment, **(extra or {})}


def shoal(cwd: Path, *args: str, stdin: str | None = None, timeout: float = 120,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    home = {"HOME": str(cwd / "home")}  # no server anywhere: ~/.shoal is empty
    return subprocess.run([*SHOAL, *args], cwd=cwd, text=True, capture_output=True,
                          input=stdin if stdin is not None else "", timeout=timeout,
                          env=_env({**home, **(env or {})}))


def test_grouped_output_is_whole_and_tagged_in_order(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    # Each job writes three lines with pauses, so unbuffered they would interleave.
    jobs.write_text("".join(f"for k in 1 2 3; do echo job{i} line$k; sleep 0.0{i}; done\n"
                            for i in range(1, 5)))
    result = shoal(tmp_path, "run", "jobs.txt", "-j", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    for start in range(0, 12, 3):
        block = lines[start:start + 3]
        job = block[0].split()[0]
        assert block == [f"{job} line1", f"{job} line2", f"{job} line3"]
    assert "4 done, 0 failed of 4" in result.stderr  # the summary is not in the output

    tagged = shoal(tmp_path, "run", "jobs.txt", "-j", "4", "-k", "--tag", "--fresh")
    assert tagged.stdout.splitlines() == [f"{i}\tjob{i} line{k}" for i in range(1, 5)
                                          for k in (1, 2, 3)]
    quiet = shoal(tmp_path, "run", "jobs.txt", "--quiet", "--fresh")
    assert quiet.stdout == "" and "4 done" in quiet.stderr


@pytest.mark.parametrize("flag", ["--line-buffer", "--lb", "-u", "--ungroup"])  # parallel's
def test_line_buffer_shows_lines_while_the_job_runs(tmp_path: Path, flag: str) -> None:
    gate = tmp_path / "gate"
    process = subprocess.Popen(
        [*SHOAL, "run", flag, "-j", "1", "--",
         f"echo first; while ! test -f {gate}; do sleep 0.05; done; echo second"],
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env({"HOME": str(tmp_path)}))
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"x\n")
    process.stdin.close()
    first = process.stdout.readline()  # arrives while the job waits for the gate
    assert first == b"first x\n" or first == b"first\n"
    gate.touch()
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 0
    assert rest.strip().endswith(b"second x") or rest.strip().endswith(b"second")


def test_line_buffer_in_order_prints_the_oldest_live_and_holds_the_rest(
        tmp_path: Path) -> None:
    """-k with --lb, as GNU parallel: the oldest job's lines as they come; a later job's,
    though it has ended, only once every job before it has been printed."""
    gate, done = tmp_path / "gate", tmp_path / "two-done"
    command = (f"if [ {{}} = 1 ]; then echo one-1; while ! test -f {gate}; do sleep 0.05; "
               f"done; echo one-2; else echo two; touch {done}; fi")
    process = subprocess.Popen(
        [*SHOAL, "run", "-k", "--lb", "-j", "2", command, ":::", "1", "2"], cwd=tmp_path,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env({"HOME": str(tmp_path)}))
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == b"one-1\n"  # while the job waits for the gate
        wait_until(done.exists, timeout=60, message="the second job to end")
        time.sleep(0.5)  # several reads of the running jobs' output
        ready, _, _ = select.select([process.stdout], [], [], 0)
        assert not ready  # "two" is held: the first job has not ended
        gate.touch()
        assert process.stdout.read() == b"one-2\ntwo\n"
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()


def test_line_buffer_in_order_as_gnu_parallel(tmp_path: Path) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    args = ["-k", "--lb", "-j", "3", "echo a{}; sleep 0.{}; echo b{}", ":::", "3", "1", "2"]
    ours = shoal(tmp_path, "run", *args)
    theirs = subprocess.run(["parallel", "--will-cite", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout == "a3\nb3\na1\nb1\na2\nb2\n"


def test_stdin_jobs_start_before_the_input_ends(tmp_path: Path) -> None:
    started = tmp_path / "started"
    process = subprocess.Popen([*SHOAL, "run", "-j", "2"], cwd=tmp_path, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env({"HOME": str(tmp_path)}))
    assert process.stdin is not None
    process.stdin.write(f"touch {started}; echo a\n")
    process.stdin.flush()
    wait_until(started.exists, timeout=30, message="the first line ran with stdin still open")
    process.stdin.write("echo b\necho a\n")
    process.stdin.close()
    process.stdin = None  # closed: communicate() only reads
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert sorted(out.split()) == ["a", "a", "b"]  # identical lines are two jobs


def test_placeholders_sources_and_dry_run(tmp_path: Path) -> None:
    result = shoal(tmp_path, "run", "-k", "-j", "2",
                   "echo {} {.} {/} {//} {/.} {#}", ":::", "dir/a.tar.gz", "b c.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["dir/a.tar.gz dir/a.tar a.tar.gz dir a.tar 1",
                                          "b c.txt b c b c.txt . b c 2"]
    product = shoal(tmp_path, "run", "-k", "echo", ":::", "1", "2", ":::", "x", "y")
    assert product.stdout.splitlines() == ["1 x", "1 y", "2 x", "2 y"]
    (tmp_path / "args").write_text("p\nq\n")
    numbered = shoal(tmp_path, "run", "-k", "echo {2}-{1}", ":::", "A", "::::", "args")
    assert numbered.stdout.splitlines() == ["p-A", "q-A"]
    # The command's own options stay its own.
    dry = shoal(tmp_path, "run", "--dry-run", "gzip", "-9", "{}", ":::", "a b.csv", "$HOME")
    assert dry.returncode == 0 and dry.stdout.splitlines() == ["gzip -9 'a b.csv'",
                                                               "gzip -9 '$HOME'"]
    assert not (tmp_path / "a b.csv.gz").exists()
    templated = shoal(tmp_path, "run", "-k", "echo got {}", stdin="x\ny\n")
    assert templated.stdout.splitlines() == ["got x", "got y"]


def test_a_file_then_options_with_placeholders_is_still_the_file(tmp_path: Path) -> None:
    """`shoal run jobs.txt --tagstring {#}`: options after FILE whose values hold
    placeholders leave FILE a file of commands, whether or not lines are piped in; a
    command's own options still make it a command."""
    (tmp_path / "jobs.txt").write_text("echo one\necho two\n")
    tagged = shoal(tmp_path, "run", "jobs.txt", "--tagstring", "L{#}", "-k", "-j", "2")
    assert tagged.returncode == 0 and tagged.stdout.splitlines() == ["L1\tone", "L2\ttwo"]
    (tmp_path / "more.txt").write_text("echo one\necho two\n")
    dry = shoal(tmp_path, "run", "more.txt", "--tagstring", "{#}", "--dry-run",
                stdin="piped\n")
    assert dry.returncode == 0 and dry.stdout.splitlines() == ["echo one", "echo two"]
    (tmp_path / "gzip").write_text("")  # a file named like the command: still the command
    command = shoal(tmp_path, "run", "--dry-run", "gzip", "-9", "{}", stdin="a\n")
    assert command.returncode == 0 and command.stdout == "gzip -9 a\n", command.stdout


def test_slot_is_unique_among_running_jobs(tmp_path: Path) -> None:
    """`{%}` as GNU parallel's: 1..N, no two running jobs with one slot (a job takes its
    slot's lock directory, which fails if another running job holds it)."""
    (tmp_path / "locks").mkdir()
    command = ("mkdir locks/{%} && echo {%} >> slots && sleep 0.1$(( {#} % 3 )) "
               "&& rmdir locks/{%}")
    result = shoal(tmp_path, "run", "-j", "3", command, ":::", *map(str, range(12)))
    assert result.returncode == 0, result.stderr
    slots = (tmp_path / "slots").read_text().split()
    assert len(slots) == 12 and set(slots) == {"1", "2", "3"}
    dry = shoal(tmp_path, "run", "--dry-run", "CUDA_VISIBLE_DEVICES=$(( {%} - 1 )) t {}",
                ":::", "x")
    assert dry.stdout.splitlines() == ["CUDA_VISIBLE_DEVICES=$(( $SHOAL_SLOT - 1 )) t x"]


def test_dev_stdin_and_process_substitution(tmp_path: Path) -> None:
    script = (f"{' '.join(SHOAL)} run -k /dev/stdin < <(printf 'echo one\\necho two\\n'); "
              f"{' '.join(SHOAL)} run -k <(printf 'echo three\\n')")
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, text=True,
                            capture_output=True, timeout=120,
                            env=_env({"HOME": str(tmp_path)}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["one", "two", "three"]
    assert "/proc/" not in result.stderr


def test_each_file_has_its_own_state_and_two_run_at_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"echo {name} >> {ledger}\necho same >> {ledger}\n"
                                     f"echo same >> {ledger}\n")
    assert shoal(tmp_path, "run", "a.txt").returncode == 0
    second = shoal(tmp_path, "run", "b.txt", "--json")
    assert json.loads(second.stdout)["done"] == 3  # nothing of b skipped as a's
    assert ledger.read_text().split().count("same") == 4
    again = shoal(tmp_path, "run", "a.txt", "--json")
    assert json.loads(again.stdout)["skipped_done"] == 3
    fresh = shoal(tmp_path, "run", "a.txt", "--fresh", "--json")
    assert json.loads(fresh.stdout)["done"] == 3

    # Two files of one directory at the same time.
    gate = tmp_path / "gate"
    for name in ("c.txt", "d.txt"):
        (tmp_path / name).write_text(f"while ! test -f {gate}; do sleep 0.05; done; "
                                     f"echo {name}\n")
    runs = [subprocess.Popen([*SHOAL, "run", name], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=_env({"HOME": str(tmp_path)}))
            for name in ("c.txt", "d.txt")]
    wait_until(lambda: all((tmp_path / ".shoal" / "runs" / name / "shoal.db").exists()
                           for name in ("c.txt", "d.txt")), timeout=30,
               message="both runs started")
    gate.touch()
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["c.txt", "d.txt"]


def test_a_program_given_piped_lines_runs_once_per_line(tmp_path: Path) -> None:
    """`ls *.txt | shoal run ./process.sh` as xargs and GNU parallel read it: one word that
    is a program, with lines piped in, is the command; a file of commands that is not
    executable is still a FILE, and a name that is neither is still refused."""
    script = tmp_path / "process.sh"
    script.write_text('#!/bin/sh\necho "processing [$1]"\n')
    script.chmod(0o755)
    names = "a.txt\nb.txt\n"
    ours = shoal(tmp_path, "run", "-k", "./process.sh", stdin=names)
    theirs = subprocess.run(["xargs", "-n", "1", "./process.sh"], cwd=tmp_path, input=names,
                            capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0 and ours.stdout == theirs.stdout == (
        "processing [a.txt]\nprocessing [b.txt]\n"), ours.stderr
    on_path = shoal(tmp_path, "run", "-k", "echo", stdin="1\n2\n")
    assert on_path.returncode == 0 and on_path.stdout == "1\n2\n", on_path.stderr
    (tmp_path / "jobs.txt").write_text("echo from the file\n")
    as_file = shoal(tmp_path, "run", "jobs.txt", stdin=names)
    assert as_file.returncode == 0 and as_file.stdout == "from the file\n", as_file.stderr
    missing = shoal(tmp_path, "run", "missing.txt", stdin=names)
    assert missing.returncode == 2 and "missing.txt: cannot read the file" in missing.stderr


def test_interrupted_while_the_input_still_comes_is_a_partial_run(tmp_path: Path) -> None:
    """`(seq 3; sleep 20; ...) | shoal run 'echo {}'` and Ctrl-C while it waits for the rest:
    exit 130 and "interrupted", not 0 as if the input had ended."""
    ledger = tmp_path / "ledger"
    run = subprocess.Popen([*SHOAL, "run", f"echo {{}} >> {ledger}"], cwd=tmp_path,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=_env({"HOME": str(tmp_path / "home")}))
    assert run.stdin is not None and run.stdout is not None and run.stderr is not None
    run.stdin.write("1\n2\n3\n")
    run.stdin.flush()  # and held open: more may come
    try:
        wait_until(lambda: ledger.exists() and len(ledger.read_text().split()) == 3,
                   timeout=60, message="the three jobs done")
        time.sleep(0.3)  # their ends counted
        run.send_signal(signal.SIGINT)
        returncode = run.wait(timeout=60)  # stdin still open: no end of input to wait for
    finally:
        run.stdin.close()
        if run.poll() is None:
            run.kill()
    err = run.stderr.read()
    assert returncode == 130, err
    # stdin's run starts over when run again: finishing it takes --resume.
    assert re.search(r"^3 done, 0 failed of 3 in [0-9.]+s; interrupted, run it again with "
                     r"--resume to finish$", err, re.MULTILINE), err


def test_two_pipelines_in_one_directory_run_side_by_side(tmp_path: Path) -> None:
    """As two GNU parallels: a second `... | shoal run` (or the same command with other
    arguments) while the first runs gets a state of its own; `shoal logs` reads the last.
    A file, or stdin with --resume, is still one run at a time."""
    gate = tmp_path / "gate"
    command = f"if [ {{}} = A ]; then while ! test -f {gate}; do sleep 0.05; done; fi; echo {{}}"
    first = subprocess.Popen(
        [*SHOAL, "run", "-j", "2", command, ":::", "A"], cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env({"HOME": str(tmp_path)}))
    piped = subprocess.Popen(
        [*SHOAL, "run"], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env({"HOME": str(tmp_path)}))
    assert piped.stdin is not None
    piped.stdin.write(f"while ! test -f {gate}; do sleep 0.05; done; echo P\n")
    piped.stdin.flush()  # held open: the run stays on
    runs = tmp_path / ".shoal" / "runs"
    wait_until(lambda: len(list(runs.glob("*/shoal.db"))) == 2, timeout=30,
               message="both runs started")
    try:
        again = shoal(tmp_path, "run", "-j", "2", command, ":::", "B")
        assert again.returncode == 0 and again.stdout == "B\n", again.stderr
        alongside = shoal(tmp_path, "run", stdin="echo Q\n")
        assert alongside.returncode == 0 and alongside.stdout == "Q\n", alongside.stderr
        logs = shoal(tmp_path, "logs", "1")
        assert logs.returncode == 0 and logs.stdout == "Q\n", logs.stderr  # the last run's
        resumed = shoal(tmp_path, "run", "--resume", stdin="echo R\n")
        assert resumed.returncode == 2 and "another `shoal run` of it" in resumed.stderr
    finally:
        gate.touch()
        piped.stdin.close()
    piped.stdin = None  # closed above: nothing more for communicate to send
    outputs = [run.communicate(timeout=60) for run in (first, piped)]
    assert [run.returncode for run in (first, piped)] == [0, 0], outputs
    assert [out for out, _ in outputs] == ["A\n", "P\n"]
    states = sorted(path.name for path in runs.iterdir() if path.is_dir())
    assert states[2:] == ["stdin", "stdin.2"] and states[1] == states[0] + ".2", states


def test_summary_names_the_slowest_jobs_by_line(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("sleep 0.3\ntrue\nsleep 0.6\ntrue\nsleep 0.45\n"
                                       "false\n")
    result = shoal(tmp_path, "run", "jobs.txt", "-j", "3", "--json")
    slowest = json.loads(result.stdout)["slowest"]
    assert [(job["line"], job["cmd"]) for job in slowest] == [
        (3, "sleep 0.6"), (5, "sleep 0.45"), (1, "sleep 0.3")]  # done ones, slowest first
    assert slowest[0]["wall_seconds"] >= 0.6


def test_summary_numbers_arguments_by_their_set(tmp_path: Path) -> None:
    result = shoal(tmp_path, "run", "-j", "1", "exit {1}{2}", ":::", "0", "1", ":::", "0", "3")
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed ")]
    assert failed == ["failed argument set 2 (#2) (exit code 3): exit 03",
                      "failed argument set 3 (#3) (exit code 10): exit 10",
                      "failed argument set 4 (#4) (exit code 13): exit 13"]
    assert json.loads(shoal(tmp_path, "run", "--json", "exit {}", ":::", "4")
                      .stdout)["numbered_by"] == "argument set"
    # Piped, a long line of the summary stays whole, not wrapped at 80 columns.
    long = "x" * 150
    piped = shoal(tmp_path, "run", f"echo {{}} {long}; exit 1", ":::", "a")
    failed = [line for line in piped.stderr.splitlines() if line.startswith("failed ")]
    assert failed == [f"failed argument set 1 (#1) (exit code 1): echo a {long}; exit 1"], \
        piped.stderr


def test_resume_and_resume_failed(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"echo ok >> {ledger}\necho bad >> {ledger}; false\n")
    assert shoal(tmp_path, "run", "jobs.txt").returncode == 1
    resumed = shoal(tmp_path, "run", "jobs.txt", "--resume", "--json")
    summary = json.loads(resumed.stdout)
    assert (summary["skipped_done"], summary["skipped_failed"], summary["total"]) == (1, 1, 0)
    assert shoal(tmp_path, "run", "jobs.txt", "--resume-failed").returncode == 1
    lines = ledger.read_text().split()
    first_run, rerun = lines[:2], lines[2:]
    assert sorted(first_run) == ["bad", "ok"]  # both ran at once: either may end first
    assert rerun == ["bad"]  # only the failed one ran again
    # Arguments run again unless resumed, as GNU parallel runs them: from `:::` or a file.
    args = tmp_path / "args.txt"
    args.write_text("y\n")
    for _ in range(2):
        assert shoal(tmp_path, "run", f"echo {{}} >> {ledger}", ":::", "z").returncode == 0
        assert shoal(tmp_path, "run", f"echo file-{{}} >> {ledger}", "::::", "args.txt",
                     ).returncode == 0
    assert shoal(tmp_path, "run", "--resume", f"echo {{}} >> {ledger}", ":::", "z",
                 "w").returncode == 0
    assert ledger.read_text().split()[3:] == ["z", "file-y", "z", "file-y", "w"]


def test_jobs_at_once_in_gnu_parallels_forms(tmp_path: Path) -> None:
    """`-j 1%` is one job at a time on any machine of fewer than 200 cores: no two of the
    jobs' start-to-end spans overlap. `-j -1`, `-j+0` and `-j0` run too."""
    spans = tmp_path / "spans"
    record = f"s=$(date +%s.%N); sleep 0.2; echo $s $(date +%s.%N) >> {spans} # {{}}"
    assert shoal(tmp_path, "run", "-j", "1%", record, ":::", "a", "b", "c").returncode == 0
    intervals = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
    assert len(intervals) == 3
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(intervals))
    for form in ("-j-1", "-j+0", "-j0"):
        assert shoal(tmp_path, "run", form, "--json", "true {}", ":::", "1", "2").returncode == 0


def test_timeout_retries_memory_limit_delay_nice(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    result = shoal(tmp_path, "run", "--timeout", "1", "--retries", "2", "--json", "--",
                   f"echo x >> {counter}; sleep 30", ":::", "1")
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and summary["failed"] == 1
    assert "time limit" in str(summary["failures"][0]["reason"])
    assert counter.read_text().split() == ["x", "x", "x"]  # the first run and two retries

    hog = "python3 -c 'b = bytearray(300 * 2**20); import time; time.sleep(5)'"
    limited = shoal(tmp_path, "run", "--memory-limit", "100M", "--json", hog, ":::", "1")
    assert limited.returncode == 1
    assert "memory" in str(json.loads(limited.stdout)["failures"][0]["reason"])

    spaced = shoal(tmp_path, "run", "-j", "3", "-k", "--delay", "0.4",
                   "date +%s.%N; true {}", ":::", "1", "2", "3")
    starts = [float(line.split()[0]) for line in spaced.stdout.splitlines()]
    assert starts[2] - starts[0] >= 0.75  # no timing upper bound: the machine may be slow

    niced = shoal(tmp_path, "run", "--nice", "7", "ps -o ni= -p $$ # {}", ":::", "1")
    assert niced.stdout.split() == ["7"]


def test_halt_as_gnu_parallel(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("false\n" + "".join(f"sleep 0.2; echo {i} >> {ledger}\n"
                                        for i in range(20)))
    now = shoal(tmp_path, "run", "jobs.txt", "-j", "1", "--halt", "now,fail=1", "--json")
    summary = json.loads(now.stdout)
    assert now.returncode == 1 and summary["failed"] == 1 and summary["not_run"] == 20
    assert summary["halted"] == "--halt now,fail=1"
    assert not ledger.exists()

    success = shoal(tmp_path, "run", "--halt", "now,success=1", "-j", "2", "--json",
                    "sleep {}; echo {}", ":::", "0", "30")
    assert success.returncode == 0, success.stdout
    assert json.loads(success.stdout)["done"] == 1
    # The rule met is what counts, whatever failed before it (GNU parallel exits 0 too).
    after_failure = shoal(tmp_path, "run", "--halt", "now,success=1", "-j", "1", "--json",
                          "exit {}", ":::", "1", "0", "0")
    summary = json.loads(after_failure.stdout)
    assert (summary["failed"], summary["done"]) == (1, 1), summary
    assert after_failure.returncode == 0, after_failure.stderr
    # done=N: the exit is that of the job that met the rule, as GNU parallel's.
    for code, expected in (("0", 0), ("3", 1)):
        ended = shoal(tmp_path, "run", "--halt", "now,done=1", "--json",
                      f"sleep {{}}; exit {code}", ":::", "0.1", "30")
        assert ended.returncode == expected, ended.stdout
        assert json.loads(ended.stdout)["not_run"] == 1
    bad = shoal(tmp_path, "run", "jobs.txt", "--halt", "later,fail=1")
    assert bad.returncode == 2 and "--halt" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_jobs_halted_before_they_start_are_left_out_of_results_and_joblog(
        tmp_path: Path) -> None:
    """As GNU parallel: with -j1 and --halt now,fail=1, the jobs after the failure never
    run, and neither --results nor --joblog has them."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    command = "echo {}; [ {} != 2 ]"
    shoal(tmp_path, "run", "-j", "1", "--halt", "now,fail=1", "--results", "ours",
          "--joblog", "ours.log", command, ":::", "1", "2", "3", "4")
    subprocess.run(["parallel", "--will-cite", "-j", "1", "--halt", "now,fail=1", "--joblog",
                    "theirs.log", command, ":::", "1", "2", "3", "4"], cwd=tmp_path,
                   capture_output=True, timeout=60)
    assert sorted(path.name for path in (tmp_path / "ours").iterdir()) == ["1", "2"]
    ours, theirs = (_joblog_kinds((tmp_path / name).read_text())
                    for name in ("ours.log", "theirs.log"))
    assert ours == theirs and [row[0] for row in ours[1]] == ["1", "2"]


def test_jobs_halted_while_held_by_the_runner_had_no_try(tmp_path: Path) -> None:
    """The jobs waiting in the runner when --halt now stops the run never had a process:
    afterwards they have no try, no start time and no attempt in their history, and the
    one that was running is the one killed by the halt."""
    (tmp_path / "jobs.txt").write_text("sleep 0.3; exit 1\n" + "sleep 30\n" * 4)
    run = shoal(tmp_path, "run", "jobs.txt", "-j", "2", "--halt", "now,fail=1", "--json")
    assert run.returncode == 1 and json.loads(run.stdout)["not_run"] == 4, run.stdout
    jobs = {job["id"]: job for job in json.loads(shoal(tmp_path, "jobs", "--json").stdout)["jobs"]}
    assert (jobs[2]["attempts"], jobs[2]["fail_reason"]) == (1, "killed by --halt now")
    for job_id in (3, 4, 5):
        assert (jobs[job_id]["state"], jobs[job_id]["attempts"]) == ("cancelled", 0)
        assert jobs[job_id]["started_at"] is None
        status = json.loads(shoal(tmp_path, "status", str(job_id), "--json").stdout)
        assert status["attempt_history"] == [], status
        assert status["fail_reason"] == "not started: the run stopped"


@pytest.mark.parametrize("halt", ["soon,fail=3", "soon,fail=10%"])
def test_halt_soon_starts_nothing_after_the_failure_that_halts(tmp_path: Path,
                                                               halt: str) -> None:
    """GNU parallel's `soon`: once the third of 30 jobs has failed, nothing more starts; only
    the job still running then (-j 2) may end too. The jobs waiting in the runner are not
    started meanwhile, nor handed back to be run later. GNU parallel, on the same file, runs
    as many."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    ledger = tmp_path / "ledger"
    (tmp_path / "jobs.txt").write_text("".join(f"echo {i} >> {ledger}; exit 1\n"
                                               for i in range(30)))
    result = shoal(tmp_path, "run", "jobs.txt", "-j", "2", "--halt", halt, "--json")
    summary = json.loads(result.stdout)
    ran = ledger.read_text().split()
    assert result.returncode == 1 and summary["halted"] == f"--halt {halt}"
    assert 3 <= len(ran) <= 4, ran
    assert (summary["failed"], summary["not_run"]) == (len(ran), 30 - len(ran))

    ledger.unlink()
    subprocess.run(["parallel", "--will-cite", "-j", "2", "--halt", halt, "::::", "jobs.txt"],
                   cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert 3 <= len(ledger.read_text().split()) <= 4


def test_results_directory(tmp_path: Path) -> None:
    result = shoal(tmp_path, "run", "--results", "out", "--quiet",
                   "echo out {}; echo err {} >&2; exit {}", ":::", "0", "3")
    assert result.returncode == 1
    one, two = tmp_path / "out" / "1", tmp_path / "out" / "2"
    assert (one / "stdout").read_text() == "out 0\n"
    assert (one / "stderr").read_text() == "err 0\n"
    assert (one / "exit_code").read_text() == "0\n"
    assert (two / "exit_code").read_text() == "3\n"
    assert (two / "cmd").read_text() == "echo out 3; echo err 3 >&2; exit 3\n"


def _joblog_kinds(text: str) -> tuple[str, list[list[str]]]:
    header, *rows = text.splitlines()
    kinds = []
    for row in rows:
        seq, host, start, runtime, send, receive, exitval, signal, command = row.split("\t")
        assert re.fullmatch(r"\d+\.\d{3}", start) and re.fullmatch(r" *\d+\.\d{3}", runtime)
        assert len(runtime) >= 10
        kinds.append([seq, host, send, receive, exitval, signal, command])
    return header, sorted(kinds)


@pytest.mark.parametrize(("colsep", "args", "stdin"), [
    (",", ["echo {2}-{1} [{3}]", "::::", "table.csv"], None),  # {3} past the columns: empty
    (",", ["echo {1}:{3} {}", "::::", "table.csv", ":::", "x,y"], None),  # numbered on
    ("\t", ["echo {} / {2}"], "a\tb c\nd\te  f\n"),  # a command over stdin's lines
    (", *", ["echo", ":::", "p, q,r"], None),  # a regular expression; no placeholder
])
def test_colsep_as_gnu_parallel(tmp_path: Path, colsep: str, args: list[str],
                                stdin: str | None) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    (tmp_path / "table.csv").write_text("a,b\nc,d e\n")
    ours = shoal(tmp_path, "run", "-k", "--colsep", colsep, *args, stdin=stdin)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", "--colsep", colsep, *args],
                            cwd=tmp_path, input=stdin, capture_output=True, text=True,
                            timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and ours.stdout.strip()


@pytest.mark.parametrize("args", [
    ["echo {1}-{2}", ":::", "a", "b", "c", ":::+", "1", "2"],  # linked: the shorter lasts
    ["echo", ":::", "a", "b", ":::", "1", "2", ":::+", "x", "y"],  # crossed, then linked
    ["--link", "echo {1}-{2}-{3}", ":::", "a", "b", "c", ":::", "1", "2", ":::", "x"],
    ["--xapply", "echo {1}-{2}", ":::", "a", "b", "c", ":::", "1", "2"],  # --link's old name
    ["echo {1}-{2}", ":::", "a", "b", "::::+", "letters.txt"],
    ["-a", "letters.txt", "echo", ":::+", "1", "2"],  # -a is crossed, even with :::+
    ["-a", "letters.txt", "-a", "digits.txt"],  # no command: the lines are the commands
    ["--tagstring", "T{2}#{#}", "echo x", ":::", "a b", ":::", "c"],  # unquoted, tab
    ["--tagstring", "{.}:", "echo", "::::", "letters.txt"],
    ["--header", ":", "echo size={size} threads={threads}", ":::", "size", "1", "2", ":::",
     "threads", "4", "8"],  # a sweep's parameters by name
    ["--header", ":", "--colsep", ",", "echo {name}-{age}", "::::", "people.csv"],
    ["--header", ":", "--tag", "echo '{x}{y} {print}'", ":::", "x", "1", "2"],  # others stay
])
def test_linked_sources_arg_files_and_tagstring_as_gnu_parallel(tmp_path: Path,
                                                                 args: list[str]) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    (tmp_path / "letters.txt").write_text("echo p.x\necho q.y\n")
    (tmp_path / "digits.txt").write_text("1\n2\n")
    (tmp_path / "people.csv").write_text("name,age\nann,3\nbob,4\n")
    ours = shoal(tmp_path, "run", "-k", *args)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and ours.stdout.strip()


@pytest.mark.parametrize(("args", "stdin"), [
    (["-N2", "echo"], "1\n2\n3\n4\n5\n"),  # the last job's arguments are fewer
    (["-N2", "echo {1}-{2}"], "1\n2\n3\n"),  # a {N} past them is empty
    (["-N2", "--tag", "echo", ":::", "a", "b", "c"], None),
    (["-N0", "echo x", ":::", "a", "b"], None),  # a job per argument, given none
    (["-N2", "echo {#}"], "1\n2\n3\n"),
    (["-0", "echo [{}]"], "a b\0c\nd\0e"),  # a newline inside an item is the item's
    (["-0", "echo [{}]", "::::", "items.bin"], None),
    (["-0", "-a", "items.bin", "echo {}"], None),
    (["-d", ":", "echo [{}]"], "a:b:c\n"),
    (["-d", "\\t", "echo"], "a\tb\t"),
    (["-d", "::", "echo"], "a::b"),
    (["-I", ",,", "echo ,,x ,,"], "a\nb c\n"),
    (["-I", "%", "echo", "%-%", ":::", "a", "b"], None),
    (["--header", ":", "--colsep", ",", "echo {age}:{name}"], "name,age\nann,3\nbob,4\n"),
    (["-N", "2", "echo", "-n"], "1\n2\n3\n4\n"),  # the command's own options are its own
    (["-N2", "echo {}.txt [{/}] {1}"], "a/1\nb/2\nc/3\n"),  # a word with {} for each
    (["-I", "%", "echo", "-n", "[%]"], "a\nb\n"),
])
def test_max_args_delimiters_and_replace_string_as_gnu_parallel(
        tmp_path: Path, args: list[str], stdin: str | None) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    (tmp_path / "items.bin").write_bytes(b"p q\0r\0")
    ours = shoal(tmp_path, "run", "-k", *args, stdin=stdin)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", *args], cwd=tmp_path,
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and ours.stdout.strip()


@pytest.mark.parametrize(("args", "stdin"), [
    (["echo {#}/{##}", ":::", "a", "b", "c"], None),
    (["echo {##}", ":::", "a", "b", ":::", "1", "2", "3"], None),  # every combination
    (["--link", "echo {##}", ":::", "a", "b", "c", ":::", "1"], None),
    (["-N2", "echo {#}/{##}"], "1\n2\n3\n4\n5\n"),  # jobs, not arguments
    (["echo {#}/{##} {}"], "a\nb c\n"),  # stdin is read to its end first
    (["-0", "echo [{}] {##}"], "a\0b c\0"),
    (["--header", ":", "echo {x}:{#}/{##}"], "x\n1\n2\n"),
    (["--tagstring", "{#}/{##}", "echo", ":::", "x", "y"], None),
])
def test_number_of_jobs_as_gnu_parallel(tmp_path: Path, args: list[str],
                                        stdin: str | None) -> None:
    """`{##}`, which GNU parallel fills with --plus; shoal always does."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    ours = shoal(tmp_path, "run", "-k", *args, stdin=stdin)
    theirs = subprocess.run(["parallel", "--will-cite", "--plus", "-k", *args], cwd=tmp_path,
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and ours.stdout.strip()


@pytest.mark.parametrize(("args", "stdin"), [
    (["-j2", "-X", "echo"], "".join(f"{i}\n" for i in range(1, 11))),  # 2 jobs of 5
    (["-j3", "-m", "echo"], "".join(f"{i}\n" for i in range(1, 11))),  # 4, 4 and 2
    (["-j1", "-X", "echo x{}y"], "a\nb\nc\n"),  # the word is repeated for each
    (["-j2", "-m", "echo x{}y"], "a\nb\nc\n"),  # {} is all of them
    (["-j2", "-X", "echo {#}:{}"], "a\nb\nc\nd\ne\n"),
    (["-j2", "-X", "echo", ":::", "a", "b", "c", "d", "e"], None),
    (["-j2", "-m", "--tagstring", "{#}", "echo", ":::", "a", "b", "c"], None),
    (["-j2", "-X", "-I", "%", "echo", "x%y", ":::", "a b", "c", "d"], None),
])
def test_many_arguments_a_job_as_gnu_parallel(tmp_path: Path, args: list[str],
                                              stdin: str | None) -> None:
    """-X and -m: few arguments are spread over the -j jobs, as parallel does."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    ours = shoal(tmp_path, "run", "-k", *args, stdin=stdin)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", *args], cwd=tmp_path,
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and ours.stdout.strip()


def test_many_arguments_a_job_stay_within_a_command(tmp_path: Path) -> None:
    """100,000 arguments: each once, in order, in commands no longer than one may be."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    numbers = "".join(f"{i}\n" for i in range(1, 100_001))
    ours = shoal(tmp_path, "run", "-k", "-j2", "-m", "echo", stdin=numbers)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", "-j2", "-m", "echo"],
                            cwd=tmp_path, input=numbers, capture_output=True, text=True,
                            timeout=120)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout.split() == theirs.stdout.split() == numbers.split()
    lines = ours.stdout.splitlines()
    assert len(lines) > 2  # more than the -j 2 spread: the size of a command cut them
    assert max(len(f"echo {line}".encode()) for line in lines) <= MAX_COMMAND_BYTES
    # -X repeats the word holding {} for each argument: every copy counts
    word = "echo {#}/{##} " + "w" * 40 + "{}"
    repeated = shoal(tmp_path, "run", "-X", "--dry-run", word, stdin=numbers)
    assert repeated.returncode == 0, repeated.stderr
    commands = repeated.stdout.splitlines()
    assert max(len(command.encode()) for command in commands) <= MAX_COMMAND_BYTES
    assert sum(command.count("w" * 40) for command in commands) == 100_000


def _numbers(count: int) -> str:
    return "".join(f"{i}\n" for i in range(1, count + 1))


@pytest.mark.parametrize(("args", "stdin"), [
    (["--pipe", "--block", "100", "wc", "-c"], _numbers(1000)),  # cut at the last whole line
    (["--pipe", "--block", "1k", "wc", "-l"], _numbers(10_000)),  # k: 1000s
    (["--pipe", "--block", "1K", "wc", "-l"], _numbers(10_000)),  # K: 1024s
    (["--pipe", "wc", "-l"], _numbers(300_000)),  # 1M blocks by default
    (["--pipe", "--block", "20", "echo {#}; cat"], "ab\ncd\nef\ngh\nij\nkl\nmn\nop\nq"),
    (["--pipe", "--header", ":", "--block", "10", "cat; echo ---"], "h\n" + _numbers(12)),
    (["--pipe", "--header", ":", "--block", "1k", "wc -l"], "name,n\n" + _numbers(5000)),
])
def test_pipe_as_gnu_parallel(tmp_path: Path, args: list[str], stdin: str) -> None:
    """--pipe: each block of whole lines is one job's stdin, cut where parallel cuts."""
    require(shutil.which("parallel") is not None, "GNU parallel")
    ours = shoal(tmp_path, "run", "-k", *args, stdin=stdin)
    theirs = subprocess.run(["parallel", "--will-cite", "-k", *args], cwd=tmp_path,
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and len(ours.stdout.splitlines()) > 1


def test_pipe_keeps_a_failed_blocks_bytes_for_its_retry_and_nothing_else(
        tmp_path: Path) -> None:
    numbers = _numbers(12)  # blocks of 6 bytes: 1-3, 4-6, 7-9, 10-11 and 12
    command = "cat > out.{#}; test -e fixed || ! grep -qx 5 out.{#}"  # the 2nd fails once
    first = shoal(tmp_path, "run", "--pipe", "--block", "6", command, stdin=numbers)
    assert first.returncode == 1 and "4 done, 1 failed of 5" in first.stderr, first.stderr
    [home] = (tmp_path / ".shoal" / "runs").iterdir()
    kept = list((home / "blocks").iterdir())
    assert [path.name for path in kept] == ["2"]  # the failed job's block, and only it
    assert kept[0].read_text() == "4\n5\n6\n"
    (tmp_path / "out.2").unlink()
    (tmp_path / "fixed").touch()
    again = shoal(tmp_path, "run", "--pipe", "--block", "6", "--resume-failed", command,
                  stdin=numbers)
    assert again.returncode == 0 and "1 done, 0 failed of 1" in again.stderr, again.stderr
    assert (tmp_path / "out.2").read_text() == "4\n5\n6\n"  # the same bytes, run again
    assert not any((home / "blocks").iterdir())
    dry = shoal(tmp_path, "run", "--pipe", "--block", "6", "--dry-run", "wc -l", stdin=numbers)
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 5
    assert dry.stdout.splitlines()[0].endswith("/blocks/1; wc -l")
    assert len(list((tmp_path / ".shoal" / "runs").iterdir())) == 1  # the dry run wrote none


def test_pipe_reads_on_as_jobs_end(tmp_path: Path) -> None:
    """Blocks are read as jobs take them: with -j 1, a few are on the disk at a time, not all
    of a large input at once (parallel reads no further ahead either)."""
    lines = "".join(f"{i:0999d}\n" for i in range(60))  # 60 blocks of 1000 bytes
    count = 'ls "$(dirname "$(readlink /proc/self/fd/0)")" | wc -l; sleep 0.02'
    result = shoal(tmp_path, "run", "--pipe", "--block", "1k", "-j", "1", count, stdin=lines)
    assert result.returncode == 0 and "60 done" in result.stderr, result.stderr
    on_disk = [int(line) for line in result.stdout.split()]
    assert len(on_disk) == 60 and max(on_disk) <= 4  # -j 1: two a slot and two more


def test_number_of_jobs_of_a_file_of_commands_and_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("echo hi\necho ho\n")
    tagged = shoal(tmp_path, "run", "-k", "--tagstring", "{#}/{##}", "jobs.txt")
    assert tagged.returncode == 0, tagged.stderr
    assert tagged.stdout == "1/2\thi\n2/2\tho\n"
    nothing = shoal(tmp_path, "run", "echo {##}", stdin="")
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout == "" and "of 0" in nothing.stderr
    # stdin read whole is still stdin: a second run starts over, as a stream's does
    again = [shoal(tmp_path, "run", "-k", "echo {#}/{##}", stdin="a\nb\n") for _ in range(2)]
    assert [run.stdout for run in again] == ["1/2\n2/2\n"] * 2, again[1].stderr


def test_workdir_as_gnu_parallel_and_under_a_wr_lines_own(tmp_path: Path) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    (tmp_path / "sub").mkdir()
    ours = shoal(tmp_path, "run", "-k", "--wd", "sub", "pwd", ":::", "x")
    theirs = subprocess.run(["parallel", "--will-cite", "-k", "--wd", "sub", "pwd", ":::", "x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout == f"{tmp_path / 'sub'}\n"
    (tmp_path / "jobs.wr").write_text('pwd\t{"cwd": "/tmp"}\npwd\n')
    mixed = shoal(tmp_path, "run", "-k", "--wd", "sub", "--format", "wr", "jobs.wr")
    assert mixed.stdout == f"/tmp\n{tmp_path / 'sub'}\n", mixed.stderr
    missing = shoal(tmp_path, "run", "--wd", "nowhere", "pwd", ":::", "x")
    assert missing.returncode == 2 and missing.stderr == "shoal: --wd nowhere: no such directory\n"
    assert not (tmp_path / "nowhere").exists()  # parallel makes it; shoal changes nothing


def test_shuf_runs_every_job_once_in_a_new_order_numbered_in_it(tmp_path: Path) -> None:
    """GNU parallel's --shuf: `{#}` counts in the shuffled order; -k keeps that order."""
    values = [f"v{i}" for i in range(30)]
    result = shoal(tmp_path, "run", "-j", "1", "-k", "--shuf", "echo {#} {}", ":::", *values)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [int(number) for number, _ in lines] == list(range(1, 31))
    ran = [value for _, value in lines]
    assert sorted(ran) == sorted(values) and ran != values  # 1 chance in 30! to be wrong
    refused = shoal(tmp_path, "run", "--shuf", "echo", stdin="a\nb\n")
    assert refused.returncode == 2 and "--shuf: shuffles arguments" in refused.stderr


def test_xargs_forms_null_and_replace_string(tmp_path: Path) -> None:
    """`find -print0 | xargs -0 -n1 CMD` and `xargs -I % CMD %`: the same jobs."""
    names = ["a b.txt", "c\nd.txt", "$e.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    listing = subprocess.run(["find", ".", "-name", "*.txt", "-print0"], cwd=tmp_path,
                             capture_output=True, check=True).stdout.decode()
    ours = shoal(tmp_path, "run", "-k", "-0", "-N1", "ls", stdin=listing)
    theirs = subprocess.run(["xargs", "-0", "-n1", "ls"], cwd=tmp_path, input=listing,
                            capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout and len(ours.stdout.splitlines()) >= 3
    packed = shoal(tmp_path, "run", "-j", "1", "-0", "-m", "ls", "-1", stdin=listing)
    theirs = subprocess.run(["xargs", "-0", "ls", "-1"], cwd=tmp_path, input=listing,
                            capture_output=True, text=True, timeout=60)
    assert packed.stdout == theirs.stdout and "1 done" in packed.stderr  # one ls for all
    words = "one\ntwo words\n"
    ours = shoal(tmp_path, "run", "-k", "-I", "%", "echo", "[%]", stdin=words)
    theirs = subprocess.run(["xargs", "-I", "%", "echo", "[%]"], cwd=tmp_path, input=words,
                            capture_output=True, text=True, timeout=60)
    assert ours.stdout == theirs.stdout == "[one]\n[two words]\n"
    # -0 and -d keep an empty item as an empty argument, as xargs does (a blank line of
    # plain stdin is skipped, as xargs skips it).
    for delimiter, given in ((["-0"], "a\0\0b\0"), (["-d", ","], "a,,b")):
        ours = shoal(tmp_path, "run", "-k", *delimiter, "echo", "X", stdin=given)
        theirs = subprocess.run(["xargs", *delimiter, "-n1", "echo", "X"], cwd=tmp_path,
                                input=given, capture_output=True, text=True, timeout=60)
        assert ours.stdout == theirs.stdout == "X a\nX \nX b\n", (delimiter, ours.stderr)


def test_an_empty_source_runs_nothing_and_succeeds(tmp_path: Path) -> None:
    """As GNU parallel: nothing after `:::`, an empty `::::` or `-a` file, alone or crossed
    with other sources, is no job, and exit 0."""
    (tmp_path / "empty.txt").write_text("")
    ledger = tmp_path / "ledger"
    for args in (["-a", "empty.txt", f"echo >> {ledger}"],
                 [f"echo {{}} >> {ledger}", "::::", "empty.txt"],
                 [f"echo {{}} >> {ledger}", ":::"],
                 [f"echo {{1}} {{2}} >> {ledger}", ":::", "a", "::::", "empty.txt"]):
        ran = shoal(tmp_path, "run", "--json", *args)
        assert ran.returncode == 0, (args, ran.stderr)
        summary = json.loads(ran.stdout)
        assert (summary["total"], summary["done"], summary["failed"]) == (0, 0, 0), args
    assert not ledger.exists()


def test_argument_option_refusals(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "jobs.txt").write_text("true\n")
    for args, message in ((["--link", "echo"], "--link: links sources"),
                          (["--tagstring", "{%}", "echo", ":::", "a"], "--tagstring: {%}"),
                          (["--tagstring", "{3}", "echo", ":::", "a"], "--tagstring: {3}"),
                          (["-a", "missing.txt", "echo"], "-a missing.txt: cannot read it"),
                          (["-n", "2", "echo", ":::", "a"], "xargs' -n (arguments a job) is -N"),
                          (["-n", "2", "jobs.txt"], "-n: applies to runmaker files only"),
                          (["--memory-limit", "100P", "echo", ":::", "a"],
                           "--memory-limit 100P: more than this machine has"),
                          (["echo", "::::", "missing.txt"], ":::: missing.txt: cannot read"),
                          (["-N", "2", "jobs.txt"], "-N: for arguments"),
                          (["-0", "jobs.txt"], "-0/-d: for arguments"),
                          (["-0", "-d", ":", "echo", ":::", "a"], "-0 and -d"),
                          (["-d", "", "echo", ":::", "a"], "-d: the delimiter is empty"),
                          (["-N", "2", "echo", ":::", "a", ":::", "b"], "-N: groups"),
                          (["-I", "", "echo", ":::", "a"], "-I: the replacement string"),
                          (["-I", "%", ":::", "a"], "-I: stands for {} in a command"),
                          (["--header", ":", "echo", ":::", "x"], "has its name and no"),
                          (["--header", "1", "echo", ":::", "x", "a"], "--header: '1'"),
                          (["--header", ":", "jobs.txt"], "--header: for arguments"),
                          (["--timeout", "200%", "echo", ":::", "a"], "median run time"),
                          (["--tagstring", "{##}"], "--tagstring: {##}: the number of jobs"),
                          (["-X", "echo", ":::", "a", ":::", "b"], "-X: packs the arguments"),
                          (["-X", "-N", "2", "echo", ":::", "a"], "-X and -N: give one"),
                          (["-m", "jobs.txt"], "-m: for arguments"),
                          (["-m"], "-m: for arguments given to a command"),
                          (["--pipe"], "--pipe: give the command"),
                          (["--pipe", "cat", ":::", "a"], "--pipe: stdin is cut into blocks"),
                          (["--pipe", "-N", "2", "cat"], "not with -N"),
                          (["--block", "1k", "cat"], "--block: the size of --pipe's"),
                          (["--pipe", "--block", "0", "cat"], "--block: '0' is less than"),
                          (["--pipe", "--block", "1x", "cat"], "--block: '1x' is not a size"),
                          (["--pipe", "echo {##}"], "{##}: --pipe cuts stdin"),
                          (["--pipe", "--hosts", "h1", "cat"], "not with --hosts"),
                          (["-S", ":", "echo", ":::", "a"], "':' is this machine"),
                          (["--sshlogin", "4/node1", "echo", ":::", "a"],
                           "give the host alone ('node1')")):
        result = shoal(tmp_path, "run", *args)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert message in line, line
    assert not (tmp_path / ".shoal").exists()


def test_colsep_needs_arguments_and_a_separator(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("true\n")
    for args, message in ((["--colsep", ",", "jobs.txt"], "a file of commands has none"),
                          (["--colsep", "(", "echo {}", ":::", "a"], "not a regular expression"),
                          (["--colsep", "x*", "echo {}", ":::", "a"], "an empty string")):
        result = shoal(tmp_path, "run", *args)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("shoal: --colsep") and message in line, line
    assert not (tmp_path / ".shoal").exists()


def test_joblog_matches_gnu_parallel(tmp_path: Path) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    command = "echo out {}; echo err {} >&2; exit {}"
    ours = tmp_path / "shoal.log"
    theirs = tmp_path / "parallel.log"
    shoal(tmp_path, "run", "--joblog", str(ours), "--quiet", command, ":::", "0", "3")
    subprocess.run(["parallel", "--will-cite", "--joblog", str(theirs), command, ":::", "0",
                    "3"], cwd=tmp_path, capture_output=True, timeout=60)
    assert _joblog_kinds(ours.read_text()) == _joblog_kinds(theirs.read_text())

    killed_ours, killed_theirs = tmp_path / "k1.log", tmp_path / "k2.log"
    shoal(tmp_path, "run", "--joblog", str(killed_ours), "--quiet", "kill -9 $$", ":::", "1")
    subprocess.run(["parallel", "--will-cite", "--joblog", str(killed_theirs), "kill -9 $$",
                    ":::", "1"], cwd=tmp_path, capture_output=True, timeout=60)
    assert _joblog_kinds(killed_ours.read_text()) == _joblog_kinds(killed_theirs.read_text())

    # Ended by --timeout: Exitval -1 and the signal sent, in both.
    late_ours, late_theirs = tmp_path / "t1.log", tmp_path / "t2.log"
    shoal(tmp_path, "run", "--joblog", str(late_ours), "--quiet", "--timeout", "1", "sleep {}",
          ":::", "30")
    subprocess.run(["parallel", "--will-cite", "--joblog", str(late_theirs), "--timeout", "1",
                    "sleep {}", ":::", "30"], cwd=tmp_path, capture_output=True, timeout=60)
    timed_out = _joblog_kinds(late_ours.read_text())
    assert timed_out == _joblog_kinds(late_theirs.read_text())
    assert timed_out[1][0][4:6] == ["-1", "15"]


def test_joblog_plus_appends_as_gnu_parallel(tmp_path: Path) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    for value in ("a", "b"):
        shoal(tmp_path, "run", "--joblog", "+ours.log", "--quiet", "echo", ":::", value)
        subprocess.run(["parallel", "--will-cite", "--joblog", "+theirs.log", "echo", ":::",
                        value], cwd=tmp_path, capture_output=True, timeout=60)
    assert not (tmp_path / "+ours.log").exists()

    def rows(name: str) -> list[tuple[str, str]]:
        lines = (tmp_path / name).read_text().splitlines()
        return [(line.split("\t")[0], line.split("\t")[-1]) for line in lines]

    assert rows("ours.log") == rows("theirs.log") == [("1", "echo a"), ("1", "echo b")]


def test_pipe_joblog_counts_each_blocks_bytes_as_gnu_parallel(tmp_path: Path) -> None:
    require(shutil.which("parallel") is not None, "GNU parallel")
    ours, theirs = tmp_path / "shoal.log", tmp_path / "parallel.log"
    numbers = _numbers(100)
    shoal(tmp_path, "run", "--pipe", "--block", "100", "--joblog", str(ours), "--quiet",
          "cat", stdin=numbers)
    subprocess.run(["parallel", "--will-cite", "--pipe", "--block", "100", "--joblog",
                    str(theirs), "cat"], cwd=tmp_path, input=numbers, capture_output=True,
                   text=True, timeout=60)

    def sent_and_received(log: Path) -> list[tuple[str, str, str]]:
        rows = [line.split("\t") for line in log.read_text().splitlines()[1:]]
        return sorted((seq, send, receive) for seq, _, _, _, send, receive, *_ in rows)

    assert sent_and_received(ours) == sent_and_received(theirs)
    assert [send for _, send, _ in sent_and_received(ours)] == ["99", "99", "94"]


def test_logs_status_and_jobs_read_the_state_without_a_server(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo hello\necho oops >&2; exit 4\nsleep 0\n")
    assert shoal(tmp_path, "run", "jobs.txt", "--quiet").returncode == 1
    logs = shoal(tmp_path, "logs", "1")
    assert logs.returncode == 0 and logs.stdout == "hello\n"
    assert shoal(tmp_path, "logs", "2", "--stderr").stdout == "oops\n"
    status = shoal(tmp_path, "status", "2", "--json")
    job = json.loads(status.stdout)
    assert (job["state"], job["exit_code"]) == ("failed", 4)
    assert job["peak_rss_bytes"] < 40 * 2**20  # the job's own memory, not the runner's
    listed = shoal(tmp_path, "jobs", "--state", "failed", "--json")
    assert [entry["id"] for entry in json.loads(listed.stdout)["jobs"]] == [2]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    named = shoal(elsewhere, "jobs", "--state-dir", str(tmp_path / ".shoal"))
    assert named.returncode == 0 and "echo hello" in named.stdout
    nothing = shoal(elsewhere, "logs", "1")
    assert nothing.returncode == 3  # no server and no run here
    # A file in another directory keeps its state beside it: the summary says where to look.
    (elsewhere / "far.txt").write_text("echo far >&2; false\n")
    far = shoal(tmp_path, "run", "elsewhere/far.txt")
    hint = re.search(r"shoal logs ID \[--stderr\] --state-dir (\S+) \(ID is the #\)", far.stderr)
    assert far.returncode == 1 and hint is not None, far.stderr
    found = shoal(tmp_path, "logs", "1", "--stderr", "--state-dir", hint.group(1))
    assert found.returncode == 0 and found.stdout == "far\n", found.stderr
    plain = shoal(tmp_path, "run", "jobs.txt")  # its state is where `shoal logs` looks here
    assert "shoal logs ID [--stderr] (ID is the #)" in plain.stderr, plain.stderr


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    for args in (["run", "--timeout", "soon", "echo", ":::", "1"],
                 ["run", "--fresh", "--resume", "echo", ":::", "1"],
                 ["run", "echo {3}", ":::", "1"],
                 ["run", "-X", "-m", "echo", ":::", "1"]):
        result = shoal(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    stream = shoal(tmp_path, "run", "--format", "wr", stdin='echo a\necho b\t{"retries": x}\n')
    assert stream.returncode == 2 and "stdin:2" in stream.stderr


def test_terminal_bar_and_grouped_output_do_not_garble(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"echo begin{i}; sleep 0.1; echo end{i}\n" for i in range(12)))
    pid, fd = pty.fork()
    if pid == 0:  # the child: shoal with stdout and stderr on the terminal
        os.chdir(tmp_path)
        os.execvpe(SHOAL[0], [*SHOAL, "run", "jobs.txt", "-j", "3"],
                   _env({"HOME": str(tmp_path), "COLUMNS": "100"}))
    captured = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        captured += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = captured.decode("utf-8", "replace")
    assert "running" in text  # the bar was drawn
    # Take the bar's drawings away: what is left is the output, each job's lines together.
    plain = re.sub(r"\r\x1b\[K[^\r\n]*(?=\r\x1b\[K|$)", "", text)
    plain = plain.replace("\r\x1b[K", "").replace("\r\n", "\n")
    lines = [line for line in plain.split("\n") if line.startswith(("begin", "end"))]
    assert len(lines) == 24
    for first, second in zip(lines[::2], lines[1::2], strict=True):
        assert first.startswith("begin") and second == "end" + first.removeprefix("begin")


@pytest.mark.parametrize("form", ["file", "stdin"])
def test_per_line_options_in_a_wr_file(tmp_path: Path, form: str) -> None:
    counter = tmp_path / "count"
    line = f'echo x >> {counter}; false\t{{"retries": 2}}\n'
    if form == "file":
        (tmp_path / "jobs.wr").write_text(line)
        result = shoal(tmp_path, "run", "jobs.wr", "--retries", "0")
    else:
        result = shoal(tmp_path, "run", "--format", "wr", "-", stdin=line)
    assert result.returncode == 1
    assert counter.read_text().split() == ["x", "x", "x"]  # the line's retries beat the flag


def test_a_large_file_is_fed_as_the_queue_drains_and_a_late_bad_line_runs_nothing(
        tmp_path: Path) -> None:
    """A file is checked whole before anything runs, then read into the queue as jobs end:
    30,000 lines are never 30,000 queued jobs in memory, and the bar's total is the file's."""
    from shoal.run.driver import AHEAD

    ledger = tmp_path / "ledger"
    late = tmp_path / "late.txt"
    lines = [f"echo {i} >> {ledger}" for i in range(AHEAD + 2000)]
    lines[AHEAD + 1000] = 'echo bad\t{"retries": "many"}'
    late.write_text("\n".join(lines) + "\n")
    refused = shoal(tmp_path, "run", "late.txt", "--format", "wr")
    assert refused.returncode == 2, refused.stderr
    assert f"late.txt:{AHEAD + 1001}:" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert not ledger.exists()

    big = tmp_path / "big.txt"
    big.write_text("sleep 600\n" * 30_000)
    run = subprocess.Popen([*SHOAL, "run", "big.txt", "-j", "2", "--json"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env({"HOME": str(tmp_path / "home")}))
    database = tmp_path / ".shoal" / "runs" / "big.txt" / "shoal.db"
    try:
        def jobs_kept() -> int:
            if not database.exists():
                return 0
            try:
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                    return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
            except sqlite3.OperationalError:  # made, but its tables not yet
                return 0

        wait_until(lambda: jobs_kept() >= AHEAD, timeout=60, message="the first jobs fed")
        time.sleep(1.0)  # the feed waits for room: no more come while two jobs run
        assert jobs_kept() == AHEAD
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert json.loads(out)["total"] == 30_000

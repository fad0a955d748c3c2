"""`shoal run` refuses bad input whole: a file or a file of arguments with one bad line
anywhere runs nothing and leaves the state as it was, however long it is (its lines are
added to the run in batches of BATCH lines, so a bad line past the first batch is the test)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shoal.run.inputs import BATCH

from .cluster import SHOAL
from .test_run_parallel import shoal

MANY = BATCH + 1


def _refused_whole(tmp_path: Path, result: object, where: str) -> None:
    assert result.returncode == 2, result.stderr  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith(f"shoal: {where}: "), lines
    assert not (tmp_path / "ledger").exists()  # nothing ran
    assert not (tmp_path / ".shoal").exists()  # nothing was kept


@pytest.mark.parametrize("options, message", [
    ('{"memory": "900T"}', "bytes of memory, more than this machine has"),
    ('{"cwd": "relative/dir"}', "cwd: must be an absolute path"),
    ('{"deps": ["nowhere"]}', "group:nowhere has no jobs in this file"),
])
def test_a_bad_line_past_the_first_batch_of_a_wr_file_runs_nothing(
        tmp_path: Path, options: str, message: str) -> None:
    lines = [f"echo {n} >> ledger\t{{}}" for n in range(MANY)] + [f"echo bad\t{options}"]
    (tmp_path / "jobs.wr").write_text("\n".join(lines) + "\n")
    result = shoal(tmp_path, "run", "jobs.wr", "--format", "wr", "-j", "2")
    _refused_whole(tmp_path, result, f"jobs.wr:{MANY + 1}")
    assert message in result.stderr


def test_a_bad_argument_past_the_first_batch_runs_nothing(tmp_path: Path) -> None:
    (tmp_path / "args").write_bytes(b"".join(b"%d\n" % n for n in range(MANY)) + b"\xff\n")
    for option in ("::::", "-a"):
        words = ["echo {} >> ledger", "::::", "args"] if option == "::::" else \
            ["-a", "args", "echo {} >> ledger"]
        result = shoal(tmp_path, "run", "-j", "2", *words)
        _refused_whole(tmp_path, result, f"args:{MANY + 1}")
        assert "not UTF-8 text" in result.stderr
    dry = shoal(tmp_path, "run", "--dry-run", "echo {}", "::::", "args")
    assert dry.returncode == 2 and dry.stdout == ""


def test_a_group_waited_for_further_down_than_a_batch_is_added_with_its_waiter(
        tmp_path: Path) -> None:
    """The waiting job and the group's first job, BATCH jobs apart, go in together: the
    wait never finds the group empty, and the waiting job runs after the group's."""
    lines = ['echo waited >> order\t{"deps": ["later"]}'] + ["true\t{}"] * BATCH + \
        ['echo group >> order\t{"dep_grps": ["later"]}']
    (tmp_path / "jobs.wr").write_text("\n".join(lines) + "\n")
    result = shoal(tmp_path, "run", "jobs.wr", "--format", "wr", "-j", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == BATCH + 2
    assert (tmp_path / "order").read_text().split() == ["group", "waited"]


def test_a_refused_run_leaves_the_last_run_where_it_was(tmp_path: Path) -> None:
    (tmp_path / "first.txt").write_text("echo from the first run\n")
    assert shoal(tmp_path, "run", "first.txt").returncode == 0
    last = (tmp_path / ".shoal" / "last").read_bytes()
    runs = sorted(path.name for path in (tmp_path / ".shoal" / "runs").iterdir())
    refused = shoal(tmp_path, "run", "--joblog", str(tmp_path / "nowhere" / "log"),
                    "echo {}", ":::", "a")
    assert refused.returncode == 2 and "--joblog" in refused.stderr
    assert (tmp_path / ".shoal" / "last").read_bytes() == last
    assert sorted(path.name for path in (tmp_path / ".shoal" / "runs").iterdir()) == runs
    logs = shoal(tmp_path, "logs", "1")
    assert logs.returncode == 0 and logs.stdout == "from the first run\n"


@pytest.mark.parametrize("words, named", [
    (["-j", "500001"], "-j"),
    (["-N", "99999999999999999999", "echo {}", ":::", "a"], "-N"),
    (["--timeout", "0"], "--timeout 0"),
])
def test_out_of_range_options_are_one_line(tmp_path: Path, words: list[str],
                                           named: str) -> None:
    (tmp_path / "jobs.txt").write_text("echo ran >> ledger\n")
    args = words if ":::" in words else ["jobs.txt", *words]
    result = shoal(tmp_path, "run", *args)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ledger").exists() and not (tmp_path / ".shoal").exists()


def test_a_stream_line_without_end_is_refused_at_its_limit(tmp_path: Path) -> None:
    """A stream that never ends its line (/dev/zero, a binary piped in by mistake) is
    refused once the line passes the limit, instead of growing without bound."""
    from shoal.core.models import MAX_LINE_BYTES

    result = shoal(tmp_path, "run", stdin="a" * (MAX_LINE_BYTES + 100_000), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"stdin:1: the line is longer than {MAX_LINE_BYTES} bytes" in result.stderr


@pytest.mark.parametrize("option", ["--results", "--joblog", "--wd", "--halt", "--timeout"])
def test_an_empty_option_value_is_refused(tmp_path: Path, option: str) -> None:
    result = shoal(tmp_path, "run", option, "", "echo {} >> ledger", ":::", "a")
    assert result.returncode == 2 and result.stderr == f"shoal: {option}: give a value " \
        "(it is empty)\n", result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.parametrize("words", [["echo {= s/a/b/ =}", ":::", "a"],
                                   ["--tagstring", "{=$_=1=}", "echo {}", ":::", "a"]])
def test_perl_replacement_strings_are_refused(tmp_path: Path, words: list[str]) -> None:
    result = shoal(tmp_path, "run", *words)
    assert result.returncode == 2 and "{= perl =}" in result.stderr and result.stdout == ""


def test_an_input_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    """A stream whose read fails is named with the error, not taken as an empty input; a
    closed stdin is one line, not a crash."""
    unreadable = shoal(tmp_path, "run", "/proc/self/mem")
    assert unreadable.returncode == 2
    assert "/proc/self/mem: cannot read it: Input/output error" in unreadable.stderr
    closed = subprocess.run([*SHOAL, "run", "-"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: os.close(0))
    assert closed.returncode == 2, closed.stderr
    assert closed.stderr == "shoal: stdin is closed: give a FILE, or commands on stdin\n"

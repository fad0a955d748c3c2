"""The ledger checker on its own: hand-written ledgers, and the shell lines it is fed in earnest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .ledger import check_ledger, check_lines, ledger_command, ticking_work


def test_one_clean_copy_per_job_passes() -> None:
    report = check_lines(["1 10 100 start 1.0", "2 11 101 start 1.1", "1 10 100 end 2.0",
                          "2 11 101 end 2.5"], expected=[1, 2])
    assert report.ok, report.describe()
    assert report.summary() == {"jobs": 2, "copies": 2, "killed_copies": 0, "missing": 0,
                                "duplicated": 0, "overlaps": 0, "malformed": 0}


def test_a_job_that_never_ended_is_missing() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 10 100 end 2.0", "2 11 101 start 1.0"],
                         expected=[1, 2, 3])
    assert report.missing == [2, 3]
    assert [c.job_id for c in report.killed] == [2]
    assert not report.ok


def test_a_job_that_ended_twice_is_duplicated_even_without_overlap() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 10 100 end 2.0",
                          "1 12 200 start 5.0", "1 12 200 end 6.0"], expected=[1])
    assert report.duplicated == {1: 2}
    assert report.overlaps == []
    assert not report.ok


def test_a_killed_copy_that_stopped_before_the_next_started_is_fine() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 10 100 tick 1.5", "1 10 100 tick 2.0",
                          "1 12 200 start 3.0", "1 12 200 end 4.0"], expected=[1])
    assert report.ok, report.describe()
    assert len(report.killed) == 1 and report.killed[0].alive == (1.0, 2.0)


def test_a_killed_copy_still_ticking_after_the_next_started_overlaps() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 12 200 start 3.0", "1 10 100 tick 3.5",
                          "1 12 200 end 4.0"], expected=[1])
    [(first, second, shared)] = report.overlaps
    assert (first.lease_id, second.lease_id) == (10, 12)
    assert shared == 0.5
    assert report.duplicated == {}
    assert not report.ok
    assert "overlap of 0.500 s" in report.describe()


def test_two_finished_copies_that_overlap_are_both_duplicated_and_overlapping() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 12 200 start 1.5", "1 10 100 end 2.0",
                          "1 12 200 end 2.5"], expected=[1])
    assert report.duplicated == {1: 2}
    assert len(report.overlaps) == 1


def test_copies_of_different_jobs_never_overlap_each_other() -> None:
    report = check_lines(["1 10 100 start 1.0", "2 11 101 start 1.0", "1 10 100 end 3.0",
                          "2 11 101 end 3.0"], expected=[1, 2])
    assert report.ok


def test_touching_intervals_do_not_overlap() -> None:
    report = check_lines(["1 10 100 start 1.0", "1 10 100 tick 2.0",
                          "1 12 200 start 2.0", "1 12 200 end 3.0"], expected=[1])
    assert report.overlaps == []


def test_odd_lines_are_reported_not_ignored() -> None:
    report = check_lines(["1 10 100 start 1.0", "garbage", "1 10 100 finish 2.0",
                          "1 10 100 end 2.0", "3 13 300 end 2.0", "4 14 400 start 1",
                          "4 14 400 start 2", "4 14 400 end 3"], expected=[1, 3, 4])
    assert len(report.malformed) == 4  # garbage, unknown event, end without start, two starts
    assert not report.ok


def test_a_job_nobody_added_is_reported() -> None:
    report = check_lines(["7 10 100 start 1.0", "7 10 100 end 2.0"], expected=[])
    assert report.unexpected == [7]
    assert not report.ok


def test_the_shell_side_writes_what_the_checker_reads(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, ticking_work(0.3, period=0.1), tag="t1")
    env = {**os.environ, "SHOAL_JOB_ID": "5", "SHOAL_ATTEMPT_LEASE": "9"}
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=10)
    subprocess.run(["bash", "-c", ledger_command(ledger, "sleep 0.01", tag="t2")], check=True,
                   env={**env, "SHOAL_JOB_ID": "6"}, timeout=10)
    report = check_ledger(ledger, expected=[5, 6])
    assert report.ok, report.describe()
    [copy] = report.copies[5]
    assert copy.lease_id == 9 and copy.finished
    start, end = copy.alive
    assert 0.25 < end - start < 5
    assert ledger.read_text().count(" tick ") == 3

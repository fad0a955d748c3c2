"""`shoal run` adds a file's lines a batch at a time and leaves the loop free between two adds
for as long as the last one took: adds back to back held the loop, and the running slots
waited for their next jobs."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from shoal.embedded import job_defaults
from shoal.run import inputs
from shoal.run.driver import FEED_PAUSE_SECONDS, RunSettings, run_input
from shoal.run.inputs import from_file, scan_file
from shoal.server.service import Service


def test_adds_while_jobs_run_leave_the_loop_free_between_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"sleep 0.02; echo {n}\n" for n in range(600)))
    adds: list[tuple[float, float, int]] = []  # (began, ended, jobs) of each add
    add = Service.add

    def timed_add(self: Service, specs: list, **options: object) -> dict:
        began = time.monotonic()
        answer = add(self, specs, **options)  # type: ignore[arg-type]
        adds.append((began, time.monotonic(), len(specs)))
        return answer

    monkeypatch.setattr(Service, "add", timed_add)
    defaults = job_defaults(jobs)
    scan = scan_file(jobs, "lines", 8, defaults)
    report = asyncio.run(run_input(from_file(jobs, "lines", defaults, scan),
                                   RunSettings(parallel=8)))

    assert report.total == 600 and report.succeeded
    assert [size for _, _, size in adds] == \
        [inputs.FIRST_BATCH] + [inputs.BATCH - inputs.FIRST_BATCH] + \
        [inputs.BATCH] * ((600 - inputs.BATCH) // inputs.BATCH) + [600 % inputs.BATCH]
    # 600 jobs of 20 ms, 8 at a time: every add after the first is made while jobs run.
    for (began, ended, _), (next_began, _, _) in itertools.pairwise(adds):
        assert next_began - ended >= max(FEED_PAUSE_SECONDS, ended - began) * 0.99


def test_batches_of_lines_done_before_are_passed_without_a_pause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run walks past what an earlier run did without pausing after each batch
    (it added nothing), though a job of its own is running meanwhile."""
    monkeypatch.chdir(tmp_path)
    jobs, marker = tmp_path / "jobs.txt", tmp_path / "marker"
    done = "".join(f"true {n}\n" for n in range(1000))

    def run() -> float:
        defaults = job_defaults(jobs)
        scan = scan_file(jobs, "lines", 2, defaults)
        began = time.time()
        report = asyncio.run(run_input(from_file(jobs, "lines", defaults, scan),
                                       RunSettings(parallel=2)))
        assert report.succeeded
        return began

    jobs.write_text(done)
    run()
    # Two new lines: the first runs while the 1000 done are passed, the last comes after.
    jobs.write_text(f"sleep 3\n{done}touch {marker}\n")
    monkeypatch.setattr("shoal.run.driver.FEED_PAUSE_SECONDS", 0.5)
    began = run()
    assert marker.stat().st_mtime - began < 1.5  # a pause after each batch: 3 s and more

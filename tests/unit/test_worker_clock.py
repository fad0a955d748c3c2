"""A job's times on the worker: durations from the monotonic clock, and `ended_at` derived
from them, so a wall clock stepped back while a job runs cannot make it end before it began."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import shoal.worker.runner as runner_module
from shoal.core.protocol import Assignment, AttemptResult
from shoal.worker.launcher import LAUNCHER_VARIABLE
from shoal.worker.runner import Runner

START = 1_700_000_000.0


@pytest.fixture(autouse=True)
def runner_reads_the_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner starts the jobs itself: the native launcher reads the real clocks, in C,
    where a clock replaced here cannot reach (it derives `ended_at` the same way)."""
    monkeypatch.setenv(LAUNCHER_VARIABLE, "python")


def run_with_wall_clock(tmp_path: Path, cmd: str) -> AttemptResult:
    finished: list[AttemptResult] = []

    async def main() -> None:
        runner = Runner(tmp_path, host="h", on_started=lambda _: None,
                        on_finished=finished.append, contain=False)
        runner.start(Assignment(job_id=1, lease_id=1, cmd=cmd, cwd="/", env={}, cores=0,
                                memory_bytes=0, gpus=[]))
        await runner.shutdown(kill=False)

    asyncio.run(main())
    [result] = finished
    return result


def test_a_clock_stepped_back_during_a_job_cannot_end_it_before_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([START])  # the first reading is the start; every later one is an hour back
    clock = SimpleNamespace(time=lambda: next(readings, START - 3600.0),
                            monotonic=time.monotonic)
    monkeypatch.setattr(runner_module, "time", clock)
    result = run_with_wall_clock(tmp_path, "sleep 0.2")
    assert result.started_at == START
    assert 0.2 <= result.wall_seconds < 2
    assert result.ended_at >= result.started_at
    assert result.ended_at == pytest.approx(result.started_at + result.wall_seconds)


def test_a_clock_stepped_forward_does_not_lengthen_a_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([START])
    clock = SimpleNamespace(time=lambda: next(readings, START + 86_400.0),
                            monotonic=time.monotonic)
    monkeypatch.setattr(runner_module, "time", clock)
    result = run_with_wall_clock(tmp_path, "true")
    assert result.wall_seconds < 2
    assert result.ended_at - result.started_at == pytest.approx(result.wall_seconds, abs=1e-6)

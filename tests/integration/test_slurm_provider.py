"""The Slurm provider against a real one-node Slurm: sbatch with the generated script,
squeue for status, scancel; a refused submission is one line in Slurm's words."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.provision.base import AllocationState, ProvisionError, SubmitRequest
from shoal.provision.slurm import SlurmProvider, slurm_time
from tests.integration.cluster import wait_until
from tests.integration.slurm import Slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def fake_worker(tmp_path: Path, seconds: float) -> list[str]:
    """Stands in for `shoal worker`: records its arguments, then stays a while."""
    script = tmp_path / "fake-shoal"
    script.write_text(f'#!/bin/sh\necho "$@" > "$(dirname "$3")/argv"\nsleep {seconds}\n')
    script.chmod(0o755)
    return [str(script)]


def request(tmp_path: Path, name: str, **fields: object) -> SubmitRequest:
    values: dict[str, object] = {"name": "q", "workers": 1, "join": "shoal://secret@x",
                                 "time_limit_seconds": 600.0, "idle_timeout_seconds": 30.0,
                                 "work_dir": str(tmp_path / "alloc" / name),
                                 "started_by": f"slurm:q/{name}"}
    values.update(fields)
    return SubmitRequest(**values)  # type: ignore[arg-type]


def test_time_is_whole_minutes_rounded_up() -> None:
    assert slurm_time(60) == "0-00:01:00"
    assert slurm_time(61) == "0-00:02:00"
    assert slurm_time(90_000) == "1-01:00:00"


def test_an_allocation_runs_its_worker_and_ends(slurm: Slurm, tmp_path: Path) -> None:
    provider = SlurmProvider(slurm.env, executable=fake_worker(tmp_path, 2))
    allocation = asyncio.run(provider.submit(request(tmp_path, "1", cores=2)))
    work_dir = Path(allocation.work_dir or "")
    assert (work_dir / "job-id").read_text().strip() == allocation.engine_id
    assert (work_dir / "join").stat().st_mode & 0o077 == 0
    assert "#!/bin/bash" in (work_dir / "submit.sh").read_text()

    def state() -> AllocationState:
        return asyncio.run(provider.status([allocation]))[allocation.engine_id].state

    wait_until(lambda: (work_dir / "argv").exists(), timeout=60, message="the worker to start")
    argv = (work_dir / "argv").read_text()
    assert f"--join-file {work_dir}/join" in argv
    assert "--started-by slurm:q/1" in argv and "--exit-when-idle 30" in argv
    assert "--cores 2" in argv and "--time-limit" in argv
    wait_until(lambda: state() is AllocationState.FINISHED, timeout=60,
               message="the allocation to end")


def test_cancel_ends_a_running_allocation(slurm: Slurm, tmp_path: Path) -> None:
    # The fake worker is a plain sh script: SIGTERM to the batch step ends it (a real worker
    # hands its jobs back first); anything left would get Slurm's own cancel after the grace.
    provider = SlurmProvider(slurm.env, executable=fake_worker(tmp_path, 300),
                             cancel_grace_seconds=2)
    allocation = asyncio.run(provider.submit(request(tmp_path, "2")))
    work_dir = Path(allocation.work_dir or "")
    wait_until(lambda: (work_dir / "argv").exists(), timeout=60, message="the worker to start")
    asyncio.run(provider.cancel(allocation))
    status = wait_until(
        lambda: (s := asyncio.run(provider.status([allocation]))[allocation.engine_id]).state
        is not AllocationState.RUNNING and s, timeout=60, message="the allocation to end")
    assert status.state in (AllocationState.FINISHED, AllocationState.FAILED)
    asyncio.run(provider.cancel(allocation))  # again: already gone is fine


def test_a_refused_submission_says_why(slurm: Slurm, tmp_path: Path) -> None:
    provider = SlurmProvider(slurm.env, executable=fake_worker(tmp_path, 1))
    with pytest.raises(ProvisionError, match=r"(?i)invalid partition"):
        asyncio.run(provider.submit(request(tmp_path, "3", engine_args=["--partition=nope"])))


def test_a_job_slurm_forgot_is_finished(slurm: Slurm, tmp_path: Path) -> None:
    from shoal.provision.base import Allocation

    gone = Allocation(provider="slurm", engine_id="999999", name="q", workers=1,
                      submitted_at=0.0)
    status = asyncio.run(SlurmProvider(slurm.env).status([gone]))["999999"]
    assert status.state is AllocationState.FINISHED

"""An add journals each new job as created, in the state it was made in, whether SQLite
writes the journal from a run of ids or it is written job by job."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from shoal.core.models import JobState
from shoal.store import Store

from .factories import make_job


@pytest.mark.parametrize("ids", [[5, 6, 7, 8], [5, 7, 8, 12]], ids=["a run", "gaps"])
def test_new_jobs_are_journaled_as_created(tmp_path: Path, ids: list[int]) -> None:
    store = Store(tmp_path / "shoal.db")
    made = [make_job(job_id, state=JobState.WAITING if job_id % 2 else JobState.QUEUED)
            for job_id in ids]
    with store.adding() as writer:
        writer.write([make_job(1)], now=1.0)  # an earlier job: not journaled again
        writer.write(made, now=42.5)
    with sqlite3.connect(tmp_path / "shoal.db") as db:
        journal = db.execute("SELECT job_id, from_state, to_state, at, reason FROM transitions "
                             "ORDER BY seq").fetchall()
    assert journal == [(1, None, "queued", 1.0, None)] + [
        (job.id, None, job.state.value, 42.5, None) for job in made]
    store.close()


def test_a_part_names_the_columns_any_of_its_jobs_sets(tmp_path: Path) -> None:
    """Columns every job of a part leaves at their default are left out of its insert; one
    job that sets one keeps it for all, and each reads back as it was written."""
    store = Store(tmp_path / "shoal.db")
    plain = [make_job(job_id) for job_id in range(1, 4)]
    files = [{"path": "f", "mode": 0o644, "size": 1, "sha256": "0" * 64}]
    mixed = [make_job(4), make_job(5), dataclasses.replace(
        make_job(6), name="x", gpus=2, time_seconds=9.5, files=files, always_copy=True)]
    with store.adding() as writer:
        writer.write(plain, now=1.0)
        writer.write(mixed, now=1.0)
    assert store.jobs_by_id(list(range(1, 7))) == [*plain, *mixed]
    assert store.jobs_by_id([6])[0].files == files
    store.close()

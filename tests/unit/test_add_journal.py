"""An add journals each new job as created, in the state it was made in, whether SQLite
writes the journal from a run of ids or it is written job by job."""

from __future__ import annotations

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

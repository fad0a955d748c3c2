"""The write-ahead log is copied into the database by the checkpoint thread, never by the
loop's commits, and the thread ends with the store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from shoal.store import Store

from .factories import make_job


def thread_running() -> bool:
    return any(t.name == "shoal-checkpoints" for t in threading.enumerate())


def test_the_log_reaches_the_database_from_the_thread_and_not_the_commits(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "shoal.db")
    store.checkpoint_in_background()
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert thread_running()
    empty = (tmp_path / "shoal.db").stat().st_size
    with store.adding() as writer:
        writer.write([make_job(job_id) for job_id in range(1, 5001)], now=1.0)
    deadline = time.monotonic() + 10
    while (tmp_path / "shoal.db").stat().st_size <= empty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "shoal.db").stat().st_size > empty + 500_000
    store.close()
    assert not thread_running()
    assert len(Store(tmp_path / "shoal.db").jobs_by_id(list(range(1, 5001)))) == 5000


def test_without_the_thread_commits_do_not_copy_the_log_once_it_is_turned_off(
        tmp_path: Path) -> None:
    """The control: what moves the data above is the thread."""
    store = Store(tmp_path / "shoal.db")
    store._db.execute("PRAGMA wal_autocheckpoint = 0")
    empty = (tmp_path / "shoal.db").stat().st_size
    with store.adding() as writer:
        writer.write([make_job(job_id) for job_id in range(1, 5001)], now=1.0)
    time.sleep(1.0)
    assert (tmp_path / "shoal.db").stat().st_size == empty
    store.close()

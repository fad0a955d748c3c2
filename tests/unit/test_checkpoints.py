"""The write-ahead log is copied into the database by the checkpoint thread, never by the
loop's commits, and the thread ends with the store; it also writes a large transaction's
log to disk ahead of the commit."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from shoal.store import Store
from shoal.store.checkpoints import FLUSH_GROWTH_BYTES, Checkpoints

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


def test_a_large_transaction_s_log_is_flushed_before_its_commit_and_small_ones_are_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an open transaction has spilled to the log is written to disk ahead of its
    commit (whose fsync then has little left to do); a log that has not grown is left
    alone."""
    path = tmp_path / "shoal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA cache_size = -1000")  # spills to the log early, as a large add does
    writer.execute("CREATE TABLE t (data BLOB)")
    flushed: list[str] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)
    checkpoints = Checkpoints(path, every_seconds=3600)  # its thread waits; called directly
    try:
        writer.execute("INSERT INTO t VALUES (zeroblob(1000))")
        checkpoints._flush_grown_log()
        assert flushed == []  # a few pages: nothing to do
        writer.execute("BEGIN")
        writer.executemany("INSERT INTO t VALUES (randomblob(100000))", [()] * 400)
        assert Path(f"{path}-wal").stat().st_size > FLUSH_GROWTH_BYTES
        checkpoints._flush_grown_log()
        assert flushed == [f"{path}-wal"]
        checkpoints._flush_grown_log()
        assert len(flushed) == 1  # flushed once until it grows again
        writer.execute("COMMIT")
    finally:
        checkpoints.stop()
        writer.close()

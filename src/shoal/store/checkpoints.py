"""The write-ahead log copied back into the database by a thread of its own.

SQLite's automatic checkpoint runs inside whichever commit takes the log past its
threshold: on the server's event loop, with an fsync, and after a large add, the whole
add's log at once. A thread with a connection of its own runs passive checkpoints instead
(they never block the loop's writes, and SQLite lets go of the GIL while it copies), and
the loop's connection is told not to checkpoint at all.

The same thread writes the log to disk ahead of a large transaction's commit: an add of a
million jobs leaves about 150 MB of the log in the page cache, which its commit's fsync
would otherwise write all at once (0.4 s), with the server waiting.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("shoal.store")


# The log written since the last flush that makes the thread flush it: about a tenth of a
# second of the disk's work. (A log that only cycles, as small commits keep it, does not grow.)
FLUSH_GROWTH_BYTES = 32 * 2**20


class Checkpoints:
    def __init__(self, path: Path, every_seconds: float = 0.5):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._log = Path(f"{path}-wal")
        self._flushed_size = 0
        self._every = every_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-checkpoints",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stopping.wait(self._every):
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._flush_grown_log()
                failing = False
            except sqlite3.Error as exc:  # tried again next time; said once
                if not failing:
                    log.warning("checkpoint of the database failed: %s", exc)
                failing = True

    def _flush_grown_log(self) -> None:
        """fdatasync the log if it grew by FLUSH_GROWTH_BYTES since the last flush: the
        pages a commit in progress has written out (SQLite syncs them again at its commit,
        now with little left to write)."""
        try:
            size = self._log.stat().st_size
            if size - self._flushed_size < FLUSH_GROWTH_BYTES:
                self._flushed_size = min(self._flushed_size, size)  # reset or truncated
                return
            fd = os.open(self._log, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self._flushed_size = size
        except OSError as exc:  # only an early start of what the commit does anyway
            log.debug("flushing the database's log failed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._db.close()

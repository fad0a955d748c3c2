"""The write-ahead log copied back into the database by a thread of its own.

SQLite's automatic checkpoint runs inside whichever commit takes the log past its
threshold: on the server's event loop, with an fsync, and after a large add, the whole
add's log at once. A thread with a connection of its own runs passive checkpoints instead
(they never block the loop's writes, and SQLite lets go of the GIL while it copies), and
the loop's connection is told not to checkpoint at all.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("shoal.store")


class Checkpoints:
    def __init__(self, path: Path, every_seconds: float = 0.5):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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
                failing = False
            except sqlite3.Error as exc:  # tried again next time; said once
                if not failing:
                    log.warning("checkpoint of the database failed: %s", exc)
                failing = True

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._db.close()

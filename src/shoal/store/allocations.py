"""Allocation queues and their allocations, in the server's database (migration 7).

It shares the Store's connection and transactions: one database, one writer, the loop's.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from shoal.core.errors import Conflict, StoreUnavailable
from shoal.store.repository import Store

MAX_EVENTS_PER_QUEUE = 1000


@dataclass(slots=True)
class QueueRow:
    name: str
    provider: str
    settings: dict[str, Any]
    state: dict[str, Any]
    created_at: float


@dataclass(slots=True)
class AllocationRow:
    id: int
    queue: str
    engine_id: str
    state: str
    workers: int
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None
    work_dir: str | None = None
    joined: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "queue": self.queue, "engine_id": self.engine_id,
                "state": self.state, "workers": self.workers,
                "submitted_at": self.submitted_at, "started_at": self.started_at,
                "ended_at": self.ended_at, "reason": self.reason, "work_dir": self.work_dir,
                "joined": self.joined}


_ALLOCATION_COLUMNS = ("id, queue, engine_id, state, workers, submitted_at, started_at, "
                       "ended_at, reason, work_dir, joined")


class AllocationStore:
    def __init__(self, store: Store):
        self._store = store

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self._store._transaction() as db:  # the same database and writer
            cursor = db.execute(sql, params)
            return cursor.lastrowid or 0

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._store._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self._store.path}: cannot read ({exc})") from None

    # ---- queues --------------------------------------------------------------------------

    def queues(self) -> list[QueueRow]:
        rows = self._read("SELECT name, provider, settings, state, created_at FROM alloc_queues "
                          "ORDER BY created_at, name")
        return [QueueRow(name, provider, json.loads(settings), json.loads(state), created)
                for name, provider, settings, state, created in rows]

    def add_queue(self, row: QueueRow) -> None:
        try:
            self._write("INSERT INTO alloc_queues (name, provider, settings, state, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (row.name, row.provider, json.dumps(row.settings),
                         json.dumps(row.state), row.created_at))
        except StoreUnavailable as exc:
            if "UNIQUE" in str(exc):
                raise Conflict(f"an allocation queue named {row.name!r} exists") from None
            raise

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self._write("UPDATE alloc_queues SET state = ? WHERE name = ?",
                    (json.dumps(state), name))

    def remove_queue(self, name: str) -> None:
        with self._store._transaction() as db:
            db.execute("DELETE FROM alloc_queues WHERE name = ?", (name,))
            db.execute("DELETE FROM allocations WHERE queue = ?", (name,))
            db.execute("DELETE FROM alloc_events WHERE queue = ?", (name,))

    # ---- allocations ---------------------------------------------------------------------

    def allocations(self, queue: str | None = None) -> list[AllocationRow]:
        where, params = ("WHERE queue = ?", (queue,)) if queue is not None else ("", ())
        rows = self._read(f"SELECT {_ALLOCATION_COLUMNS} FROM allocations {where} ORDER BY id",
                          params)
        return [AllocationRow(*row) for row in rows]

    def new_allocation_id(self, queue: str, now: float) -> int:
        """A placeholder row, so that the allocation's directory has its number before the
        engine is asked; filled in by `submitted`, or dropped by `forget`."""
        return self._write("INSERT INTO allocations (queue, engine_id, state, workers, "
                           "submitted_at) VALUES (?, '', 'submitting', 0, ?)", (queue, now))

    def submitted(self, row: AllocationRow) -> None:
        self._write("UPDATE allocations SET engine_id = ?, state = ?, workers = ?, "
                    "submitted_at = ?, work_dir = ? WHERE id = ?",
                    (row.engine_id, row.state, row.workers, row.submitted_at, row.work_dir,
                     row.id))

    def forget(self, allocation_id: int) -> None:
        self._write("DELETE FROM allocations WHERE id = ?", (allocation_id,))

    def update(self, rows: list[AllocationRow]) -> None:
        if not rows:
            return
        with self._store._transaction() as db:
            db.executemany("UPDATE allocations SET state = ?, started_at = ?, ended_at = ?, "
                           "reason = ?, joined = ? WHERE id = ?",
                           [(r.state, r.started_at, r.ended_at, r.reason, r.joined, r.id)
                            for r in rows])

    # ---- events --------------------------------------------------------------------------

    def add_event(self, queue: str, at: float, message: str) -> None:
        with self._store._transaction() as db:
            db.execute("INSERT INTO alloc_events (queue, at, message) VALUES (?, ?, ?)",
                       (queue, at, message))
            db.execute("DELETE FROM alloc_events WHERE queue = ? AND seq <= (SELECT MAX(seq) "
                       "FROM alloc_events WHERE queue = ?) - ?",
                       (queue, queue, MAX_EVENTS_PER_QUEUE))

    def events(self, queue: str, last: int = 100) -> list[dict[str, Any]]:
        rows = self._read("SELECT at, message FROM alloc_events WHERE queue = ? "
                          "ORDER BY seq DESC LIMIT ?", (queue, last))
        return [{"at": at, "message": message} for at, message in reversed(rows)]

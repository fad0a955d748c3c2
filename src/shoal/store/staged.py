"""A large add in chunks (migration 8): each chunk is kept here as it arrives, and the add is
made from all of them at once, or from none (dropped when abandoned).

It writes through the Store's connection and transactions (one database, one writer, the
loop's), and reads the chunks it kept through the Store's reader of committed data.
"""

from __future__ import annotations

from collections.abc import Iterator

from shoal.core.errors import Conflict, NotFound
from shoal.store.repository import Store

STAGED_HOURS = 24  # a batch left this long uncommitted is dropped


class StagedAdds:
    def __init__(self, store: Store):
        self._store = store

    def put(self, batch: str, seq: int, owner: str, jobs_json: str, count: int,
            now: float) -> None:
        """Keep one chunk (its `count` jobs as JSON)."""
        with self._store._transaction() as db:
            found = db.execute("SELECT owner FROM staged_adds WHERE batch = ? LIMIT 1",
                               (batch,)).fetchone()
            if found is not None and found[0] != owner:
                raise NotFound(f"add batch {batch} does not exist")
            if db.execute("SELECT 1 FROM staged_adds WHERE batch = ? AND seq = ?",
                          (batch, seq)).fetchone():
                raise Conflict(f"add batch {batch}: chunk {seq} was already sent")
            db.execute("INSERT INTO staged_adds (batch, seq, owner, created_at, jobs, count) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (batch, seq, owner, now, jobs_json, count))

    def size(self, batch: str) -> int:
        return int(self._store._db.execute(
            "SELECT COALESCE(SUM(count), 0) FROM staged_adds WHERE batch = ?",
            (batch,)).fetchone()[0])

    def chunks(self, batch: str, owner: str) -> Iterator[str]:
        """The batch's chunks in order, read one at a time as they are iterated; NotFound
        at once if it is not this owner's. Each was committed when it was staged: they are
        read through the store's reader of committed data, beside an add's write."""
        db = self._store._committed_reader()
        seqs = db.execute("SELECT seq, owner FROM staged_adds WHERE batch = ? ORDER BY seq",
                          (batch,)).fetchall()
        if not seqs or seqs[0][1] != owner:
            raise NotFound(f"add batch {batch} does not exist")
        return (db.execute("SELECT jobs FROM staged_adds WHERE batch = ? AND seq = ?",
                           (batch, seq)).fetchone()[0] for seq, _ in seqs)

    def drop(self, batch: str, owner: str | None = None) -> int:
        with self._store._transaction() as db:
            where, params = "batch = ?", [batch]
            if owner is not None:
                where += " AND owner = ?"
                params.append(owner)
            return db.execute(f"DELETE FROM staged_adds WHERE {where}", params).rowcount

    def expire(self, before: float) -> int:
        with self._store._transaction() as db:
            return db.execute("DELETE FROM staged_adds WHERE created_at < ?",
                              (before,)).rowcount

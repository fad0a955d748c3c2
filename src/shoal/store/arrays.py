"""Job arrays as the database keeps them (migration 9): one row each, whatever their size.

`fed` counts the array's tasks already made into jobs; it is written in the same transaction
as those jobs, so after a crash no task is made twice or lost. Plain functions over the
Store's connection: the Store writes a row with the jobs it adds.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from shoal.core.arrays import Run

_COLUMNS = "id, owner, grp, spec, runs, total, fed, added_at, stopped_at, stop_reason"


@dataclass
class ArrayRow:
    id: int
    owner: str
    group: str
    spec: dict[str, Any]  # the job spec of every task, {} not yet replaced
    runs: list[Run]
    total: int
    fed: int
    added_at: float
    stopped_at: float | None = None
    stop_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.stopped_at is None and self.fed < self.total

    @property
    def unfed(self) -> int:
        """Tasks not yet made into jobs (none once it is stopped)."""
        return self.total - self.fed if self.stopped_at is None else 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "group": self.group,
                "cmd": self.spec["cmd"], "name": self.spec.get("name"),
                "tasks": self.total, "queued_as_jobs": self.fed, "not_yet_jobs": self.unfed,
                "added_at": self.added_at, "stopped_at": self.stopped_at,
                "stop_reason": self.stop_reason}


def put_array(db: sqlite3.Connection, row: ArrayRow) -> None:
    db.execute(f"INSERT OR REPLACE INTO arrays ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (row.id, row.owner, row.group, json.dumps(row.spec), json.dumps(row.runs),
                row.total, row.fed, row.added_at, row.stopped_at, row.stop_reason))


def load_arrays(db: sqlite3.Connection) -> list[ArrayRow]:
    return [ArrayRow(id=id_, owner=owner, group=group, spec=json.loads(spec),
                     runs=[(first, last, step) for first, last, step in json.loads(runs)],
                     total=total, fed=fed, added_at=added_at, stopped_at=stopped_at,
                     stop_reason=stop_reason)
            for (id_, owner, group, spec, runs, total, fed, added_at, stopped_at, stop_reason)
            in db.execute(f"SELECT {_COLUMNS} FROM arrays ORDER BY id")]

"""Ensemble runs as the database keeps them (migration 10): the snapshot clients read, saved
each time a run's state changes, so `shoal ensemble list` and `show` still answer after the
server restarts. Plain functions over the Store's connection, as store/arrays.py."""

from __future__ import annotations

import json
from typing import Any

from shoal.store.repository import Store


def save_run(store: Store, run_id: int, owner: str, name: str,
             snapshot: dict[str, Any]) -> None:
    with store._transaction() as db:
        db.execute("INSERT OR REPLACE INTO ensemble_runs (id, owner, name, snapshot) "
                   "VALUES (?, ?, ?, ?)", (run_id, owner, name, json.dumps(snapshot)))


def load_runs(store: Store) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, owner, snapshot) of every run kept, oldest first."""
    return [(run_id, owner, json.loads(snapshot)) for run_id, owner, snapshot in
            store._db.execute("SELECT id, owner, snapshot FROM ensemble_runs ORDER BY id")]

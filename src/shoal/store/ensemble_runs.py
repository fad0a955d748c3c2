"""Ensemble runs as the database keeps them (migration 10): a run's summary and the snapshot
clients read, saved each time its state changes, so `shoal ensemble list` and `show` still
answer after the server restarts. Read when asked, never all at once. Plain functions over the
Store's connection, as store/arrays.py."""

from __future__ import annotations

import json
from typing import Any

from shoal.store.repository import Store


def save_run(store: Store, run_id: int, owner: str, summary: dict[str, Any],
             snapshot: dict[str, Any]) -> None:
    with store._transaction() as db:
        db.execute("INSERT OR REPLACE INTO ensemble_runs (id, owner, name, state, summary, "
                   "snapshot) VALUES (?, ?, ?, ?, ?, ?)",
                   (run_id, owner, summary["name"], summary["state"], json.dumps(summary),
                    json.dumps(snapshot)))


def run_summaries(store: Store, name: str | None, owner: str | None) -> list[dict[str, Any]]:
    """The kept runs' summaries (of a name, an owner's), oldest first."""
    return [json.loads(text) for (text,) in store._db.execute(
        "SELECT summary FROM ensemble_runs WHERE (? IS NULL OR name = ?) AND "
        "(? IS NULL OR owner = ?) ORDER BY id", (name, name, owner, owner))]


def run_snapshot(store: Store, run_id: int, owner: str | None) -> dict[str, Any] | None:
    found = store._db.execute(
        "SELECT snapshot FROM ensemble_runs WHERE id = ? AND (? IS NULL OR owner = ?)",
        (run_id, owner, owner)).fetchone()
    return None if found is None else dict(json.loads(found[0]))


def runs_in(store: Store, states: list[str]
            ) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """(id, owner, summary, snapshot) of the kept runs in these states."""
    return [(run_id, owner, json.loads(summary), json.loads(snapshot))
            for run_id, owner, summary, snapshot in store._db.execute(
                "SELECT id, owner, summary, snapshot FROM ensemble_runs WHERE state IN "
                f"({', '.join('?' * len(states))})", states)]


def last_run_id(store: Store) -> int:
    return int(store._db.execute("SELECT COALESCE(MAX(id), 0) FROM ensemble_runs")
               .fetchone()[0])

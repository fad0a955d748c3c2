"""A `shoal run`'s state read directly: `shoal logs`, `status` and `jobs` with no server.

`RunState` answers the few Client calls those verbs make, in the same shapes as the server's
API, from the run's database opened read-only (it may still be running), so the verbs render
the answers exactly as they render a server's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.core.errors import NotFound
from shoal.core.models import JobState
from shoal.home import DATABASE_FILE
from shoal.run import state
from shoal.store import JobQuery, Store


class RunState:
    """Read-only stand-in for Client over a run's state directory."""

    def __init__(self, directory: Path):
        self.directory = state.resolve(directory)
        self.store = Store.read_only(self.directory / DATABASE_FILE)

    def close(self) -> None:
        self.store.close()

    def _job(self, job_id: int) -> dict[str, Any]:
        found = self.store.jobs_by_id([job_id])
        if not found:
            raise NotFound(f"job {job_id} does not exist in {self.directory}")
        data = found[0].to_dict()
        data["gpu_ids"] = []
        data["pending_reason"] = None
        return data

    def job(self, job_id: int) -> dict[str, Any]:
        data = self._job(job_id)
        for stream in ("stdout", "stderr"):
            data[stream] = self.store.output(job_id, stream).model_dump()
        data["attempt_history"] = self.store.attempt_history(job_id)
        return data

    def logs(self, job_id: int, stream: str = "stdout",
             offset: int | None = None) -> dict[str, Any]:
        """What was kept of a stream (no live output: the run's worker is not asked)."""
        data = self._job(job_id)
        captured = self.store.output(job_id, stream)
        return {"job_id": job_id, "stream": stream, "state": data["state"], "live": False,
                **captured.model_dump()}

    def status(self, group: str | None = None, wait: float | None = None,
               since: int | None = None) -> dict[str, Any]:
        if wait is not None:  # nothing wakes a reader of the database: look again in a while
            time.sleep(min(wait, 1.0))
        groups: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = {}
        for _owner, grp, job_state, count in self.store.job_counts():
            if group is not None and grp != group:
                continue
            groups.setdefault(grp, {})[job_state.value] = \
                groups.get(grp, {}).get(job_state.value, 0) + count
            totals[job_state.value] = totals.get(job_state.value, 0) + count
        return {"version": 0, "totals": totals, "groups": groups}

    def jobs(self, *, limit: int | None = None, newest_first: bool = False,
             page_size: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        states = filters.get("state") or ()
        if isinstance(states, str):
            states = [states]
        query = JobQuery(states=tuple(JobState(value) for value in states),
                         group=filters.get("group"), name=filters.get("name"),
                         cmd_contains=filters.get("cmd"), worker=filters.get("worker"),
                         exit_code=filters.get("exit_code"))
        after: int | None = None
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = self.store.list_jobs(query, after_id=after, limit=size,
                                        newest_first=newest_first)
            for job in page:
                data = job.to_dict()
                data["gpu_ids"] = []
                data["pending_reason"] = None
                yield data
            if left is not None:
                left -= len(page)
            if len(page) < size:
                return
            after = page[-1].id

"""A `shoal run`'s state read directly: `shoal logs`, `status` and `jobs` with no server.

`RunState` answers the few Client calls those verbs make, in the same shapes as the server's
API, from the run's database opened read-only (it may still be running), so the verbs render
the answers exactly as they render a server's.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from shoal.core.errors import NotFound, StoreUnavailable
from shoal.core.models import Job, JobState
from shoal.home import DATABASE_FILE
from shoal.run import state
from shoal.store import JobQuery, Store
from shoal.store.files import damaged_to_reader, is_damage_to_reader

Method = TypeVar("Method", bound=Callable[..., Any])


@contextmanager
def _reading(database: Path) -> Iterator[None]:
    """The boundary of a run's database: what its reading raises because the file is not
    what shoal wrote (a table gone, a state or a JSON field garbled) becomes the damaged
    database's error, as a file that is not a database at all does."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_damage_to_reader(exc):
            raise damaged_to_reader(database, exc) from None
        raise StoreUnavailable(f"{database}: cannot read the database ({exc})") from None
    except (ValueError, KeyError, TypeError) as exc:  # a row that does not decode
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else exc
        raise damaged_to_reader(database, reason) from None


def _read(method: Method) -> Method:
    """`method` (a generator's too, as it is iterated) inside `_reading`."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self: RunState, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with _reading(self.database):
                yield from method(self, *args, **kwargs)
        return cast("Method", generator)

    @functools.wraps(method)
    def wrapper(self: RunState, *args: Any, **kwargs: Any) -> Any:
        with _reading(self.database):
            return method(self, *args, **kwargs)
    return cast("Method", wrapper)


def _answer(job: Job) -> dict[str, Any]:
    """A job as the server's API gives it."""
    data = job.to_dict()
    data["gpu_ids"] = []
    data["pending_reason"] = None
    return data


class RunState:
    """Read-only stand-in for Client over a run's state directory."""

    def __init__(self, directory: Path):
        self.directory = state.resolve(directory)
        self.database = self.directory / DATABASE_FILE
        with _reading(self.database):
            self.store = Store.read_only(self.database)

    def close(self) -> None:
        self.store.close()

    @_read
    def _job(self, job_id: int) -> dict[str, Any]:
        found = self.store.jobs_by_id([job_id])
        if not found:
            raise NotFound(f"job {job_id} does not exist in {self.directory}")
        return _answer(found[0])

    @_read
    def job(self, job_id: int) -> dict[str, Any]:
        data = self._job(job_id)
        for stream in ("stdout", "stderr"):
            data[stream] = self.store.output(job_id, stream).model_dump()
        data["attempt_history"] = self.store.attempt_history(job_id)
        return data

    @_read
    def logs(self, job_id: int, stream: str = "stdout",
             offset: int | None = None) -> dict[str, Any]:
        """What was kept of a stream (no live output: the run's worker is not asked)."""
        data = self._job(job_id)
        captured = self.store.output(job_id, stream)
        return {"job_id": job_id, "stream": stream, "state": data["state"], "live": False,
                **captured.model_dump()}

    @_read
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
        return self._pages(query, limit, newest_first, page_size)

    @_read
    def _pages(self, query: JobQuery, limit: int | None, newest_first: bool,
               page_size: int) -> Iterator[dict[str, Any]]:
        after: int | None = None
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = self.store.list_jobs(query, after_id=after, limit=size,
                                        newest_first=newest_first)
            for job in page:
                yield _answer(job)
            if left is not None:
                left -= len(page)
            if len(page) < size:
                return
            after = page[-1].id

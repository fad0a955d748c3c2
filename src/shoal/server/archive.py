"""Ended jobs, kept out of the reactor's memory: memory follows live work, not history.

The reactor holds waiting, queued, delayed, running and lost jobs. A job that ends is dropped
from memory once its end is committed, and looked up here when something asks for it again: a
duplicate add, a dependency, a retry, a removal, a read. `StoreArchive` answers from the
database; `MemoryArchive` keeps them in a dict, for a reactor without a store (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shoal.core.models import Job
from shoal.store import Store

Key = tuple[str, str, str]  # (owner, cmd, cwd)


class Archive(Protocol):
    def keep(self, job: Job) -> None:
        """The job has ended and its end is committed: it leaves the reactor's memory."""

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        """Fresh objects for these ended jobs (the ids not found are left out)."""
        ...

    def twins(self, keys: Sequence[Key]) -> dict[Key, int]:
        """The ended job that already has each key, for those that have one."""
        ...

    def ids_in_group(self, group: str, owner: str | None) -> list[int]: ...


class MemoryArchive:
    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}

    def keep(self, job: Job) -> None:
        self._jobs[job.id] = job

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        return [self._jobs[job_id] for job_id in job_ids if job_id in self._jobs]

    def twins(self, keys: Sequence[Key]) -> dict[Key, int]:
        wanted = set(keys)
        found: dict[Key, int] = {}
        for job in self._jobs.values():
            key = (job.owner, *job.key)
            if key in wanted and not job.gate:
                found.setdefault(key, job.id)
        return found

    def ids_in_group(self, group: str, owner: str | None) -> list[int]:
        return sorted(job.id for job in self._jobs.values()
                      if job.group == group and (owner is None or job.owner == owner))


class StoreArchive:
    """Ended jobs are already in the database: keeping one costs nothing."""

    def __init__(self, store: Store):
        self._store = store

    def keep(self, job: Job) -> None:
        return None

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        return self._store.jobs_by_id(job_ids)

    def twins(self, keys: Sequence[Key]) -> dict[Key, int]:
        return self._store.twins(keys)

    def ids_in_group(self, group: str, owner: str | None) -> list[int]:
        return self._store.ids_in_group(group, owner)

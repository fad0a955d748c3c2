"""Jobs kept out of the reactor's memory: memory follows live work, not history or backlog.

The reactor holds waiting, delayed, running and lost jobs, and the queued jobs that run next
(its window). A job that ends is dropped from memory once its end is committed; queued jobs
beyond the window (the backlog: jobs with nothing to watch but their turn) are never taken
in until the window drains. Both are looked up here when something asks for them: a
duplicate add, a dependency, a retry, a removal, a read, the next jobs to run.
`StoreArchive` answers from the database; `MemoryArchive` keeps them in a dict, for a
reactor without a store (tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from shoal.core.models import Job, JobState
from shoal.store import Store

Key = tuple[str, str, str]  # (owner, cmd, cwd)


def queue_key(job: Job) -> tuple[int, int]:
    """Where a backlog job stands: higher priority first, then the order it was added in."""
    return (-job.priority, job.id)


def may_wait_in_backlog(job: Job) -> bool:
    """A queued job with nothing to watch but its turn: no limits (counted over the jobs in
    memory) and not an ensemble component (placed at once)."""
    return job.state is JobState.QUEUED and not job.limits and not job.gate


class Archive(Protocol):
    def keep(self, job: Job) -> None:
        """The job has ended and its end is committed: it leaves the reactor's memory."""

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        """Fresh objects for these jobs (the ids not found are left out)."""
        ...

    def twins(self, keys: Sequence[Key], hashes: Sequence[int] | None = None, *,
              committed_only: bool = False) -> dict[Key, tuple[int, JobState]]:
        """The job already added with each key, and its state, for those that have one;
        `hashes`, when known, are the keys' digests (store.key_hash), in the same order.
        `committed_only`: among the jobs committed before the add being written, if any
        (which may go on being written meanwhile)."""
        ...

    def ids_in_group(self, group: str, owner: str | None,
                     states: Iterable[JobState] | None = None) -> list[int]:
        """The group's jobs here (of `owner`, in `states`, if given), by id."""
        ...

    def queued_after(self, after: tuple[int, int] | None, limit: int) -> list[Job]:
        """The next queued jobs that may wait in the backlog, by (-priority, id) after
        `after`."""
        ...


class MemoryArchive:
    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}

    def keep(self, job: Job) -> None:
        self._jobs[job.id] = job

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        return [self._jobs[job_id] for job_id in job_ids if job_id in self._jobs]

    def twins(self, keys: Sequence[Key], hashes: Sequence[int] | None = None, *,
              committed_only: bool = False) -> dict[Key, tuple[int, JobState]]:
        wanted = set(keys)  # an add's jobs are never here: all of it is committed
        found: dict[Key, tuple[int, JobState]] = {}
        for job in sorted(self._jobs.values(), key=lambda job: job.id):
            key = (job.owner, *job.key)
            if key in wanted and not job.gate:
                found.setdefault(key, (job.id, job.state))
        return found

    def queued_after(self, after: tuple[int, int] | None, limit: int) -> list[Job]:
        waiting = sorted((queue_key(job), job) for job in self._jobs.values()
                         if may_wait_in_backlog(job))
        return [job for key, job in waiting if after is None or key > after][:limit]

    def ids_in_group(self, group: str, owner: str | None,
                     states: Iterable[JobState] | None = None) -> list[int]:
        wanted = None if states is None else set(states)
        return sorted(job.id for job in self._jobs.values()
                      if job.group == group and (owner is None or job.owner == owner)
                      and (wanted is None or job.state in wanted))


class StoreArchive:
    """Ended jobs are already in the database: keeping one costs nothing."""

    def __init__(self, store: Store):
        self._store = store

    def keep(self, job: Job) -> None:
        return None

    def load(self, job_ids: Sequence[int]) -> list[Job]:
        return self._store.jobs_by_id(job_ids)

    def twins(self, keys: Sequence[Key], hashes: Sequence[int] | None = None, *,
              committed_only: bool = False) -> dict[Key, tuple[int, JobState]]:
        return self._store.twins(keys, hashes, committed_only=committed_only)

    def queued_after(self, after: tuple[int, int] | None, limit: int) -> list[Job]:
        return self._store.queued_after(after, limit)

    def ids_in_group(self, group: str, owner: str | None,
                     states: Iterable[JobState] | None = None) -> list[int]:
        return self._store.ids_in_group(group, owner, states)

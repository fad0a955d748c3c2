"""Dependencies between jobs. Pure bookkeeping for the reactor.

A job may wait for job ids or for whole groups (`group:NAME`): all jobs of the group, including
ones added while it is incomplete. `after` needs them done; `after_any` only needs them ended.
Per-group counters make a group dependency O(1) to check, whatever the group's size.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

from shoal.core.models import FINAL_STATES, GROUP_PREFIX, Job, JobState

Verdict = Literal["ready", "wait", "cancel"]
_BAD = frozenset({JobState.FAILED, JobState.CANCELLED})
JobLookup = Callable[[int], Job | None]  # a job by id, wherever it is kept


class Dependencies:
    def __init__(self) -> None:
        self.group_size: Counter[str] = Counter()
        self.group_open: Counter[str] = Counter()  # members not yet in a final state
        self.group_bad: Counter[str] = Counter()  # members failed or cancelled
        self._by_id: dict[int, set[int]] = defaultdict(set)  # job id -> jobs waiting on it
        self._by_group: dict[str, set[int]] = defaultdict(set)
        self._waiting_in_group: dict[str, set[int]] = defaultdict(set)

    # ---- membership and state ----------------------------------------------------------------

    def joined(self, job: Job) -> None:
        self.count(job.group, job.state, 1)
        if job.state is JobState.WAITING:
            self.watch(job)

    def count(self, group: str, state: JobState, jobs: int) -> None:
        """Jobs of a group in a state, as counted by the store at start, or one new job."""
        self.group_size[group] += jobs
        self.group_open[group] += 0 if state.is_final else jobs
        self.group_bad[group] += jobs if state in _BAD else 0

    def left(self, job: Job) -> list[int]:
        """The job was removed. Returns the jobs that must be checked again."""
        self.group_size[job.group] -= 1
        self.group_open[job.group] -= not job.state.is_final
        self.group_bad[job.group] -= job.state in _BAD
        self._waiting_in_group[job.group].discard(job.id)
        return self._dependants(job)

    def moved(self, job: Job, from_state: JobState | None, to_state: JobState) -> list[int]:
        """Keep the counters right; returns the waiting jobs whose answer may have changed."""
        if to_state is JobState.WAITING:
            self.watch(job)
        elif from_state is JobState.WAITING:
            self._waiting_in_group[job.group].discard(job.id)
        was_final = from_state is not None and from_state.is_final
        was_bad = from_state in _BAD
        if was_final == to_state.is_final and was_bad == (to_state in _BAD):
            return []
        self.group_open[job.group] += int(was_final) - int(to_state.is_final)
        self.group_bad[job.group] += int(to_state in _BAD) - int(was_bad)
        return self._dependants(job)

    def watch(self, job: Job) -> None:
        self._waiting_in_group[job.group].add(job.id)
        for entry in (*job.dependencies, *job.dependencies_any):
            if entry.startswith(GROUP_PREFIX):
                self._by_group[entry[len(GROUP_PREFIX):]].add(job.id)
            else:
                self._by_id[int(entry)].add(job.id)

    def unwatch(self, job: Job) -> None:
        """The job's dependencies are about to change (or it left its group)."""
        self._waiting_in_group[job.group].discard(job.id)
        for entry in (*job.dependencies, *job.dependencies_any):
            if entry.startswith(GROUP_PREFIX):
                self._by_group[entry[len(GROUP_PREFIX):]].discard(job.id)
            else:
                self._by_id[int(entry)].discard(job.id)

    def waiting_on_group(self, group: str) -> list[int]:
        return list(self._by_group.get(group, ()))

    def waiting_on_id(self, job_id: int) -> list[int]:
        return list(self._by_id.get(job_id, ()))

    def _dependants(self, job: Job) -> list[int]:
        return [*self._by_id.get(job.id, ()), *self._by_group.get(job.group, ())]

    # ---- answers -----------------------------------------------------------------------------

    def verdict(self, job: Job, lookup: JobLookup) -> tuple[Verdict, str | None]:
        """Whether a waiting job may run, must wait, or can never run (and why)."""
        waiting = False
        for entry in job.dependencies:
            if entry.startswith(GROUP_PREFIX):
                group = entry[len(GROUP_PREFIX):]
                if self.group_bad[group]:
                    return "cancel", f"a job of {entry} failed or was cancelled"
                waiting |= self.group_open[group] > 0
                continue
            other = lookup(int(entry))
            if other is None:
                return "cancel", f"dependency {entry} was removed"
            if other.state in _BAD:
                return "cancel", f"dependency {entry} {other.state.value}"
            waiting |= other.state is not JobState.DONE
        for entry in job.dependencies_any:
            if entry.startswith(GROUP_PREFIX):
                waiting |= self.group_open[entry[len(GROUP_PREFIX):]] > 0
            else:
                other = lookup(int(entry))
                waiting |= other is not None and not other.state.is_final
        return ("wait", None) if waiting else ("ready", None)

    def describe(self, job: Job, lookup: JobLookup) -> str:
        """What a waiting job is still waiting for."""
        parts = []
        for entry in (*job.dependencies, *job.dependencies_any):
            if entry.startswith(GROUP_PREFIX):
                group = entry[len(GROUP_PREFIX):]
                if self.group_open[group]:
                    parts.append(f"{entry} ({self.group_open[group]} of "
                                 f"{self.group_size[group]} left)")
            else:
                other = lookup(int(entry))
                if other is not None and other.state not in FINAL_STATES:
                    parts.append(f"job {entry} ({other.state.value})")
        return "waiting for " + (" and ".join(parts) if parts else "its dependencies")

    def find_cycle(self, new_jobs: Iterable[Job], lookup: JobLookup) -> Job | None:
        """A new job that would (indirectly) wait for itself, if any.

        Only waiting jobs have outgoing edges, so the search stays among those and the
        batch's own new jobs."""
        new_by_id = {job.id: job for job in new_jobs}
        if not any(job.dependencies or job.dependencies_any for job in new_by_id.values()):
            return None  # a cycle through new jobs needs an edge out of one of them
        new_in_group: dict[str, list[int]] = defaultdict(list)
        for job in new_by_id.values():
            new_in_group[job.group].append(job.id)

        def node(job_id: int) -> Job | None:
            job = new_by_id.get(job_id) or lookup(job_id)
            return job if job is not None and (job.id in new_by_id
                                               or job.state is JobState.WAITING) else None

        def edges(job: Job) -> Iterable[int]:
            for entry in (*job.dependencies, *job.dependencies_any):
                if entry.startswith(GROUP_PREFIX):
                    group = entry[len(GROUP_PREFIX):]
                    yield from self._waiting_in_group.get(group, ())
                    yield from new_in_group.get(group, ())
                else:
                    yield int(entry)

        done: set[int] = set()
        for start in new_by_id.values():
            path: set[int] = set()
            stack: list[tuple[Job, Iterator[int]]] = [(start, iter(edges(start)))]
            path.add(start.id)
            while stack:
                current, targets = stack[-1]
                for target_id in targets:
                    if target_id in path:
                        return start
                    target = node(target_id)
                    if target is not None and target_id not in done:
                        path.add(target_id)
                        stack.append((target, iter(edges(target))))
                        break
                else:
                    stack.pop()
                    path.discard(current.id)
                    done.add(current.id)
        return None

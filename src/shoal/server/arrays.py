"""Job arrays kept as one record each, their jobs made as workers take them.

`shoal add --array 1-10000000 CMD` is one row (store/arrays.py), not ten million jobs. Its
first FIRST_ARRAY_JOBS tasks become jobs with the add (so an array that small is all jobs at
once, like any add), and the rest REFILL_JOBS at a time whenever fewer than half of the last
ones made are still waiting to start. Tasks not yet jobs count as queued (in status, and for
dependencies on their group) at the cost of a counter. A kill or removal of the array's group
stops it: the tasks not yet jobs are dropped, and the array says why.

Every batch of tasks becomes jobs in one transaction with the array's count of tasks made, so a
crash neither loses a task nor makes one twice. After a restart the next batch is made at once
(the first check has no last batch to look at): at most one batch more than needed waits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shoal.core.arrays import (
    FIRST_ARRAY_JOBS,
    PLACEHOLDER,
    expand,
    numbers_from,
    parse_array_spec,
    run_count,
)
from shoal.core.errors import InputError
from shoal.core.models import JobSpec, JobState
from shoal.server.effects import AddPlan
from shoal.store.arrays import ArrayRow

if TYPE_CHECKING:
    from shoal.server.service import Service

REFILL_JOBS = 5_000
CHECK_SECONDS = 0.25  # how often, at most, the arrays are looked at
_NOT_STARTED = frozenset({JobState.QUEUED, JobState.WAITING, JobState.DELAYED})


@dataclass
class _Feed:
    row: ArrayRow
    spec: JobSpec  # every task's, {} not yet replaced
    made: list[int] = field(default_factory=list)  # ids of the jobs made last


def _without_caps(spec: JobSpec) -> JobSpec:
    """The spec of an array's later tasks, after a restart too: a cap set with the add (by
    whoever was allowed to) may have been changed since, and is not set again."""
    return spec.model_copy(update={"limits": [entry.partition(":")[0] for entry in spec.limits]})


class ArrayFeeds:
    def __init__(self, service: Service):
        self.service = service
        rows = service.store.arrays()
        self._next_id = max((row.id for row in rows), default=0) + 1
        self._feeds: dict[int, _Feed] = {}
        for row in rows:
            if row.active:
                self._feeds[row.id] = _Feed(row, _without_caps(JobSpec.model_validate(row.spec)))
                service.reactor.array_tasks(row.owner, row.group, row.unfed)
        self._checked_at = -math.inf
        self._missed = False

    def add(self, spec: JobSpec, array: str, *, owner: str, sees_all: bool,
            may_set_caps: bool) -> dict[str, Any]:
        """Keep the array, and make its first tasks jobs, in one commit; or refuse it whole."""
        try:
            runs = parse_array_spec(array)
        except ValueError as exc:
            raise InputError(f"array: {exc}") from None
        if PLACEHOLDER not in spec.cmd:
            raise InputError(f"array: the command has no {PLACEHOLDER} to replace")
        total = run_count(runs)
        # The largest number is the longest item: its job checks every task's (sizes, name).
        largest = self._tasks(spec, numbers_from(runs, total - 1, 1))
        try:
            JobSpec.model_validate(largest[0].model_dump())
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InputError(f"array: task {largest[0].cmd[:60]!r}: {where}: "
                             f"{str(first['msg']).removeprefix('Value error, ')}") from None
        self.service.check_sizes(largest)
        now = self.service.clock()
        row = ArrayRow(id=self._next_id, owner=owner, group=spec.group,
                       spec=spec.model_dump(mode="json", exclude_defaults=True), runs=runs,
                       total=total, fed=0, added_at=now)
        feed = _Feed(row, spec)
        plan = self._make(feed, min(total, FIRST_ARRAY_JOBS), now, sees_all=sees_all,
                          may_set_caps=may_set_caps)
        self._next_id += 1
        feed.spec = _without_caps(spec)
        if feed.row.active:
            self._feeds[row.id] = feed
        self.service.reactor.array_tasks(owner, spec.group, feed.row.unfed)
        self.service.step()
        return {"array": row.id, "tasks": total, "added": len(plan.new_jobs),
                "existed": plan.existed, "ids": plan.ids}

    def feed(self, now: float) -> None:
        """Make jobs of the arrays whose last jobs have mostly started (called each step)."""
        if not self._feeds:
            return
        if now - self._checked_at < CHECK_SECONDS:
            self._missed = True  # looked at again by next_check's time
            return
        self._checked_at, self._missed = now, False
        jobs = self.service.reactor.jobs
        for feed in list(self._feeds.values()):
            waiting = sum(1 for job_id in feed.made
                          if (job := jobs.get(job_id)) is not None and job.state in _NOT_STARTED)
            if 2 * waiting >= max(1, len(feed.made)):
                continue
            before = feed.row.fed
            try:
                self._make(feed, REFILL_JOBS, now, sees_all=True, may_set_caps=True)
            except InputError as exc:  # say, a job its tasks wait for was removed
                self._stop(feed, now, f"its next tasks were refused: {exc}")
                continue
            self.service.reactor.array_tasks(feed.row.owner, feed.row.group,
                                             before - feed.row.fed)
            if not feed.row.active:
                del self._feeds[feed.row.id]

    def next_check(self) -> float | None:
        """When the service must step again for a check that was due too soon after the last."""
        return self._checked_at + CHECK_SECONDS if self._missed and self._feeds else None

    def stop(self, group: str, owner: str | None, reason: str) -> int:
        """Stop the arrays of a group (an owner's, or anyone's): their tasks not yet jobs are
        dropped. Returns how many tasks were."""
        now = self.service.clock()
        dropped = 0
        for feed in list(self._feeds.values()):
            if feed.row.group == group and owner in (None, feed.row.owner):
                dropped += feed.row.unfed
                self._stop(feed, now, reason)
        return dropped

    def modify(self, group: str, owner: str | None, changes: dict[str, Any]) -> None:
        """`shoal mod --group`: the group's arrays make their jobs to come with the changes
        (already checked as the group's jobs took them; a cap is not restated)."""
        for feed in list(self._feeds.values()):
            if feed.row.group != group or owner not in (None, feed.row.owner):
                continue
            fields = feed.spec.model_dump()
            for name, value in changes.items():  # a null clears: the field's default
                fields[name] = value if value is not None else \
                    JobSpec.model_fields[name].get_default(call_default_factory=True)
            fields["limits"] = [entry.partition(":")[0] for entry in fields["limits"]]
            spec = JobSpec.model_validate(fields)
            row = dataclasses.replace(feed.row, group=spec.group, spec=spec.model_dump(
                mode="json", exclude_defaults=True))
            self.service.store.put_array(row)
            reactor = self.service.reactor
            reactor.array_tasks(row.owner, feed.row.group, -row.unfed)
            reactor.array_tasks(row.owner, row.group, row.unfed)
            feed.row, feed.spec = row, spec

    def rows(self, owner: str | None) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.service.store.arrays()
                if owner in (None, row.owner)]

    def _stop(self, feed: _Feed, now: float, reason: str) -> None:
        row = dataclasses.replace(feed.row, stopped_at=now, stop_reason=reason)
        self.service.store.put_array(row)
        self.service.reactor.array_tasks(row.owner, row.group, -feed.row.unfed)
        feed.row = row
        self._feeds.pop(row.id, None)

    def _make(self, feed: _Feed, count: int, now: float, *, sees_all: bool,
              may_set_caps: bool) -> AddPlan:
        """The next `count` tasks as jobs, committed with the array's new count of tasks made."""
        service, row = self.service, feed.row
        numbers = numbers_from(row.runs, row.fed, count)
        plan = service.reactor.plan_add(self._tasks(feed.spec, numbers), rerun=False, now=now,
                                        owner=row.owner, sees_all=sees_all,
                                        may_set_caps=may_set_caps)
        made = dataclasses.replace(row, fed=row.fed + len(numbers))
        service.store.add_jobs(plan.new_jobs, service.reactor.journal_of_new(plan, now),
                               plan.limit_caps, array=made)
        service.reactor.apply_add(plan, now=now)
        service.events.added(plan.added_by_group(), now)
        feed.row, feed.made = made, [job.id for job in plan.new_jobs]
        return plan

    @staticmethod
    def _tasks(spec: JobSpec, numbers: list[int]) -> list[JobSpec]:
        """The tasks' specs: checked once, by the largest number's (see add)."""
        fields = {"cmd": spec.cmd, "name": spec.name, "env": spec.env}
        return [spec.model_copy(update=task)
                for task in expand(fields, [(number, str(number)) for number in numbers])]

"""What the reactor decides, waiting to be committed and sent by the service."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shoal.core.models import Job, JobSpec
from shoal.core.protocol import (
    MAX_MESSAGE_BYTES,
    Ack,
    Assign,
    Assignment,
    AttemptResult,
    Kill,
    KillOrder,
    ToWorker,
)
from shoal.core.states import Transition
from shoal.store import AttemptRow


@dataclass(slots=True)
class Effects:
    """What one tick changed: to commit, then to send."""

    changed: dict[int, Job] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    new_attempts: list[AttemptRow] = field(default_factory=list)
    started: list[tuple[int, int, float]] = field(default_factory=list)  # lease, pid, at
    results: list[AttemptResult] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)  # leases given back unstarted
    removed: list[int] = field(default_factory=list)
    modified: dict[int, Job] = field(default_factory=dict)  # specs changed by `shoal mod`
    learned: list[tuple[str, int, float]] = field(default_factory=list)
    assignments: dict[int, list[Assignment]] = field(default_factory=lambda: defaultdict(list))
    kills: dict[int, list[KillOrder]] = field(default_factory=lambda: defaultdict(list))
    acks: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    disconnect: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.transitions or self.removed or self.assignments
                    or self.kills or self.acks or self.disconnect or self.learned)

    def messages(self) -> dict[int, list[ToWorker]]:
        """Messages per worker id, batched: one Assign and one Kill at most each."""
        out: dict[int, list[ToWorker]] = defaultdict(list)
        # The server's own values (lease ids it made, assignments already built): a step
        # makes these for every job, and checking them again would only cost.
        for worker_id, lease_ids in self.acks.items():
            out[worker_id].append(Ack.trusted(lease_ids=lease_ids))
        for worker_id, kills in self.kills.items():
            out[worker_id].append(Kill(items=kills))
        for worker_id, items in self.assignments.items():
            out[worker_id].extend(Assign.trusted(items=batch)
                                  for batch in _batches(items))
        return out


# An Assign must stay under the message limit the worker enforces, or the worker drops the
# connection and the jobs never start: big jobs (a long env, many files) go in several.
ASSIGN_BUDGET_BYTES = MAX_MESSAGE_BYTES // 2


def encoded_bound(cmd: str, cwd: str, env: dict[str, str], file_paths: list[str],
                  gpus: int = 0) -> int:
    """An upper bound on an assignment's JSON size: a character takes at most 6 bytes
    (\\u00XX), and every other field a bounded amount."""
    chars = len(cmd) + len(cwd) + sum(len(k) + len(v) for k, v in env.items())
    return 1024 + 6 * chars + sum(512 + 6 * len(path) for path in file_paths) + 256 * gpus


def _encoded_bound(item: Assignment) -> int:
    return encoded_bound(item.cmd, item.cwd, item.env, [f.path for f in item.files],
                         len(item.gpus))


def _batches(items: list[Assignment]) -> list[list[Assignment]]:
    batches: list[list[Assignment]] = [[]]
    used = 0
    for item in items:
        size = _encoded_bound(item)
        if batches[-1] and used + size > ASSIGN_BUDGET_BYTES:
            batches.append([])
            used = 0
        batches[-1].append(item)
        used += size
    return batches


@dataclass(frozen=True, slots=True)
class AlikeJobs:
    """Jobs alike but for their commands: `spec`'s fields (its own cmd unused), each with one
    of `cmds`. A large add of a file's lines comes as these: planned and written without a
    spec, a row or (for those left in the backlog) a Job made for each."""

    spec: JobSpec
    cmds: Sequence[str]
    # Each command's key digest (store.key_hash of the owner, it and spec.cwd), if known:
    # made as the chunk is staged, they are not made again when it is committed.
    hashes: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class AddPlan:
    new_jobs: list[Job]  # the new jobs the reactor takes into memory
    requeue: list[int]
    ids: list[int]
    existed: int
    limit_caps: dict[str, int]
    # New queued jobs already written and left in the backlog: (owner, group) -> jobs.
    deferred: Counter[tuple[str, str]] = field(default_factory=Counter)
    backlog_after: tuple[int, int] | None = None  # where the backlog starts, if it grew
    last_id: int | None = None  # the last new job's id

    @property
    def added(self) -> int:
        return len(self.new_jobs) + sum(self.deferred.values())

    def added_by_group(self) -> Counter[tuple[str, str]]:
        """(owner, group) -> new jobs, in memory or in the backlog."""
        return Counter((job.owner, job.group) for job in self.new_jobs) + self.deferred

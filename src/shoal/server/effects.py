"""What the reactor decides, waiting to be committed and sent by the service."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from shoal.core.models import Job
from shoal.core.protocol import Ack, Assign, Assignment, AttemptResult, Kill, KillOrder, ToWorker
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
    removed: list[int] = field(default_factory=list)
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
        for worker_id, lease_ids in self.acks.items():
            out[worker_id].append(Ack(lease_ids=lease_ids))
        for worker_id, kills in self.kills.items():
            out[worker_id].append(Kill(items=kills))
        for worker_id, items in self.assignments.items():
            out[worker_id].append(Assign(items=items))
        return out


@dataclass(frozen=True, slots=True)
class AddPlan:
    new_jobs: list[Job]
    requeue: list[int]
    ids: list[int]
    existed: int
    limit_caps: dict[str, int]

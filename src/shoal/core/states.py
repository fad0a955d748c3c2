"""The job state machine. Every change of a job's state goes through `transition`.

The table below is the whole contract: a pair not in it raises IllegalTransition.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.errors import IllegalTransition
from shoal.core.models import Job, JobState

S = JobState

ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.WAITING: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.WAITING, S.CANCELLED}),
    S.DELAYED: frozenset({S.QUEUED, S.CANCELLED}),
    S.RUNNING: frozenset({S.DONE, S.FAILED, S.DELAYED, S.LOST, S.CANCELLED}),
    # A lost attempt is adopted again when its worker comes back in time,
    # otherwise the job is given another attempt (or fails when none are left).
    S.LOST: frozenset({S.RUNNING, S.QUEUED, S.DELAYED, S.FAILED, S.CANCELLED}),
    # Final states change only when a user acts: retry, or an add with --rerun.
    S.DONE: frozenset({S.QUEUED, S.WAITING}),
    S.FAILED: frozenset({S.QUEUED, S.WAITING}),
    S.CANCELLED: frozenset({S.QUEUED, S.WAITING}),
}


@dataclass(slots=True)  # not frozen: see shoal.server.events
class Transition:
    """One journal entry: what changed, when, and why."""

    job_id: int
    from_state: JobState | None  # None: the job was created
    to_state: JobState
    at: float
    reason: str | None = None
    # The attempt this change ends or loses (it leaves running or lost): its reason is the
    # attempt's own, kept with it.
    lease_id: int | None = None


def created(job: Job, *, now: float) -> Transition:
    """The journal entry of a new job, in the state it was created in."""
    return Transition(job.id, None, job.state, now, None)


def can_transition(from_state: JobState, to_state: JobState) -> bool:
    return to_state in ALLOWED[from_state]


def transition(
    job: Job, to_state: JobState, *, now: float, reason: str | None = None
) -> Transition:
    """Move `job` to `to_state`, keeping the bookkeeping fields that belong to each state right."""
    from_state = job.state
    if to_state not in ALLOWED[from_state]:
        raise IllegalTransition(
            f"job {job.id}: {from_state.value} -> {to_state.value} is not allowed"
        )
    job.state = to_state
    ended_lease = job.lease_id if from_state in (S.RUNNING, S.LOST) \
        and to_state is not S.RUNNING else None
    if to_state is S.QUEUED:
        job.queued_at = now
        job.retry_at = None
    if to_state in (S.QUEUED, S.WAITING) and from_state.is_final:
        # A user asked for the job again: start from a clean result.
        job.fail_reason = None
        job.exit_code = None
    if to_state is S.FAILED or to_state is S.CANCELLED:
        job.fail_reason = reason
    if to_state is not S.RUNNING and to_state is not S.LOST:
        # Only a running (or lost, awaiting its worker) attempt holds a valid lease.
        job.lease_id = None
    return Transition(job.id, from_state, to_state, now, reason, ended_lease)

"""Every from -> to pair of the job state machine, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from shoal.core.errors import IllegalTransition
from shoal.core.models import JobState
from shoal.core.states import ALLOWED, transition

from .factories import make_job

S = JobState

EXPECTED_ALLOWED = {
    (S.WAITING, S.QUEUED), (S.WAITING, S.CANCELLED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.WAITING), (S.QUEUED, S.CANCELLED),
    (S.DELAYED, S.QUEUED), (S.DELAYED, S.CANCELLED),
    (S.RUNNING, S.DONE), (S.RUNNING, S.FAILED), (S.RUNNING, S.DELAYED),
    (S.RUNNING, S.LOST), (S.RUNNING, S.CANCELLED),
    (S.LOST, S.RUNNING), (S.LOST, S.QUEUED), (S.LOST, S.DELAYED), (S.LOST, S.FAILED),
    (S.LOST, S.CANCELLED),
    (S.DONE, S.QUEUED), (S.DONE, S.WAITING),
    (S.FAILED, S.QUEUED), (S.FAILED, S.WAITING),
    (S.CANCELLED, S.QUEUED), (S.CANCELLED, S.WAITING),
}


@pytest.mark.parametrize(("from_state", "to_state"), list(itertools.product(S, S)))
def test_every_pair(from_state: JobState, to_state: JobState) -> None:
    job = make_job(state=from_state)
    if (from_state, to_state) in EXPECTED_ALLOWED:
        entry = transition(job, to_state, now=5.0, reason="why")
        assert job.state is to_state
        assert (entry.from_state, entry.to_state, entry.at) == (from_state, to_state, 5.0)
    else:
        with pytest.raises(IllegalTransition, match=f"{from_state.value} -> {to_state.value}"):
            transition(job, to_state, now=5.0)
        assert job.state is from_state


def test_table_matches_the_documented_diagram() -> None:
    table = {(a, b) for a, targets in ALLOWED.items() for b in targets}
    assert table == EXPECTED_ALLOWED


def test_failure_reason_kept_and_cleared_on_retry() -> None:
    job = make_job(state=S.RUNNING)
    job.lease_id = 9
    transition(job, S.FAILED, now=1.0, reason="exit code 3")
    assert (job.fail_reason, job.lease_id) == ("exit code 3", None)
    transition(job, S.QUEUED, now=2.0)
    assert job.fail_reason is None and job.queued_at == 2.0


def test_final_states_are_final_until_a_user_acts() -> None:
    for state in (S.DONE, S.FAILED, S.CANCELLED):
        assert state.is_final
        assert ALLOWED[state] <= {S.QUEUED, S.WAITING}

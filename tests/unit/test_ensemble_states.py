"""The ensemble run and component state tables: every pair either allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from shoal.core.errors import IllegalTransition
from shoal.ensemble.states import (
    COMPONENT_ALLOWED,
    RUN_ALLOWED,
    ComponentState,
    RunState,
    advance,
    can_advance,
)

C, R = ComponentState, RunState


def test_every_state_has_a_row_and_final_states_lead_nowhere() -> None:
    assert set(RUN_ALLOWED) == set(RunState)
    assert set(COMPONENT_ALLOWED) == set(ComponentState)
    assert all(not RUN_ALLOWED[s] for s in RunState if s.is_final)
    assert all(not COMPONENT_ALLOWED[s] for s in ComponentState if s.is_final)


@pytest.mark.parametrize(("before", "after"), [
    (R.PREPARING, R.RUNNING), (R.RUNNING, R.PREPARING),  # stage after stage
    (R.RUNNING, R.DETACHED), (R.DETACHED, R.DONE), (R.DETACHED, R.FAILED),
    (R.PREPARING, R.FAILED),  # a run timeout while preparing
    (R.PREPARING, R.DETACHED),  # abandoned as a later stage prepared, earlier services kept
    (R.PREPARING, R.CANCELLED), (R.RUNNING, R.ABANDONED),
])
def test_run_changes_a_run_makes(before: RunState, after: RunState) -> None:
    assert advance("run 1", before, after) is after


@pytest.mark.parametrize(("before", "after"), [
    (R.DONE, R.RUNNING), (R.DETACHED, R.RUNNING), (R.DETACHED, R.CANCELLED),
    (R.CANCELLED, R.DONE),
])
def test_run_changes_that_are_refused(before: RunState, after: RunState) -> None:
    with pytest.raises(IllegalTransition, match=f"run 1: {before} -> {after} is not allowed"):
        advance("run 1", before, after)


def test_component_paths() -> None:
    for path in ([C.PENDING, C.PREPARING, C.READY, C.RUNNING, C.DONE],
                 [C.PENDING, C.PREPARING, C.TIMED_OUT],  # its timeout counts preparation
                 [C.PENDING, C.PREPARING, C.READY, C.KILLED],  # held, then the run ended
                 [C.PENDING, C.PREPARING, C.RUNNING, C.FAILED],  # started before Ready was seen
                 [C.PENDING, C.SKIPPED]):  # its stage never came
        for before, after in itertools.pairwise(path):
            assert can_advance(before, after), (before, after)
    for before, after in ((C.PENDING, C.RUNNING), (C.DONE, C.KILLED), (C.SKIPPED, C.PREPARING),
                          (C.RUNNING, C.READY), (C.READY, C.PREPARING)):
        assert not can_advance(before, after), (before, after)


def test_live_and_over() -> None:
    assert {s for s in ComponentState if s.is_live} == {C.PREPARING, C.READY, C.RUNNING}
    assert R.DETACHED.is_over and not R.DETACHED.is_final
    assert not R.RUNNING.is_over

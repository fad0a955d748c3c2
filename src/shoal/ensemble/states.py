"""The states of an ensemble run and of its components. Pure.

As `core.states` does for jobs, each table below is the whole contract: every change of a
run's or a component's state goes through `advance`, and a pair not in its table raises
IllegalTransition.

    run:        preparing <-> running
                    |            |
                    +------+-----+--> detached --> done | failed | abandoned
                           |          (once the services it left running end, or are stopped)
                           +--> done | failed | abandoned | cancelled

    component:  pending --> preparing --> ready --> running --> done | failed | timed_out | killed
                   \\             \\          \\
                    +--> skipped  +----------+--> failed | timed_out | killed

A run is `preparing` while a stage's components are put in place, `running` once a stage has
been released, `detached` when what it waits for is over but services it leaves running are
still up (a run of services only, or --no-kill). A component is `pending` until its stage
comes, `skipped` if the run ends before then.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from shoal.core.errors import IllegalTransition


class RunState(StrEnum):
    PREPARING = "preparing"
    RUNNING = "running"
    DETACHED = "detached"
    DONE = "done"
    FAILED = "failed"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in RUN_FINAL

    @property
    def is_over(self) -> bool:
        """Nothing more to follow: final, or left running on its own (detached)."""
        return self in RUN_FINAL or self is RunState.DETACHED


class ComponentState(StrEnum):
    PENDING = "pending"
    PREPARING = "preparing"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in COMPONENT_FINAL

    @property
    def is_live(self) -> bool:
        """It has a process, or is about to: preparing, held at its start line, or running."""
        return self in COMPONENT_LIVE


R = RunState
C = ComponentState

RUN_FINAL = frozenset({R.DONE, R.FAILED, R.ABANDONED, R.CANCELLED})
COMPONENT_FINAL = frozenset({C.DONE, C.FAILED, C.TIMED_OUT, C.KILLED, C.SKIPPED})
COMPONENT_LIVE = frozenset({C.PREPARING, C.READY, C.RUNNING})
# How a component can end, other than by succeeding.
COMPONENT_FAILURES = frozenset({C.FAILED, C.TIMED_OUT, C.KILLED})

RUN_ALLOWED: dict[RunState, frozenset[RunState]] = {
    # Each stage is prepared, then released; the run can end at any point, or leave the
    # services of earlier stages running (abandoned while a later stage prepared, --no-kill).
    R.PREPARING: frozenset({R.RUNNING, R.DETACHED, R.DONE, R.FAILED, R.ABANDONED,
                            R.CANCELLED}),
    R.RUNNING: frozenset({R.PREPARING, R.DETACHED, R.DONE, R.FAILED, R.ABANDONED,
                          R.CANCELLED}),
    # Left running: it ends with the outcome it had when it detached, once its services end.
    R.DETACHED: frozenset({R.DONE, R.FAILED, R.ABANDONED}),
    R.DONE: frozenset(),
    R.FAILED: frozenset(),
    R.ABANDONED: frozenset(),
    R.CANCELLED: frozenset(),
}

_ENDS = frozenset({C.FAILED, C.TIMED_OUT, C.KILLED})
COMPONENT_ALLOWED: dict[ComponentState, frozenset[ComponentState]] = {
    C.PENDING: frozenset({C.PREPARING, C.SKIPPED}),
    # A release may reach a component before its Ready report does (a sequential start opens
    # one still preparing as soon as it is ready), so it may be seen running, or even done,
    # without having been seen ready.
    C.PREPARING: _ENDS | {C.READY, C.RUNNING, C.DONE},
    C.READY: _ENDS | {C.RUNNING, C.DONE},
    C.RUNNING: _ENDS | {C.DONE},
    C.DONE: frozenset(),
    C.FAILED: frozenset(),
    C.TIMED_OUT: frozenset(),
    C.KILLED: frozenset(),
    C.SKIPPED: frozenset(),
}

ALLOWED = {RunState: RUN_ALLOWED, ComponentState: COMPONENT_ALLOWED}


StateT = TypeVar("StateT", RunState, ComponentState)


def can_advance(from_state: StateT, to_state: StateT) -> bool:
    table: dict[StateT, frozenset[StateT]] = ALLOWED[type(from_state)]  # type: ignore[assignment]
    return to_state in table[from_state]


def advance(what: str, from_state: StateT, to_state: StateT) -> StateT:
    """`to_state`, if the table allows the change; `what` names the run or component."""
    if not can_advance(from_state, to_state):
        raise IllegalTransition(f"{what}: {from_state.value} -> {to_state.value} is not allowed")
    return to_state

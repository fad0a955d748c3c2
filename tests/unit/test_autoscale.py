"""The pure autoscale policy: what it submits and cancels for given demand, capacity and
allocations, in tables, and the caps it never breaks, as properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.models import Job
from shoal.provision.base import AllocationState
from shoal.server.autoscale import (
    AllocationView,
    Demand,
    QueueSettings,
    QueueState,
    Shape,
    Slot,
    WorkerShape,
    after_allocation_ended,
    after_pass,
    after_submit,
    after_submit_failure,
    after_worker_joined,
    decide,
    demand_of,
    resumed,
)

from .factories import make_job

Q = AllocationState.QUEUED
R = AllocationState.RUNNING
F = AllocationState.FINISHED
HOUR = 3600.0
NOW = 10_000.0


def queue(**fields: object) -> QueueSettings:
    base: dict[str, object] = {"name": "q", "max_workers": 8, "time_limit_seconds": HOUR,
                               "workers_per_alloc": 2, "backlog": 2,
                               "worker": WorkerShape(cores=4, memory_bytes=0, gpus=0)}
    base.update(fields)
    return QueueSettings(**base)  # type: ignore[arg-type]


def jobs(count: int, **shape: object) -> list[Demand]:
    return [Demand(Shape(**shape), count)]  # type: ignore[arg-type]


def alloc(id_: int, state: AllocationState = Q, workers: int = 2, **fields: object
          ) -> AllocationView:
    return AllocationView(id=id_, state=state, workers=workers, submitted_at=NOW - 10,
                          **fields)  # type: ignore[arg-type]


def free(cores: int, time_left: float | None = None, **fields: object) -> Slot:
    return Slot(cores=cores, memory_bytes=0, gpus=0, custom={}, time_left=time_left,
                **fields)  # type: ignore[arg-type]


CASES = [
    # (why, settings, demand, connected, allocations, submitted)
    ("50 one-core jobs, 4-core workers: 13 wanted, the backlog lets 2 allocations go",
     queue(), jobs(50), [], [], [2, 2]),
    ("a larger backlog: up to max-workers",
     queue(backlog=10), jobs(50), [], [], [2, 2, 2, 2]),
    ("the last allocation is only as large as the demand",
     queue(backlog=10), jobs(10), [], [], [2, 1]),
    ("connected workers have room for it all", queue(), jobs(6), [free(4), free(4)], [], []),
    ("workers on their way have room for it all", queue(), jobs(8), [], [alloc(1)], []),
    ("a started allocation whose workers are still joining counts as coming",
     queue(), jobs(8), [], [alloc(1, R, started_at=NOW - 5, joined=1)], [1]),
    ("a job larger than the queue's workers is not demand for it",
     queue(), jobs(5, cores=8), [], [], []),
    ("a job needing a GPU the queue's workers lack", queue(), jobs(5, gpus=1), [], [], []),
    ("--time longer than an allocation lives: not demand",
     queue(), jobs(5, time_seconds=HOUR - 10), [], [], []),
    ("--time that fits", queue(), jobs(5, time_seconds=HOUR / 2), [], [], [2]),
    ("a connected worker with too little time left does not count as room",
     queue(), jobs(2, time_seconds=600), [free(4, time_left=60)], [], [1]),
    ("a connected worker with time enough does",
     queue(), jobs(2, time_seconds=600), [free(4, time_left=6000)], [], []),
    ("max-workers reached by running allocations",
     queue(max_workers=4), jobs(50), [], [alloc(1, R, joined=2, connected=2),
                                           alloc(2, R, joined=2, connected=2)], []),
    ("the backlog is full of queued allocations",
     queue(), jobs(50), [], [alloc(1), alloc(2)], []),
    ("room for one more worker under max-workers",
     queue(max_workers=5, backlog=5), jobs(50), [], [alloc(1, R, joined=2, connected=2),
                                                     alloc(2, R, joined=2, connected=2)], [1]),
    ("workers of unknown shape: one allocation to learn it",
     queue(worker=WorkerShape()), jobs(50), [], [], [2]),
    ("workers of unknown shape, one allocation already coming",
     queue(worker=WorkerShape()), jobs(50), [], [alloc(1)], []),
    ("pinned to the queue's label", queue(labels=(("pool", "a"),)),
     jobs(3, label=("pool", "a")), [], [], [1]),
    ("pinned to another label", queue(labels=(("pool", "a"),)),
     jobs(3, label=("pool", "b")), [], [], []),
    ("memory decides: two 3 GiB jobs a 4 GiB worker",
     queue(worker=WorkerShape(cores=8, memory_bytes=4 << 30, gpus=0), backlog=5,
           workers_per_alloc=1),
     jobs(3, memory_bytes=3 << 30), [], [], [1, 1, 1]),
    ("no demand, nothing", queue(), [], [], [], []),
]


@pytest.mark.parametrize(("settings_", "demand", "connected", "allocations", "submitted"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_submissions(settings_: QueueSettings, demand: list[Demand], connected: list[Slot],
                     allocations: list[AllocationView], submitted: list[int]) -> None:
    decision = decide(settings_, QueueState(), demand, connected, allocations, NOW)
    assert decision.submit == submitted


def test_what_a_joined_worker_showed_sizes_the_next_allocations() -> None:
    settings_ = queue(worker=WorkerShape(), backlog=10, workers_per_alloc=1)
    learned = after_worker_joined(QueueState(), WorkerShape(cores=2, memory_bytes=0, gpus=0))
    decision = decide(settings_, learned, jobs(6), [],
                      [alloc(1, R, workers=1, joined=1, connected=1)], NOW)
    assert decision.submit == [1, 1, 1]


def test_a_paused_queue_submits_nothing_but_still_cleans_up() -> None:
    gone = alloc(3, R, joined=2, connected=0, left_at=NOW - 60)
    decision = decide(queue(), QueueState(paused="by user"), jobs(50), [], [gone], NOW)
    assert decision.submit == []
    assert decision.cancel == [(3, "its workers have all left")]


def test_waits_out_the_retry_delay_after_a_failure() -> None:
    state = after_submit_failure(QueueState(), "sbatch: invalid partition", NOW)
    assert decide(queue(), state, jobs(5), [], [], NOW + 1).submit == []
    assert decide(queue(), state, jobs(5), [], [], state.retry_at).submit == [2]


def test_repeated_submit_failures_pause_with_the_reason() -> None:
    state = QueueState()
    for attempt in range(3):
        state = after_submit_failure(state, "sbatch: invalid partition specified: nope",
                                     NOW + attempt)
    decision = decide(queue(), state, jobs(5), [], [], NOW + 1000)
    assert decision.submit == []
    assert decision.pause is not None
    assert "3 submissions in a row failed" in decision.pause
    assert "invalid partition specified: nope" in decision.pause
    paused = after_pass(state, decision, NOW + 1000)
    assert paused.paused == decision.pause
    assert decide(queue(), resumed(paused), jobs(5), [], [], NOW + 1000).submit == [2]


def test_a_success_clears_the_failure_count() -> None:
    state = after_submit_failure(after_submit_failure(QueueState(), "x", NOW), "x", NOW)
    assert after_submit(state).submit_failures == 0
    assert after_submit(state).retry_at == 0.0


def test_allocations_that_die_at_start_pause_the_queue() -> None:
    state = QueueState()
    for _ in range(3):
        state = after_allocation_ended(state, joined=0, reason="slurm: FAILED (NonZeroExitCode)")
    decision = decide(queue(), state, jobs(5), [], [], NOW)
    assert decision.submit == []
    assert decision.pause is not None and "NonZeroExitCode" in decision.pause
    # One whose workers joined breaks the run.
    state = after_allocation_ended(QueueState(start_failures=2), joined=1, reason=None)
    assert state.start_failures == 0


def test_queued_allocations_no_longer_needed_are_cancelled_after_the_idle_timeout() -> None:
    settings_ = queue(idle_timeout_seconds=300)
    waiting = [alloc(1), alloc(2, R, joined=2, connected=2)]
    recent = QueueState(last_demand_at=NOW - 100)
    assert decide(settings_, recent, [], [], waiting, NOW).cancel == []
    old = QueueState(last_demand_at=NOW - 400)
    assert decide(settings_, old, [], [], waiting, NOW).cancel == [
        (1, "no queued job needs its workers")]
    # Demand connected workers cannot take keeps them.
    assert decide(settings_, old, jobs(50), [], waiting, NOW).cancel == []


def test_an_allocation_whose_workers_left_is_cancelled_after_a_grace() -> None:
    left = alloc(1, R, joined=2, connected=0, left_at=NOW - 5)
    assert decide(queue(), QueueState(), [], [], [left], NOW).cancel == []
    assert decide(queue(), QueueState(), [], [], [left], NOW + 60).cancel == [
        (1, "its workers have all left")]


def test_demand_of_groups_by_shape_and_skips_what_no_new_worker_would_run() -> None:
    def job(job_id: int, **fields: object) -> Job:
        made = make_job(job_id)
        for name, value in fields.items():
            setattr(made, name, value)
        return made

    queued = [job(1), job(2), job(3, cores=4), job(4, on_worker="w1"),
              job(5, on_worker="pool=a"), job(6, limits=["db"]), job(7, limits=["db"]),
              job(8, limits=["paused"])]
    demand = {d.shape: d.count for d in demand_of(queued, {"db": 1, "paused": 0})}
    assert demand == {Shape(cores=1): 3, Shape(cores=4): 1,
                      Shape(cores=1, label=("pool", "a")): 1}


# ---- properties ----------------------------------------------------------------------------

shapes = st.builds(Shape, cores=st.integers(1, 8), memory_bytes=st.sampled_from([0, 1 << 30]),
                   gpus=st.integers(0, 1),
                   time_seconds=st.one_of(st.none(), st.floats(1, 2 * HOUR)))
demands = st.lists(st.builds(Demand, shapes, st.integers(1, 200)), max_size=5)
views = st.lists(st.builds(
    AllocationView, id=st.integers(1, 1000), state=st.sampled_from([Q, R, F]),
    workers=st.integers(1, 4), submitted_at=st.just(NOW - 50),
    started_at=st.one_of(st.none(), st.just(NOW - 20)), joined=st.integers(0, 4),
    connected=st.integers(0, 4)), max_size=6)
slots = st.lists(st.builds(Slot, cores=st.integers(0, 8), memory_bytes=st.just(0),
                           gpus=st.integers(0, 1), custom=st.just({}),
                           time_left=st.one_of(st.none(), st.floats(0, 2 * HOUR))), max_size=4)
queues = st.builds(
    QueueSettings, name=st.just("q"), max_workers=st.integers(1, 20),
    time_limit_seconds=st.floats(600, 2 * HOUR), workers_per_alloc=st.integers(1, 4),
    backlog=st.integers(1, 4), worker=st.one_of(st.just(WorkerShape()), st.builds(
        WorkerShape, cores=st.integers(1, 8), memory_bytes=st.just(0), gpus=st.integers(0, 2))))


@settings(max_examples=300, deadline=None)
@given(queues, demands, slots, views)
def test_never_beyond_max_workers_or_the_backlog(settings_: QueueSettings,
                                                  demand: list[Demand], connected: list[Slot],
                                                  allocations: list[AllocationView]) -> None:
    decision = decide(settings_, QueueState(), demand, connected, allocations, NOW)
    active = [a for a in allocations if a.state in (Q, R)]
    queued = sum(1 for a in active if a.state is Q)
    in_use = sum(a.workers for a in active)
    assert all(0 < size <= settings_.workers_per_alloc for size in decision.submit)
    assert in_use + sum(decision.submit) <= max(in_use, settings_.max_workers)
    assert queued + len(decision.submit) <= max(queued, settings_.backlog)
    assert sum(decision.submit) <= max(decision.wanted_workers, 0)
    if decision.submit:
        assert decision.unmet > 0


@settings(max_examples=200, deadline=None)
@given(queues, demands)
def test_demand_that_fits_connected_workers_submits_nothing(settings_: QueueSettings,
                                                            demand: list[Demand]) -> None:
    roomy = [Slot(cores=None, memory_bytes=None, gpus=None, custom=None)]
    assert decide(settings_, QueueState(), demand, roomy, [], NOW).submit == []


@settings(max_examples=200, deadline=None)
@given(queues, shapes, st.integers(1, 100))
def test_a_job_that_outlives_the_allocation_is_never_demand(settings_: QueueSettings,
                                                            shape: Shape, count: int) -> None:
    too_long = Shape(cores=shape.cores, memory_bytes=shape.memory_bytes, gpus=shape.gpus,
                     time_seconds=settings_.time_limit_seconds + 1)
    decision = decide(settings_, QueueState(), [Demand(too_long, count)], [], [], NOW)
    assert decision.submit == [] and decision.demand == 0

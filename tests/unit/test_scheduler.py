"""The pure scheduler: order, fit, limits, reservation, explanations, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.models import Job
from shoal.server.scheduler import Capacity, plan, why_not_running

from .factories import make_job

GiB = 1 << 30


def capacity(worker_id: int, cores: int, memory: int = 0, *, gpus: int = 0,
             custom: dict[str, int] | None = None, labels: dict[str, str] | None = None,
             name: str | None = None) -> Capacity:
    custom = custom or {}
    return Capacity(worker_id=worker_id, name=name or f"w{worker_id}", total_cores=cores,
                    total_memory_bytes=memory, free_cores=cores, free_memory_bytes=memory,
                    labels=labels or {}, total_gpus=gpus,
                    free_gpus=[str(i) for i in range(gpus)], total_custom=dict(custom),
                    free_custom=dict(custom))


def job(job_id: int, **fields: object) -> Job:
    made = make_job(job_id)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def placed(result) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return [(j.id, w) for j, w, _ in result.assignments]


def test_takes_jobs_in_the_order_given_until_full() -> None:
    result = plan(iter([job(i) for i in range(1, 6)]), [capacity(1, 2)])
    assert placed(result) == [(1, 1), (2, 1)]


def test_stops_pulling_once_every_worker_is_full() -> None:
    pulled = []

    def queue():  # type: ignore[no-untyped-def]
        for i in range(1, 1000):
            pulled.append(i)
            yield job(i)

    plan(queue(), [capacity(1, 3)])
    assert pulled == [1, 2, 3]


def test_spreads_over_the_worker_with_most_free_cores() -> None:
    result = plan(iter([job(1), job(2)]), [capacity(1, 1), capacity(2, 4)])
    assert placed(result) == [(1, 2), (2, 2)]


def test_big_job_is_skipped_and_smaller_ones_backfill() -> None:
    result = plan(iter([job(1, cores=8), job(2), job(3)]), [capacity(1, 2)])
    assert placed(result) == [(2, 1), (3, 1)]
    assert [j.id for j in result.skipped] == [1]


def test_a_starving_job_gets_a_worker_held_for_it() -> None:
    workers = [capacity(1, 4), capacity(2, 8)]
    workers[1].free_cores = 2  # busy: the big job does not fit anywhere now
    big = job(1, cores=8, queued_at=0.0)
    small = [job(i, queued_at=50.0) for i in range(2, 6)]
    early = plan(iter([big, *small]), [*workers], now=30.0, starve_after_seconds=60)
    assert early.reserved == {} and len(early.assignments) == 4
    workers = [capacity(1, 4), capacity(2, 8)]
    workers[1].free_cores = 2
    late = plan(iter([big, *small]), workers, now=61.0, starve_after_seconds=60)
    assert late.reserved == {1: 2}
    assert {w for _, w in placed(late)} == {1}  # nothing more lands on the held worker


def test_gpus_are_handed_out_as_items() -> None:
    result = plan(iter([job(1, gpus=2), job(2, gpus=1), job(3, gpus=1)]),
                  [capacity(1, 8, gpus=3)])
    assert [(j.id, ids) for j, _, ids in result.assignments] == [(1, ["0", "1"]), (2, ["2"])]
    assert [j.id for j in result.skipped] == [3]


def test_named_resources_memory_labels_and_names() -> None:
    workers = [capacity(1, 8, 8 * GiB, custom={"licenses": 2}, labels={"rack": "a"}),
               capacity(2, 8, 64 * GiB, name="big")]
    jobs = [job(1, resources={"licenses": 1}), job(2, resources={"licenses": 2}),
            job(3, memory_bytes=32 * GiB), job(4, on_worker="rack=a"), job(5, on_worker="big")]
    result = plan(iter(jobs), workers)
    assert placed(result) == [(1, 1), (3, 2), (4, 1), (5, 2)]
    assert [j.id for j in result.skipped] == [2]


def test_limits_cap_what_runs() -> None:
    jobs = [job(i, limits=["db"]) for i in range(1, 5)] + [job(5)]
    result = plan(iter(jobs), [capacity(1, 8)], limit_room={"db": 2})
    assert [j for j, _ in placed(result)] == [1, 2, 5]
    paused = plan(iter(jobs[:2]), [capacity(1, 8)], limit_room={"db": 0})
    assert paused.assignments == []


@pytest.mark.parametrize(("fields", "workers", "caps", "running", "expected"), [
    ({"cores": 64}, [capacity(1, 16), capacity(2, 8)], {}, {},
     "needs 64 cores; largest worker offers 16 cores"),
    ({"gpus": 2}, [capacity(1, 16)], {}, {}, "needs 2 GPUs; largest worker offers 0 GPUs"),
    ({"memory_bytes": 100 * GiB}, [capacity(1, 16, 16 * GiB)], {}, {},
     "needs 100.0 GiB memory; largest worker offers 16.0 GiB"),
    ({"resources": {"licenses": 3}}, [capacity(1, 4, custom={"licenses": 2})], {}, {},
     "needs licenses=3; largest worker offers licenses=2"),
    ({"cores": 8, "gpus": 1}, [capacity(1, 8), capacity(2, 2, gpus=1)], {}, {},
     "no single worker offers all of: 8 cores, 1 GPUs"),
    ({"on_worker": "gpu7"}, [capacity(1, 4)], {}, {},
     "pinned to worker gpu7, which is not connected"),
    ({"on_worker": "rack=b"}, [capacity(1, 4, labels={"rack": "a"})], {}, {},
     "no connected worker has the label rack=b"),
    ({}, [], {}, {}, "no workers are connected"),
    ({"limits": ["db"]}, [capacity(1, 4)], {"db": 0}, {}, "limit db is paused (cap 0)"),
    ({"limits": ["db"]}, [capacity(1, 4)], {"db": 2}, {"db": 2},
     "limit db is full (2 of 2 running)"),
    ({"cores": 2}, [capacity(1, 4)], {}, {}, "waiting for free resources"),
])
def test_why_a_job_is_not_running(fields: dict[str, object], workers: list[Capacity],
                                  caps: dict[str, int], running: dict[str, int],
                                  expected: str) -> None:
    assert why_not_running(job(1, **fields), workers, caps, running) == expected


job_shapes = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 2),
                                st.integers(0, 2), st.booleans()), max_size=50)
worker_shapes = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 3),
                                   st.integers(0, 3)), min_size=1, max_size=6)


def _jobs(shapes: list[tuple[int, int, int, int, bool]]) -> list[Job]:
    return [job(i + 1, cores=c, memory_bytes=m * GiB, gpus=g,
                resources={"lic": r} if r else {}, limits=["db"] if limited else [])
            for i, (c, m, g, r, limited) in enumerate(shapes)]


def _workers(shapes: list[tuple[int, int, int, int]]) -> list[Capacity]:
    return [capacity(i + 1, c, m * GiB, gpus=g, custom={"lic": r} if r else {})
            for i, (c, m, g, r) in enumerate(shapes)]


@settings(max_examples=300, deadline=None)
@given(job_shapes, worker_shapes, st.integers(0, 5))
def test_never_overcommits_any_resource_or_limit(shapes: list[tuple[int, int, int, int, bool]],
                                                 offered: list[tuple[int, int, int, int]],
                                                 cap: int) -> None:
    jobs = _jobs(shapes)
    result = plan(iter(jobs), _workers(offered), limit_room={"db": cap})
    totals = {w.worker_id: w for w in _workers(offered)}
    used: dict[int, list[int]] = {w: [0, 0, 0, 0] for w in totals}
    gpus_given: dict[int, list[str]] = {w: [] for w in totals}
    for placed_job, worker_id, gpu_ids in result.assignments:
        used[worker_id][0] += placed_job.cores
        used[worker_id][1] += placed_job.memory_bytes
        used[worker_id][2] += placed_job.resources.get("lic", 0)
        assert len(gpu_ids) == placed_job.gpus
        gpus_given[worker_id].extend(gpu_ids)
    for worker_id, worker in totals.items():
        assert used[worker_id][0] <= worker.total_cores
        if worker.total_memory_bytes:
            assert used[worker_id][1] <= worker.total_memory_bytes
        assert used[worker_id][2] <= worker.total_custom.get("lic", 0)
        assert len(gpus_given[worker_id]) == len(set(gpus_given[worker_id]))  # no GPU twice
        assert len(gpus_given[worker_id]) <= worker.total_gpus
    assert sum(1 for j, _, _ in result.assignments if j.limits) <= cap
    order = [j.id for j, _, _ in result.assignments]
    assert order == sorted(order)  # priority/FIFO order as given is kept


@settings(max_examples=150, deadline=None)
@given(job_shapes, worker_shapes)
def test_every_job_that_fits_somewhere_is_eventually_placed(
        shapes: list[tuple[int, int, int, int, bool]],
        offered: list[tuple[int, int, int, int]]) -> None:
    """Run passes, finishing everything placed after each: whatever could ever run, runs."""
    workers = _workers(offered)
    pending = _jobs(shapes)
    for _ in range(len(pending) + 1):
        if not pending:
            break
        result = plan(iter(pending), _workers(offered), limit_room={"db": 1})
        done = {j.id for j, _, _ in result.assignments}
        pending = [j for j in pending if j.id not in done]
    from shoal.server.scheduler import could_ever_fit

    assert all(not any(could_ever_fit(j, w) for w in workers) for j in pending)

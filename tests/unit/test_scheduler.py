"""The pure scheduler: order, fit, and properties that must hold for any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.server.scheduler import Capacity, plan

from .factories import make_job


def capacity(worker_id: int, cores: int, memory: int = 0, name: str | None = None) -> Capacity:
    return Capacity(worker_id, name or f"w{worker_id}", cores, memory, cores, memory)


def test_takes_jobs_in_the_order_given_until_full() -> None:
    jobs = [make_job(i) for i in range(1, 6)]
    result = plan(iter(jobs), [capacity(1, 2)])
    assert [job.id for job, _ in result.assignments] == [1, 2]


def test_stops_pulling_once_every_worker_is_full() -> None:
    pulled = []

    def queue():  # type: ignore[no-untyped-def]
        for i in range(1, 1000):
            pulled.append(i)
            yield make_job(i)

    plan(queue(), [capacity(1, 3)])
    assert pulled == [1, 2, 3]


def test_spreads_over_the_worker_with_most_free_cores() -> None:
    result = plan(iter([make_job(1), make_job(2)]), [capacity(1, 1), capacity(2, 4)])
    assert [w for _, w in result.assignments] == [2, 2]


def test_big_job_is_skipped_and_smaller_ones_fill_in() -> None:
    jobs = [make_job(1, cores=8), make_job(2), make_job(3)]
    result = plan(iter(jobs), [capacity(1, 2)])
    assert [job.id for job, _ in result.assignments] == [2, 3]
    assert [job.id for job in result.skipped] == [1]


def test_memory_and_pinning_are_respected() -> None:
    heavy = make_job(1, memory_bytes=10 << 30)
    pinned = make_job(2)
    pinned.on_worker = "w2"
    result = plan(iter([heavy, pinned]), [capacity(1, 4, 8 << 30), capacity(2, 1, 8 << 30)])
    assert [(job.id, w) for job, w in result.assignments] == [(2, 2)]
    assert [job.id for job in result.skipped] == [1]


@settings(max_examples=300, deadline=None)
@given(
    job_shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4)), max_size=60),
    worker_shapes=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1,
                           max_size=6),
)
def test_never_overcommits_and_places_what_fits(job_shapes: list[tuple[int, int]],
                                                worker_shapes: list[tuple[int, int]]) -> None:
    jobs = [make_job(i + 1, cores=c, memory_bytes=m << 30) for i, (c, m) in enumerate(job_shapes)]
    workers = [capacity(i + 1, c, m << 30) for i, (c, m) in enumerate(worker_shapes)]
    totals = {w.worker_id: (w.free_cores, w.free_memory_bytes) for w in workers}
    result = plan(iter(jobs), [capacity(i + 1, c, m << 30)
                               for i, (c, m) in enumerate(worker_shapes)])
    used: dict[int, list[int]] = {w: [0, 0] for w in totals}
    for job, worker_id in result.assignments:
        used[worker_id][0] += job.cores
        used[worker_id][1] += job.memory_bytes
    for worker_id, (cores, memory) in totals.items():
        assert used[worker_id][0] <= cores
        if memory:
            assert used[worker_id][1] <= memory
    # Each job is either placed or skipped, at most once, and in the given order.
    seen = [job.id for job, _ in result.assignments] + [job.id for job in result.skipped]
    assert len(seen) == len(set(seen))
    placed = [job.id for job, _ in result.assignments]
    assert placed == sorted(placed)
    # A skipped job did not fit in what was left when it was looked at; with nothing placed
    # after it, it does not fit in what is left now either.
    left = {w: (totals[w][0] - used[w][0], totals[w][1] - used[w][1]) for w in totals}
    last_placed = max(placed, default=0)
    for job in result.skipped:
        if job.id > last_placed:
            assert all(job.cores > c or (totals[w][1] and job.memory_bytes > m)
                       for w, (c, m) in left.items())

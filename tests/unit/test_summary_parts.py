"""The slowest jobs a summary lists, kept as jobs end."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.run.summary_parts import SLOWEST_SHOWN, SlowestJobs


@pytest.mark.parametrize("ends, shown", [
    ([], []),
    ([(None, 1)], []),  # no wall time: not among them
    ([(1.0, 1), (3.0, 2), (2.0, 3)], [2, 3, 1]),
    ([(1.0, 1), (5.0, 2), (2.0, 3), (4.0, 4), (0.5, 5)], [2, 4, 3]),
    ([(2.0, 1), (2.0, 2), (2.0, 3), (2.0, 4)], [4, 3, 2]),  # as slow: the later job
])
def test_the_slowest_are_kept_slowest_first(ends: list[tuple[float | None, int]],
                                            shown: list[int]) -> None:
    slowest = SlowestJobs()
    for wall, job_id in ends:
        slowest.saw(wall, job_id, job_id + 100, f"cmd {job_id}")
    entries = slowest.entries()
    assert [entry["id"] for entry in entries] == shown
    assert all(entry["line"] == entry["id"] + 100 and entry["cmd"] == f"cmd {entry['id']}"
               for entry in entries)


@given(st.lists(st.tuples(st.floats(0, 1e6, allow_nan=False), st.integers(1, 10**6)),
                unique_by=lambda end: end[1]))
def test_the_same_as_sorting_every_job(ends: list[tuple[float, int]]) -> None:
    slowest = SlowestJobs()
    for wall, job_id in ends:
        slowest.saw(wall, job_id, 0, "")
    expected = sorted(ends, reverse=True)[:SLOWEST_SHOWN]
    assert [(e["wall_seconds"], e["id"]) for e in slowest.entries()] == expected

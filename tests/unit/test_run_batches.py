"""A file's jobs go to the run in batches; a span that must go in at once is never cut."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shoal.core.models import JobSpec
from shoal.run import inputs
from shoal.run.inputs import Item, RunInput


def _sizes(jobs: int, uncut: tuple[tuple[int, int], ...]) -> list[int]:
    items = iter([Item(n, JobSpec(cmd=f"echo {n}"), "") for n in range(1, jobs + 1)])
    run = RunInput(label="f", key="f", base=Path("/nonexistent"), starts_over=False,
                   _items=items, _uncut=uncut)

    async def collect() -> list[int]:
        return [len(batch) async for batch in run.batches()]

    return asyncio.run(collect())


@pytest.mark.parametrize("uncut, sizes", [
    ((), [4, 4, 2]),
    (((2, 3),), [4, 4, 2]),  # inside the first batch already
    (((3, 6),), [6, 4]),  # the first batch stretched to its end
    (((3, 5), (5, 9)), [9, 1]),  # one span leading into the next
    (((5, 6), (8, 10)), [4, 6]),  # the second batch stretched to the end of the file
])
def test_batches_stretch_over_uncut_spans(monkeypatch: pytest.MonkeyPatch,
                                          uncut: tuple[tuple[int, int], ...],
                                          sizes: list[int]) -> None:
    monkeypatch.setattr(inputs, "BATCH", 4)
    monkeypatch.setattr(inputs, "FIRST_BATCH", 4)
    assert _sizes(10, uncut) == sizes


@pytest.mark.parametrize("uncut, sizes", [
    ((), [2, 4, 2, 8, 8, 6]),  # then BATCH at a time, from where BATCH ends
    (((2, 5),), [5, 3, 8, 8, 6]),  # a first batch stretched over a span
])
def test_the_first_batch_is_small_and_each_next_twice_the_last(
        monkeypatch: pytest.MonkeyPatch, uncut: tuple[tuple[int, int], ...],
        sizes: list[int]) -> None:
    """The first jobs start once a few lines are in, not once thousands are; from BATCH
    lines on, batches end where BATCH-sized ones would have (a run feeds AHEAD jobs)."""
    monkeypatch.setattr(inputs, "BATCH", 8)
    monkeypatch.setattr(inputs, "FIRST_BATCH", 2)
    assert _sizes(30, uncut) == sizes

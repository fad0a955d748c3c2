"""A reading thread's items reach the loop in order, every one, then its error if any."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from shoal.run.arrivals import arrivals


async def _collect(read: Callable[[Callable[[int], None]], None]) -> list[list[int]]:
    return [batch async for batch in arrivals(read, "test-reader")]


def test_every_item_arrives_in_order_while_the_reader_goes_on() -> None:
    gate = threading.Event()

    def read(put: Callable[[int], None]) -> None:
        for item in range(5):
            put(item)
        assert gate.wait(10)  # the loop takes some before the rest are put
        for item in range(5, 8):
            put(item)

    async def main() -> list[list[int]]:
        batches: list[list[int]] = []
        async for batch in arrivals(read, "test-reader"):
            batches.append(batch)
            gate.set()
        return batches

    batches = asyncio.run(main())
    assert [item for batch in batches for item in batch] == list(range(8))
    assert len(batches) >= 2  # handed over while the reader was still reading


def test_an_error_of_the_reader_is_raised_after_what_it_put() -> None:
    def read(put: Callable[[int], None]) -> None:
        put(1)
        put(2)
        raise OSError(28, "No space left on device")

    seen: list[int] = []

    async def main() -> None:
        async for batch in arrivals(read, "test-reader"):
            seen.extend(batch)

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(main())
    assert seen == [1, 2]


def test_a_reader_that_puts_nothing_ends_the_iteration() -> None:
    assert asyncio.run(_collect(lambda put: None)) == []

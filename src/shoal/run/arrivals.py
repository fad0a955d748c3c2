"""What a reading thread hands the event loop, in batches of what has arrived.

stdin's lines and --pipe's blocks are read by a thread of their own (a read of a pipe blocks),
which gives each item to the loop as it comes; the loop takes, at each turn, everything that
arrived since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _End(Generic[T]):
    """The reader returned, or raised `error`."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


async def arrivals(read: Callable[[Callable[[T], None]], None], name: str
                   ) -> AsyncIterator[list[T]]:
    """Run `read(put)` in a thread named `name`; yield, in order, the items it puts, a list of
    all those waiting each time, until it returns. An exception it raises is raised here after
    the items put before it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[T | _End[T]] = asyncio.Queue()

    def hand(value: T | _End[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the run is over and its loop closed
            loop.call_soon_threadsafe(queue.put_nowait, value)

    def run() -> None:
        try:
            read(hand)
        except BaseException as error:  # handed to the loop, raised there
            hand(_End(error))
        else:
            hand(_End())

    threading.Thread(target=run, name=name, daemon=True).start()
    while True:
        items: list[T] = []
        value = await queue.get()
        while not isinstance(value, _End):
            items.append(value)
            if queue.empty():
                break
            value = queue.get_nowait()
        if items:
            yield items
        if isinstance(value, _End):
            if value.error is not None:
                raise value.error
            return

"""Pausing Python's cyclic garbage collector where it can only cost time."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """For code that makes many objects with no reference cycles among them (rows read, a
    page of jobs built): each allocation-triggered collection would rescan everything the
    server holds (a page of 100,000 jobs spent about a third of its time so)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Starting up makes objects that live as long as the process (modules, classes, typer's and
# pydantic's schemas; a few hundred are garbage), and the cyclic collector, run after every
# 700 new ones, spent 10 ms of a one-job `shoal run` looking through them. The console
# script's `main` holds it off until the verb's own work begins (the verb's callback for most
# verbs; the event loop for `shoal run`, whose callback sets it up), then freezes what is
# there, which later collections pass over, as `gc.freeze` advises for start-up.
_collection_held = False


def hold_collection() -> None:
    global _collection_held
    if gc.isenabled():
        gc.disable()
        _collection_held = True


def resume_collection() -> None:
    global _collection_held
    if _collection_held:
        _collection_held = False
        gc.freeze()
        gc.enable()

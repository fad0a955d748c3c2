"""The events interface: a committed tick's effects become typed events, in order, and an
observer that fails does not stop the others."""

from __future__ import annotations

from collections.abc import Sequence

from shoal.core.models import Job, JobState
from shoal.core.protocol import AttemptResult
from shoal.core.states import Transition
from shoal.server.effects import Effects
from shoal.server.events import (
    AttemptFinished,
    AttemptStarted,
    Committed,
    Event,
    Events,
    JobsAdded,
    JobsRemoved,
    JobTransitioned,
    WorkerLeft,
    events_of_tick,
)
from shoal.store import AttemptRow

from .factories import make_job as _make_job


def make_job(job_id: int, *, group: str, owner: str) -> Job:
    job = _make_job(job_id)
    job.group, job.owner = group, owner
    return job

S = JobState


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def process(self, events: Sequence[Event]) -> None:
        self.seen.extend(events)


class Broken:
    def process(self, events: Sequence[Event]) -> None:
        raise RuntimeError("an observer's bug")


def test_a_tick_becomes_events_with_group_owner_and_timings() -> None:
    job = make_job(7, group="align", owner="alice")
    job.queued_at, job.cores, job.memory_bytes = 100.0, 2, 1024
    job.worker = "w1"
    effects = Effects(changed={7: job})
    effects.transitions.append(Transition(7, S.QUEUED, S.RUNNING, 103.5))
    effects.new_attempts.append(AttemptRow(99, 7, 1, "w1", "host1", "x"))
    effects.transitions.append(Transition(7, S.RUNNING, S.DONE, 110.0))
    effects.results.append(AttemptResult(job_id=7, lease_id=99, outcome="exited", exit_code=0,
                                         started_at=103.6, ended_at=109.9, wall_seconds=6.3,
                                         cpu_seconds=5.0, peak_rss_bytes=4096))
    effects.removed.append(3)
    effects.disconnect.append(2)
    events = events_of_tick([effects], 0.002, 111.0)
    assert events[0] == JobTransitioned(7, "align", "alice", S.QUEUED, S.RUNNING, 103.5)
    assert events[1].to_state is S.DONE  # type: ignore[union-attr]
    started = next(e for e in events if isinstance(e, AttemptStarted))
    assert (started.worker, started.host, started.waited_seconds, started.cores) == \
        ("w1", "host1", 3.5, 2)
    finished = next(e for e in events if isinstance(e, AttemptFinished))
    assert (finished.group, finished.wall_seconds, finished.peak_rss_bytes) == \
        ("align", 6.3, 4096)
    assert JobsRemoved((3,), 111.0) in events and WorkerLeft(2, 111.0) in events
    assert events[-1] == Committed(0.002, 2, 111.0)


def test_observers_get_batches_and_a_failing_one_is_skipped() -> None:
    bus = Events()
    assert not bus.watched
    bus.added({("bob", "g"): 1}, 5.0)  # nobody listens: nothing is built
    first, second = Recorder(), Recorder()
    bus.subscribe(first)
    bus.subscribe(Broken())
    bus.subscribe(second)
    bus.added({("bob", "g"): 3, ("bob", "h"): 1}, 5.0)
    assert first.seen == second.seen == [JobsAdded("g", "bob", 3, 5.0),
                                         JobsAdded("h", "bob", 1, 5.0)]
    bus.unsubscribe(first)
    bus.committed([Effects()], 0.001, 6.0)
    assert second.seen[-1] == Committed(0.001, 0, 6.0) and len(first.seen) == 2

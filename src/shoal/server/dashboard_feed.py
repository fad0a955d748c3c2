"""What the dashboard learns from the events interface: which parts of which pages changed (for
the live feed), groups' throughput, and workers' utilisation over time.

All three are `EventProcessor`s: they hear of committed changes only, and keep small, bounded
summaries; the pages read current state from the service.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.core.models import FINAL_STATES, JobState
from shoal.server.events import (
    AttemptFinished,
    AttemptStarted,
    EnsembleStageStarted,
    Event,
    JobsAdded,
    JobsMoved,
    JobsRemoved,
    JobTransitioned,
    WorkerJoined,
    WorkerLeft,
)

if TYPE_CHECKING:
    from shoal.server.service import Service

# A browser is told at most this often that something changed; a page of a million jobs is
# then read at most this often per open tab.
FEED_INTERVAL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
ENSEMBLE_GROUP_PREFIX = "ensemble."


@dataclass
class Subscriber:
    """One open page: whose changes it may hear of (None: all) and the job it shows."""

    scope: str | None
    job_id: int | None = None
    topics: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFeed:
    """Tells open pages which of their parts changed: `groups`, `jobs`, `job` (the one shown),
    `workers`, `ensembles`. A subscriber hears only of its own jobs unless it sees all."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, scope: str | None, job_id: int | None = None) -> Subscriber:
        subscriber = Subscriber(scope, job_id)
        self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def process(self, events: Sequence[Event]) -> None:
        if not self._subscribers:
            return
        owners: set[str] = set()
        jobs: set[int] = set()
        workers = ensembles = False
        for event in events:
            if isinstance(event, JobTransitioned):
                owners.add(event.owner)
                jobs.add(event.job_id)
                ensembles = ensembles or event.group.startswith(ENSEMBLE_GROUP_PREFIX)
            elif isinstance(event, JobsAdded):
                owners.add(event.owner)
            elif isinstance(event, JobsMoved):
                owners.add(event.owner)
                ensembles = ensembles or event.group.startswith(ENSEMBLE_GROUP_PREFIX)
            elif isinstance(event, JobsRemoved):
                owners.add("")  # owners unknown: tell everyone
                jobs.update(event.job_ids)
            elif isinstance(event, AttemptStarted | AttemptFinished):
                owners.add(event.owner)
                jobs.add(event.job_id)
                workers = True
            elif isinstance(event, WorkerJoined | WorkerLeft):
                workers = True
            elif isinstance(event, EnsembleStageStarted):
                ensembles = True
        for subscriber in self._subscribers:
            topics: set[str] = set()
            if owners and (subscriber.scope is None or subscriber.scope in owners
                           or "" in owners):
                topics.update(("groups", "jobs"))
            if subscriber.job_id is not None and subscriber.job_id in jobs:
                topics.add("job")
            if workers:
                topics.add("workers")
            if ensembles:
                topics.add("ensembles")
            if topics:
                subscriber.topics |= topics
                subscriber.wake.set()

    async def stream(self, subscriber: Subscriber,
                     disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """Server-sent events for one page until it goes away."""
        try:
            yield "retry: 3000\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        await subscriber.wake.wait()
                except TimeoutError:
                    if await disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                await asyncio.sleep(FEED_INTERVAL_SECONDS)  # gather what follows
                subscriber.wake.clear()
                topics, subscriber.topics = subscriber.topics, set()
                for topic in sorted(topics):
                    yield f"event: {topic}\ndata: {int(time.time() * 1000)}\n\n"
        finally:
            self.unsubscribe(subscriber)


class Throughput:
    """Jobs ended per group (and owner) in the last minutes, in 10-second buckets."""

    BUCKET_SECONDS = 10.0
    WINDOW_SECONDS = 300.0

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        # (owner, group) -> deque of [bucket start, count]
        self._ended: dict[tuple[str, str], deque[list[float]]] = {}

    def process(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, JobTransitioned) and event.to_state in FINAL_STATES \
                    and event.to_state is not JobState.CANCELLED:
                buckets = self._ended.setdefault((event.owner, event.group), deque())
                start = event.at - event.at % self.BUCKET_SECONDS
                if buckets and buckets[-1][0] == start:
                    buckets[-1][1] += 1
                else:
                    buckets.append([start, 1])
                while buckets and buckets[0][0] < event.at - self.WINDOW_SECONDS:
                    buckets.popleft()

    def per_minute(self, group: str, owner: str | None) -> float:
        """Jobs of the group that ended per minute over the window (or since the first)."""
        now = self._clock()
        since = now - self.WINDOW_SECONDS
        count = 0.0
        first = now
        for (who, name), buckets in self._ended.items():
            if name != group or (owner is not None and who != owner):
                continue
            for start, ended in buckets:
                if start >= since - self.BUCKET_SECONDS:
                    count += ended
                    first = min(first, start)
        if not count:
            return 0.0
        span = max(now - max(first, since), self.BUCKET_SECONDS)
        return count * 60.0 / span


class Utilisation:
    """Workers' resources in use and offered, sampled at most every SAMPLE_SECONDS when
    something changed (resources change only with a committed change), for one hour."""

    SAMPLE_SECONDS = 2.0
    KEEP = 1800

    def __init__(self, service: Service, clock: Callable[[], float] = time.time):
        self._service = service
        self._clock = clock
        self.samples: deque[dict[str, float]] = deque(maxlen=self.KEEP)
        self._last = 0.0

    def process(self, events: Sequence[Event]) -> None:
        if any(isinstance(e, AttemptStarted | AttemptFinished | WorkerJoined | WorkerLeft)
               for e in events):
            self.sample()

    def sample(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self.SAMPLE_SECONDS:
            return
        self._last = now
        totals = dict.fromkeys(("cores_used", "cores_offered", "memory_used", "memory_offered",
                                "gpus_used", "gpus_offered"), 0.0)
        for worker in self._service.workers():
            if not worker["connected"]:
                continue
            offered, used = worker["resources"], worker["used"]
            assert isinstance(offered, dict) and isinstance(used, dict)
            totals["cores_used"] += used["cores"]
            totals["cores_offered"] += offered["cores"]
            totals["memory_used"] += used["memory_bytes"]
            totals["memory_offered"] += offered["memory_bytes"]
            totals["gpus_used"] += used["gpus"]
            totals["gpus_offered"] += len(offered["gpus"])
        self.samples.append({"at": now, **totals})

    def series(self) -> dict[str, list[float]]:
        self.sample()
        keys = ("at", "cores_used", "cores_offered", "memory_used", "memory_offered",
                "gpus_used", "gpus_offered")
        return {key: [sample[key] for sample in self.samples] for key in keys}

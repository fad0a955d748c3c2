"""`/metrics` in Prometheus' text format.

Counters and histograms are fed by the events interface (`shoal.server.events`); the gauges of
jobs by state and group and of workers' resources are read from the service's own read methods
when Prometheus scrapes, so they are never stale and cost nothing between scrapes. Each app has
its own registry: several servers in one process (tests) do not mix their figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from shoal import __version__
from shoal.core.models import JobState
from shoal.server.events import (
    AttemptFinished,
    AttemptStarted,
    Committed,
    EnsembleStageStarted,
    Event,
    JobsAdded,
    JobsMoved,
    JobTransitioned,
    WorkerJoined,
    WorkerLeft,
    WorkerMessage,
)

if TYPE_CHECKING:
    from shoal.server.service import Service

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Buckets in seconds: scheduling is milliseconds to hours, runs are seconds to days.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600,
                   4 * 3600, 24 * 3600)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600,
               24 * 3600, 7 * 24 * 3600)
COMMIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                  2.5, 5)
SPREAD_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5)
STATES = [state.value for state in JobState]
# The *_created series double what Prometheus stores and say nothing a restart does not.
disable_created_metrics()


class Metrics:
    """The server's metrics: an `EventProcessor` for what happens, a collector for what is."""

    def __init__(self, service: Service):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transitions = Counter(
            "shoal_job_transitions", "Job state changes committed, by from and to state.",
            ["from_state", "to_state"], registry=r)
        self.added = Counter("shoal_jobs_added", "Jobs added, by group.", ["group"], registry=r)
        self.attempts_started = Counter(
            "shoal_attempts_started", "Attempts handed to workers.", registry=r)
        self.attempts_finished = Counter(
            "shoal_attempts_finished", "Attempts reported ended, by outcome (exited, killed, "
            "time_limit, memory_limit, spawn_error) and success.", ["outcome", "success"],
            registry=r)
        self.schedule_latency = Histogram(
            "shoal_job_schedule_latency_seconds", "Time from queued to handed to a worker.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.run_time = Histogram(
            "shoal_job_run_seconds", "Wall time of ended attempts.", buckets=RUN_BUCKETS,
            registry=r)
        self.commit_time = Histogram(
            "shoal_db_commit_seconds", "Time to commit one tick's changes to the database.",
            buckets=COMMIT_BUCKETS, registry=r)
        self.worker_joins = Counter("shoal_worker_joins", "Worker registrations.", registry=r)
        self.worker_departures = Counter(
            "shoal_worker_departures", "Workers disconnected or dropped.", registry=r)
        self.messages = Counter(
            "shoal_websocket_messages", "Messages on workers' WebSockets, by direction "
            "(in: from workers) and type.", ["direction", "type"], registry=r)
        self.message_bytes = Counter(
            "shoal_websocket_message_bytes", "Bytes of messages on workers' WebSockets.",
            ["direction"], registry=r)
        self.spread = Histogram(
            "shoal_ensemble_start_spread_seconds", "Time from the first to the last start of "
            "an ensemble stage's components.", buckets=SPREAD_BUCKETS, registry=r)
        r.register(_Current(service))

    def process(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, JobTransitioned):
                self.transitions.labels(
                    event.from_state.value if event.from_state else "none",
                    event.to_state.value).inc()
            elif isinstance(event, JobsMoved):
                self.transitions.labels(event.from_state.value,
                                        event.to_state.value).inc(event.count)
            elif isinstance(event, WorkerMessage):
                self.messages.labels(event.direction, event.type).inc()
                self.message_bytes.labels(event.direction).inc(event.size_bytes)
            elif isinstance(event, AttemptStarted):
                self.attempts_started.inc()
                if event.waited_seconds is not None:
                    self.schedule_latency.observe(max(0.0, event.waited_seconds))
            elif isinstance(event, AttemptFinished):
                success = event.outcome == "exited" and event.exit_code == 0
                self.attempts_finished.labels(event.outcome, str(success).lower()).inc()
                self.run_time.observe(max(0.0, event.wall_seconds))
            elif isinstance(event, Committed):
                self.commit_time.observe(event.seconds)
            elif isinstance(event, JobsAdded):
                self.added.labels(event.group).inc(event.count)
            elif isinstance(event, WorkerJoined):
                self.worker_joins.inc()
            elif isinstance(event, WorkerLeft):
                self.worker_departures.inc()
            elif isinstance(event, EnsembleStageStarted) and event.spread_seconds is not None:
                self.spread.observe(event.spread_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Current(Collector):
    """Gauges read at scrape time from the service: jobs by state and group, workers and what
    they offer and use."""

    def __init__(self, service: Service):
        self.service = service

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families are only known at collect time

    def collect(self) -> Iterator[Metric]:
        service = self.service
        jobs = GaugeMetricFamily("shoal_jobs", "Jobs by state and group.",
                                 labels=["state", "group"])
        status = service.status()
        for group, states in status["groups"].items():
            for state in STATES:
                if state in states or state in ("queued", "running"):
                    jobs.add_metric([state, group], states.get(state, 0))
        yield jobs
        totals = GaugeMetricFamily("shoal_jobs_total_by_state", "Jobs by state, all groups.",
                                   labels=["state"])
        for state in STATES:
            totals.add_metric([state], status["totals"].get(state, 0))
        yield totals
        workers = service.workers()
        connected = [w for w in workers if w["connected"]]
        yield GaugeMetricFamily("shoal_workers", "Workers connected.", value=len(connected))
        families = {
            (kind, what): GaugeMetricFamily(
                f"shoal_worker_{what}_{kind}",
                f"{what.replace('_', ' ').capitalize()} {kind} by each connected worker.",
                labels=["worker", "host"])
            for kind in ("offered", "used") for what in ("cores", "memory_bytes", "gpus")}
        for worker in connected:
            offered, used = worker["resources"], worker["used"]
            labels = [str(worker["name"]), str(worker["host"])]
            assert isinstance(offered, dict) and isinstance(used, dict)
            families["offered", "cores"].add_metric(labels, offered["cores"])
            families["offered", "memory_bytes"].add_metric(labels, offered["memory_bytes"])
            families["offered", "gpus"].add_metric(labels, len(offered["gpus"]))
            families["used", "cores"].add_metric(labels, used["cores"])
            families["used", "memory_bytes"].add_metric(labels, used["memory_bytes"])
            families["used", "gpus"].add_metric(labels, used["gpus"])
        yield from families.values()
        yield GaugeMetricFamily("shoal_server_start_time_seconds",
                                "When the server started, in seconds since the epoch.",
                                value=service.started_at)
        info = InfoMetricFamily("shoal_build", "The shoal version serving.")
        info.add_metric([], {"version": __version__})
        yield info

"""A worker with a time limit (one inside a batch allocation) gets no job whose --time would
outlive it; a worker that is stopping hands back what it is still given."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.core.models import JobState
from shoal.core.protocol import (
    PROTOCOL_VERSION,
    Assign,
    Assignment,
    Finished,
    FromWorker,
    Register,
    Resources,
)
from shoal.server.reactor import Reactor
from shoal.server.scheduler import Capacity, plan
from shoal.worker.agent import Agent

from .factories import make_job, spec


def capacity(worker_id: int, deadline: float | None) -> Capacity:
    return Capacity(worker_id=worker_id, name=f"w{worker_id}", total_cores=4,
                    total_memory_bytes=0, free_cores=4, free_memory_bytes=0,
                    deadline=deadline)


def test_plan_keeps_a_long_job_off_a_worker_that_ends_first() -> None:
    long = make_job(1)
    long.time_seconds = 600.0
    short = make_job(2)
    short.time_seconds = 30.0
    unknown = make_job(3)  # no --time: nothing to compare
    result = plan(iter([long, short, unknown]), [capacity(1, deadline=1000.0 + 60)], now=1000.0)
    assert [(job.id, worker) for job, worker, _ in result.assignments] == [(2, 1), (3, 1)]
    assert [job.id for job in result.skipped] == [1]
    result = plan(iter([long]), [capacity(1, deadline=1000.0 + 60), capacity(2, None)],
                  now=1000.0)
    assert [(job.id, worker) for job, worker, _ in result.assignments] == [(1, 2)]


def test_the_time_a_worker_has_left_comes_with_its_register() -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    worker_id = reactor.worker_joined(Register(
        protocol_version=PROTOCOL_VERSION, instance_secret="ab" * 16, name="alloc-1",
        host="node1", resources=Resources(cores=2, memory_bytes=1 << 30),
        provider="slurm:q/1", time_left_seconds=120.0), 100.0)
    assert reactor.workers[worker_id].deadline == 220.0
    assert reactor.workers[worker_id].to_dict()["deadline"] == 220.0
    plan_ = reactor.plan_add([spec("sleep 600", time_seconds=600.0),
                              spec("sleep 60", time_seconds=60.0)], rerun=False, now=100.0)
    reactor.apply_add(plan_, now=100.0)
    reactor.schedule(101.0)
    states = {job.cmd: job.state for job in reactor.jobs.values()}
    assert states == {"sleep 600": JobState.QUEUED, "sleep 60": JobState.RUNNING}


def test_a_stopping_worker_hands_back_assignments_at_once(tmp_path: Path) -> None:
    async def scenario() -> list[FromWorker]:
        sent: list[FromWorker] = []
        agent = Agent("w", Resources(cores=1, memory_bytes=1 << 30), tmp_path / "spool")
        agent.ends_at = 0.0  # long past: it says it has no time left
        assert agent.register_message().time_left_seconds == 0.0
        agent.connected(sent.append)
        agent.begin_stop()
        agent.handle(Assign(items=[Assignment(job_id=7, lease_id=70, cmd="true", cwd="",
                                              env={}, cores=1, memory_bytes=0)]))
        await asyncio.sleep(0.05)
        return sent

    sent = asyncio.run(scenario())
    [finished] = [m for m in sent if isinstance(m, Finished)]
    assert [(r.job_id, r.lease_id, r.outcome) for r in finished.items] == [(7, 70, "killed")]

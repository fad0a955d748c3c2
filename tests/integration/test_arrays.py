"""Arrays kept as one record: a ten-million-task array is added at once and costs what its
first jobs cost; its tasks become jobs as workers take them, each exactly once, across a
restart; killing its group drops the rest."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.core.arrays import FIRST_ARRAY_JOBS
from shoal.core.models import JobSpec, JobState
from shoal.core.protocol import (
    PROTOCOL_VERSION,
    Assign,
    AttemptResult,
    Finished,
    Register,
    Resources,
    Started,
    StartedItem,
    ToWorker,
)
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store

from .cluster import Cluster, running_cluster, wait_until


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Cluster]:
    """A real server and a real worker; jobs limited to `hold` (cap 0) wait."""
    with running_cluster(tmp_path, workers=[("w1", 2)]) as instance:
        instance.api("PUT", "/limits/hold", json={"cap": 0})
        yield instance


def test_ten_million_tasks_are_one_record_and_their_group_can_be_stopped(
        held: Cluster) -> None:
    added = held.cli("add", "--array", "1-10000000", "--group", "big", "--limit", "hold",
                     "--json", "echo {}")
    assert added.returncode == 0, added.stderr
    answer = json.loads(added.stdout)
    assert (answer["tasks"], answer["added"], len(answer["ids"])) == (
        10_000_000, FIRST_ARRAY_JOBS, FIRST_ARRAY_JOBS)
    # Status counts every task; only the first are jobs, in memory and in the database.
    assert held.api("GET", "/status")["groups"]["big"] == {"queued": 10_000_000}
    assert held.api("GET", "/jobs", params={"group": "big", "limit": 1})["total"] \
        == FIRST_ARRAY_JOBS
    with sqlite3.connect(held.home / "shoal.db") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == FIRST_ARRAY_JOBS
    listed = held.cli("arrays")
    assert "10,000,000" in listed.stdout and "9,990,000" in listed.stdout, listed.stdout
    # A job after the whole group waits for the tasks that are not jobs yet too.
    after = held.cli("add", "--after", "group:big", "--json", "echo after")
    after_id = json.loads(after.stdout)["ids"][0]
    assert held.api("GET", f"/jobs/{after_id}")["state"] == "waiting"

    killed = held.cli("kill", "--group", "big")
    assert killed.returncode == 0, killed.stderr
    (array,) = held.api("GET", "/arrays")["arrays"]
    assert array["not_yet_jobs"] == 0 and array["stop_reason"] == "its group was killed"
    assert held.api("GET", "/status")["groups"]["big"] == {"cancelled": FIRST_ARRAY_JOBS}
    assert held.api("GET", f"/jobs/{after_id}")["state"] == "cancelled"


def test_a_bad_array_is_one_line_and_adds_nothing(held: Cluster) -> None:
    for args, message in (
            (["--array", "1-200000000", "echo {}"], "makes more than 100,000,000 tasks"),
            (["--array", "1-3", "--rerun", "echo {}"], "--rerun: not for --array"),
            (["--array", "1-3", "--after", "99", "echo {}"], "dependency 99 does not exist")):
        refused = held.cli("add", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert held.api("GET", "/arrays")["arrays"] == []
    assert held.api("GET", "/status")["totals"] == {}


class InstantWorker:
    """A worker link that reports each job it is given started and done at once."""

    def __init__(self, service: Service):
        self.service, self.worker_id = service, 0
        self.loop = asyncio.get_running_loop()

    def send(self, message: ToWorker) -> None:
        if not isinstance(message, Assign):
            return
        started = Started(items=[StartedItem(job_id=a.job_id, lease_id=a.lease_id, pid=1,
                                             started_at=0.0) for a in message.items])
        finished = Finished(items=[AttemptResult(
            job_id=a.job_id, lease_id=a.lease_id, outcome="exited", exit_code=0, pid=1,
            started_at=0.0, ended_at=0.0, wall_seconds=0.0, cpu_seconds=0.0,
            peak_rss_bytes=0) for a in message.items])
        self.loop.call_soon(self.service.deliver, self.worker_id, started)
        self.loop.call_soon(self.service.deliver, self.worker_id, finished)

    def close(self, reason: str) -> None:
        pass


async def _run_until(service: Service, done_at_least: int, cores: int = 64) -> None:
    link = InstantWorker(service)
    link.worker_id = service.join(Register(
        protocol_version=PROTOCOL_VERSION, name=f"sim-{secrets.token_hex(3)}", host="sim",
        instance_secret=secrets.token_hex(16),
        resources=Resources(cores=cores, memory_bytes=1 << 34)), link)
    for _ in range(3000):
        if service.status()["totals"].get("done", 0) >= done_at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"stuck at {service.status()['totals']}")


def test_every_task_becomes_one_job_once_across_a_restart(tmp_path: Path) -> None:
    tasks = 2 * FIRST_ARRAY_JOBS + 1234
    config = ReactorConfig(lost_grace_seconds=0.0, restart_grace_seconds=0.0)

    async def first_half() -> None:
        service = Service(Store(tmp_path / "shoal.db"), config)
        await service.start()
        added = service.arrays.add(JobSpec(cmd="task {}", cwd="/tmp", group="a"),
                                   "0-99:100,1000-" + str(1000 + tasks - 2), owner="u",
                                   sees_all=True, may_set_caps=True)
        assert (added["tasks"], added["added"]) == (tasks, FIRST_ARRAY_JOBS)
        await _run_until(service, FIRST_ARRAY_JOBS + 10)
        await service.stop()

    async def second_half() -> None:
        service = Service(Store(tmp_path / "shoal.db"), config)
        # Every task counted (done, queued, or lost with the worker of the first half).
        assert sum(service.status()["groups"]["a"].values()) == tasks
        await service.start()
        await _run_until(service, tasks)
        (array,) = service.arrays.rows(None)
        assert (array["queued_as_jobs"], array["not_yet_jobs"]) == (tasks, 0)
        assert service.status()["totals"] == {"done": tasks}
        await service.stop()

    asyncio.run(first_half())
    asyncio.run(second_half())
    with sqlite3.connect(tmp_path / "shoal.db") as db:
        commands = [row[0] for row in db.execute("SELECT cmd FROM jobs")]
        states = {row[0] for row in db.execute("SELECT state FROM jobs")}
    expected = ["task 0", *(f"task {n}" for n in range(1000, 1000 + tasks - 1))]
    assert sorted(commands) == sorted(expected)  # each task once, none lost
    assert states == {JobState.DONE.value}


def test_mod_of_the_group_changes_the_tasks_to_come(held: Cluster) -> None:
    added = held.cli("add", "--array", "1-25000", "--group", "sweep", "--limit", "hold",
                     "--json", "echo {}")
    assert added.returncode == 0, added.stderr
    changed = held.cli("mod", "--group", "sweep", "--priority", "7", "--new-group", "later")
    assert changed.returncode == 0, changed.stderr
    # The jobs made so far moved, and so did the tasks not yet jobs, counts and all.
    assert held.api("GET", "/status")["groups"] == {"later": {"queued": 25_000}}
    (array,) = held.api("GET", "/arrays")["arrays"]
    assert array["group"] == "later"
    # Let the first jobs run: the next ones are made with the new priority and group.
    held.api("PUT", "/limits/hold", json={"cap": None})
    wait_until(lambda: held.api("GET", "/arrays")["arrays"][0]["queued_as_jobs"] > 10_000,
               timeout=300, message="the next tasks made into jobs")
    page = held.api("GET", "/jobs", params={"limit": 1, "order": "desc"})
    newest = page["jobs"][0]
    assert (newest["group"], newest["priority"]) == ("later", 7)
    held.cli("kill", "--group", "later")


def test_a_cap_set_with_an_array_is_not_set_again_by_its_later_tasks_after_a_restart(
        tmp_path: Path) -> None:
    """`shared:4` in an array's spec sets the cap once, with the add; an admin raises it to
    100; the tasks made after a server restart must not put it back to 4."""
    tasks = FIRST_ARRAY_JOBS + 3000

    async def add_then_raise() -> None:
        service = Service(Store(tmp_path / "shoal.db"), ReactorConfig())
        await service.start()
        service.arrays.add(JobSpec(cmd="task {}", cwd="/tmp", limits=["shared:4"]),
                           f"1-{tasks}", owner="u", sees_all=False, may_set_caps=True)
        assert service.store.limits()["shared"] == 4
        service.set_limit("shared", 100)
        await service.stop()

    async def refill_after_restart() -> None:
        service = Service(Store(tmp_path / "shoal.db"), ReactorConfig(
            lost_grace_seconds=0.0, restart_grace_seconds=0.0))
        await service.start()
        await _run_until(service, tasks)
        assert service.arrays.rows(None)[0]["not_yet_jobs"] == 0
        assert service.store.limits()["shared"] == 100
        await service.stop()

    asyncio.run(add_then_raise())
    asyncio.run(refill_after_restart())

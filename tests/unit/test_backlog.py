"""Queued jobs beyond the server's window wait in the database (the backlog): memory holds
the window, and every job still runs once, in its order, across refills and restarts."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.core.models import JobChanges, JobSpec
from shoal.core.protocol import Assign, Finished, Started, StartedItem, ToWorker
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import JobQuery, Store

from .factories import register, result, spec

WINDOW = 10


def open_service(tmp_path: Path) -> Service:
    return Service(Store(tmp_path / "shoal.db"), ReactorConfig(queue_window=WINDOW))


class Link:
    def __init__(self) -> None:
        self.assigned: list[tuple[int, int]] = []  # (job id, lease id)

    def send(self, message: ToWorker) -> None:
        if isinstance(message, Assign):
            self.assigned += [(item.job_id, item.lease_id) for item in message.items]

    def close(self, reason: str) -> None:
        pass


def run_everything(service: Service, cores: int = 2) -> list[int]:
    """Job ids in the order a worker of `cores` was given them, each reported done at once."""
    link = Link()
    worker_id = service.join(register(cores=cores), link)
    service.step()
    order: list[int] = []
    while link.assigned:
        given, link.assigned = link.assigned, []
        order += [job_id for job_id, _ in given]
        service.deliver(worker_id, Started(items=[
            StartedItem(job_id=job_id, lease_id=lease, pid=1, started_at=1.0)
            for job_id, lease in given]))
        service.deliver(worker_id, Finished(items=[result(job_id, lease)
                                                   for job_id, lease in given]))
        service.step()
    return order


def jobs(first: int, last: int, **fields: object) -> list[JobSpec]:
    return [spec(f"job {n}", **fields) for n in range(first, last + 1)]


def database_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "shoal.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_a_large_add_holds_its_window_and_runs_every_job_once_in_order(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    assert service.add(jobs(1, 35))["added"] == 35
    assert len(service.reactor.jobs) == WINDOW and service.reactor.backlog == 25
    assert service.status()["totals"] == {"queued": 35}
    assert service.info("test")["backlog_jobs"] == 25
    listed = service.jobs(JobQuery(), limit=100)
    assert [job["id"] for job in listed["jobs"]] == list(range(1, 36))
    assert listed["total"] == 35 and listed["jobs"][-1]["state"] == "queued"
    assert service.reactor.get(30).cmd == "job 30"
    # A higher priority goes before the backlog, so it is held; an equal one waits behind.
    service.add(jobs(36, 38, priority=5))
    service.add(jobs(39, 40))
    assert len(service.reactor.jobs) == WINDOW + 3 and service.reactor.backlog == 27

    order = run_everything(service)

    assert order == [36, 37, 38, *range(1, 36), 39, 40]
    assert service.status()["totals"] == {"done": 40}
    assert service.reactor.backlog == 0 and service.reactor.jobs == {}


def test_a_restart_reads_the_window_and_leaves_the_rest_in_the_backlog(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 30))
    service.add(jobs(31, 32, priority=-1))
    service.store.close()

    service = open_service(tmp_path)
    assert len(service.reactor.jobs) == WINDOW and service.reactor.backlog == 22
    assert service.status()["totals"] == {"queued": 32}
    assert run_everything(service, cores=3) == list(range(1, 33))


def test_backlog_jobs_are_duplicates_can_be_changed_and_killed_by_group(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 30, group="g"))
    assert service.add(jobs(25, 26, group="g")) | {"ids": None} == {
        "added": 0, "existed": 2, "requeued": 0, "ids": None}
    assert service.add(jobs(25, 26, group="g"), rerun=True)["requeued"] == 0  # not ended

    service.modify([28], None, JobChanges(priority=9))  # from the backlog to the front
    assert service.reactor.backlog == 19
    link = Link()
    service.join(register(cores=1), link)
    service.step()
    assert [job_id for job_id, _ in link.assigned] == [28]

    assert len(service.act("kill", None, "g")) == 30
    assert service.status()["totals"] == {"cancelled": 29, "running": 1}
    assert service.reactor.backlog == 0
    assert all(job.state.value != "queued" for job in service.reactor.jobs.values())


def test_a_refused_add_leaves_none_of_the_chunks_it_wrote(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    chunks = [jobs(1, 15), [spec("late", after=["999"])]]
    with pytest.raises(InputError, match="dependency 999 does not exist"):
        service.add_chunks(iter(chunks))
    assert database_rows(tmp_path) == 0
    assert service.reactor.backlog == 0 and service.reactor.jobs == {}
    assert service.status()["totals"] == {}
    assert service.add(jobs(1, 15))["ids"] == list(range(1, 16))


def test_a_full_window_of_low_priorities_does_not_keep_higher_ones_waiting(
        tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 10, priority=-1))
    service.add(jobs(11, 15))  # higher than every job held: held, beyond the window
    service.add(jobs(16, 20, priority=-1))  # no higher than the lowest held: the backlog
    assert service.reactor.backlog == 5 and len(service.reactor.jobs) == 15
    assert run_everything(service) == [*range(11, 16), *range(1, 11), *range(16, 21)]


def test_a_backlog_job_removed_by_id_is_gone_and_never_runs(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 20))
    assert service.act("remove", [17], None) == [17]
    assert service.status()["totals"] == {"queued": 19} and service.reactor.backlog == 9
    assert 17 not in run_everything(service)
    assert database_rows(tmp_path) == 19


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.sampled_from([-1, 0, 2])), min_size=1,
                max_size=6),
       st.integers(1, 6))
def test_jobs_added_before_any_runs_run_by_priority_then_age(
        adds: list[tuple[int, int]], window: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Store(Path(tmp) / "shoal.db"), ReactorConfig(queue_window=window))
        priority_of: dict[int, int] = {}
        for count, priority in adds:
            first = len(priority_of) + 1
            ids = service.add(jobs(first, first + count - 1, priority=priority))["ids"]
            priority_of.update(dict.fromkeys(ids, priority))
        order = run_everything(service, cores=1)
        assert order == sorted(priority_of, key=lambda job_id: (-priority_of[job_id], job_id))
        service.store.close()


def test_a_refill_in_the_step_of_a_removal_does_not_bring_the_removed_back(
        tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 20))
    # Six held jobs and one of the backlog removed at once: the window refills in the same
    # step, before the removal is committed.
    assert service.act("remove", [1, 2, 3, 4, 5, 6, 15], None) == [1, 2, 3, 4, 5, 6, 15]
    assert service.status()["totals"] == {"queued": 13}
    assert run_everything(service) == [7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20]

"""Queued jobs beyond the server's window wait in the database (the backlog): memory holds
the window, and every job still runs once, in its order, across refills and restarts."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.core.models import JobChanges, JobSpec, JobState
from shoal.core.protocol import Assign, Finished, Started, StartedItem, ToWorker
from shoal.server.events import Event, JobsMoved, JobTransitioned
from shoal.server.metrics import Metrics
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


class Recorder:
    def __init__(self, seen: list[Event]):
        self.seen = seen

    def process(self, events: Sequence[Event]) -> None:
        self.seen.extend(events)


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
    """A restart reads a quarter of the window; the window fills a quarter at a time."""
    service = open_service(tmp_path)
    service.add(jobs(1, 30))
    service.add(jobs(31, 32, priority=-1))
    service.store.close()

    service = open_service(tmp_path)
    read = WINDOW // 4
    assert len(service.reactor.jobs) == read and service.reactor.backlog == 32 - read
    assert service.status()["totals"] == {"queued": 32}
    for held in (2 * read, 3 * read, 3 * read):  # more than half the window: no more read
        service.step()
        assert len(service.reactor.jobs) == held and service.reactor.backlog == 32 - held
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


# ---- a group killed or removed: its backlog is acted on in the database -------------------


def outcome(tmp_path: Path, service: Service) -> tuple[object, ...]:
    """What a user and the database can see: counts, each job's state and reason, the
    journal, and what runs next."""
    service.step()
    with sqlite3.connect(tmp_path / "shoal.db") as db:
        rows = db.execute("SELECT id, state, fail_reason FROM jobs ORDER BY id").fetchall()
        journal = db.execute("SELECT job_id, from_state, to_state, reason FROM transitions "
                             "ORDER BY job_id, seq").fetchall()
    return service.status()["totals"], rows, journal, run_everything(service)


def kill_and_remove(service: Service) -> list[list[int]]:
    service.add(jobs(1, 40, group="g"))
    service.add([spec("after g", group="w", after=["group:g"])])
    service.add(jobs(41, 55, group="h"))
    link = Link()
    service.join(register(cores=3), link)
    service.step()  # three of g's jobs run
    affected = [service.act("kill", None, "g")]
    affected.append(service.act("remove", None, "h"))
    service.add(jobs(56, 70, group="h"))
    affected.append(service.act("retry", None, "g"))
    return affected


@pytest.mark.parametrize("window", [WINDOW, 10_000])
def test_a_group_killed_or_removed_beyond_the_window_ends_as_one_held_in_memory(
        tmp_path: Path, window: int) -> None:
    """The same actions, with and without a backlog, leave the same jobs, journal and queue."""
    held = Service(Store(tmp_path / "all" / "shoal.db"), ReactorConfig(queue_window=10_000))
    small = Service(Store(tmp_path / "some" / "shoal.db"), ReactorConfig(queue_window=window))
    assert kill_and_remove(held) == kill_and_remove(small)
    expected = outcome(tmp_path / "all", held)
    assert outcome(tmp_path / "some", small) == expected
    # Three of g's jobs were running (their kill orders sent; this worker never obeys),
    # the rest cancelled, and the job waiting on g cancelled with them; h's first jobs gone.
    # Then g retried: its cancelled jobs run again, in the queue's order, before h's later
    # ones.
    totals, rows, journal, ran = expected
    assert totals == {"running": 3, "queued": 52, "cancelled": 1}
    assert rows[:4] == [(1, "running", None), (2, "running", None), (3, "running", None),
                        (4, "queued", None)]
    assert rows[40] == (41, "cancelled", "a job of group:g failed or was cancelled")
    assert ran == [*range(4, 41), *range(57, 72)]
    assert [entry[1:] for entry in journal if entry[0] == 4] == [
        (None, "queued", None), ("queued", "cancelled", "killed by user"),
        ("cancelled", "queued", "retried by user")]


def test_killing_a_group_reads_none_of_its_backlog(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 1000, group="g"))
    service.add(jobs(1001, 1050, group="h"))
    loaded: list[int] = []
    archive = service.reactor.archive
    load, queued_after = archive.load, archive.queued_after
    archive.load = lambda ids: (loaded.extend(ids), load(ids))[1]  # type: ignore[method-assign]
    archive.queued_after = lambda after, limit: (  # type: ignore[method-assign]
        lambda found: (loaded.extend(job.id for job in found), found)[1])(
            queued_after(after, limit))
    seen: list[Event] = []
    service.events.subscribe(Recorder(seen))

    assert service.act("kill", None, "g") == list(range(1, 1001))
    assert all(job_id > 1000 for job_id in loaded)  # only h's, into the window it left
    assert len(service.reactor.jobs) <= WINDOW
    assert service.status()["totals"] == {"cancelled": 1000, "queued": 50}
    assert service.reactor.backlog == 50 - WINDOW // 4  # a quarter of a window read at once
    # Told as events too: the held ones one by one, the backlog's in one.
    one_by_one = [e for e in seen
                  if isinstance(e, JobTransitioned) and e.to_state is JobState.CANCELLED]
    moved = [e for e in seen if isinstance(e, JobsMoved)]
    assert [(e.group, e.from_state, e.to_state, e.count) for e in moved] == [
        ("g", JobState.QUEUED, JobState.CANCELLED, 990)] and len(one_by_one) == 10
    assert run_everything(service) == list(range(1001, 1051))

    assert service.act("remove", None, "g") == list(range(1, 1001))
    assert database_rows(tmp_path) == 50 and service.status()["totals"] == {"done": 50}


def test_a_group_retried_in_the_database_runs_in_its_place_in_the_queue(
        tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 300, group="g"))
    service.add(jobs(301, 330, group="h"))
    service.add([spec("limited", group="g", limits=["db:1"])])  # always held once queued
    service.act("kill", None, "g")
    loaded: list[int] = []
    archive = service.reactor.archive
    queued_after = archive.queued_after
    archive.queued_after = lambda after, limit: (  # type: ignore[method-assign]
        lambda found: (loaded.extend(job.id for job in found), found)[1])(
            queued_after(after, limit))
    assert service.act("retry", None, "g") == [*range(1, 301), 331]
    assert len(loaded) == WINDOW and service.reactor.backlog == 320  # the window, read again
    assert service.status()["totals"] == {"queued": 331}
    # Held jobs go first (the documented exception: the limited one, held from its retry).
    assert run_everything(service) == [*range(1, 11), 331, *range(11, 331)]


def test_metrics_count_a_group_killed_in_the_database_job_by_job(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    metrics = Metrics(service)
    service.events.subscribe(metrics)
    service.add(jobs(1, 35, group="g"))
    service.act("kill", None, "g")
    text = metrics.exposition().decode()
    assert 'shoal_job_transitions_total{from_state="queued",to_state="cancelled"} 35.0' in text
    assert 'shoal_jobs{group="g",state="cancelled"} 35.0' in text


def change_a_group(service: Service) -> list[list[int]]:
    service.add(jobs(1, 40, group="g"))
    service.add(jobs(41, 55, group="h", priority=3))
    service.act("kill", [5, 6], None)
    changes = JobChanges(priority=5, cores=2, env={"A": "1"}, name="renamed")
    return [service.modify(None, "g", changes)["ids"],
            service.modify(None, "h", JobChanges(priority=-1))["ids"]]


@pytest.mark.parametrize("window", [WINDOW, 10_000])
def test_a_group_changed_beyond_the_window_ends_as_one_held_in_memory(
        tmp_path: Path, window: int) -> None:
    held = Service(Store(tmp_path / "all" / "shoal.db"), ReactorConfig(queue_window=10_000))
    small = Service(Store(tmp_path / "some" / "shoal.db"), ReactorConfig(queue_window=window))
    assert change_a_group(held) == change_a_group(small) == [
        list(range(1, 41)), list(range(41, 56))]
    for service, home in ((held, "all"), (small, "some")):
        with sqlite3.connect(tmp_path / home / "shoal.db") as db:
            rows = db.execute("SELECT id, priority, cores, env, name FROM jobs "
                              "ORDER BY id").fetchall()
        assert rows[0] == (1, 5, 2, '{"A": "1"}', "renamed")
        assert rows[4] == (5, 5, 2, '{"A": "1"}', "renamed")  # cancelled ones too
        assert rows[40] == (41, -1, 1, "{}", None)
        job = service.job(30)
        assert (job["priority"], job["resources"]["cores"], job["env"]) == (5, 2, ["A"])
    # g first now (priority 5, its cancelled two left out), then h (-1).
    expected = [*range(1, 5), *range(7, 41), *range(41, 56)]
    assert run_everything(held, cores=2) == run_everything(small, cores=2) == expected


def test_changing_a_group_in_place_reads_none_of_its_backlog(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    service.add(jobs(1, 500, group="g"))
    loaded: list[int] = []
    archive = service.reactor.archive
    load = archive.load
    archive.load = lambda ids: (loaded.extend(ids), load(ids))[1]  # type: ignore[method-assign]
    assert service.modify(None, "g", JobChanges(retries=3))["affected"] == 500
    assert loaded == [] and len(service.reactor.jobs) == WINDOW
    assert service.job(400)["retries"] == 3
    # A change that must be held (limits are counted in memory) still reaches every job.
    assert service.modify(None, "g", JobChanges(limits=["db"]))["affected"] == 500
    assert service.reactor.backlog == 0 and len(service.reactor.jobs) == 500

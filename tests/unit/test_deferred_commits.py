"""With a commit interval (`shoal run`), the loop's own steps send a worker in the same
process its messages at once, and are committed together, at most once an interval; a worker
over the network still gets nothing that is not committed, and anything else that changes
jobs (an add, a kill, a read of the store) commits what waits first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shoal.core.models import JobSpec
from shoal.core.protocol import Assign, Finished, ToWorker
from shoal.core.states import Transition
from shoal.server.service import Service
from shoal.store import JobQuery, Store
from tests.unit.factories import register, result


class Link:
    def __init__(self, immediate: bool) -> None:
        self.immediate = immediate
        self.assigned: list[int] = []  # job ids
        self.leases: dict[int, int] = {}  # job id -> lease id

    def send(self, message: ToWorker) -> None:
        if isinstance(message, Assign):
            self.assigned += [item.job_id for item in message.items]
            self.leases.update((item.job_id, item.lease_id) for item in message.items)

    def close(self, reason: str) -> None:
        pass


def stored_states(path: Path) -> dict[int, str]:
    """What another reader of the database sees: only what is committed."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


class Setting:
    """A service with a 10 s commit interval, a clock set by hand, a worker in process
    (`local`, 1 core) and one over the network (`remote`, 1 core)."""

    def __init__(self, tmp_path: Path):
        self.db = tmp_path / "shoal.db"
        self.now = 100.0
        self.service = Service(Store(self.db), clock=lambda: self.now)
        self.service.commit_interval = 10.0
        self.heard: list[Transition] = []
        self.service.listeners.append(self.heard.extend)
        self.local, self.remote = Link(immediate=True), Link(immediate=False)
        self.worker = {name: self.service.join(register(name, cores=1), link)
                       for name, link in (("local", self.local), ("remote", self.remote))}

    def end(self, name: str, job_id: int, exit_code: int = 0) -> None:
        link = self.local if name == "local" else self.remote
        self.service.deliver(self.worker[name], Finished(
            items=[result(job_id, link.leases[job_id], exit_code=exit_code)]))

    def loop_step(self, at: float) -> None:
        self.now = at
        self.service.step(defer=True)

    def ran(self) -> set[int]:
        return {t.job_id for t in self.heard if t.to_state.value == "running"}


def test_in_process_workers_are_sent_at_once_and_the_loop_s_steps_commit_together(
        tmp_path: Path) -> None:
    setting = Setting(tmp_path)
    setting.service.add([JobSpec(cmd=f"job {n}", cwd="/tmp", on_worker=worker)
                         for n, worker in ((1, "local"), (2, "local"), (3, "remote"),
                                           (4, "remote"))])
    # An add commits at once: one job started on each worker.
    assert (setting.local.assigned, setting.remote.assigned) == ([1], [3])
    assert stored_states(setting.db) == {1: "running", 2: "queued", 3: "running",
                                         4: "queued"}

    setting.end("local", 1)
    setting.end("remote", 3)
    setting.loop_step(at=101.0)
    assert setting.local.assigned == [1, 2]  # sent before it is committed
    assert setting.remote.assigned == [3]  # never before
    assert stored_states(setting.db) == {1: "running", 2: "queued", 3: "running",
                                         4: "queued"}
    assert setting.ran() == {1, 3}

    setting.loop_step(at=109.0)  # still within the interval: nothing more is committed
    assert setting.remote.assigned == [3]

    setting.loop_step(at=110.5)
    assert setting.remote.assigned == [3, 4]
    assert setting.local.assigned == [1, 2]  # not sent twice
    assert stored_states(setting.db) == {1: "done", 2: "running", 3: "done", 4: "running"}
    assert setting.ran() == {1, 2, 3, 4}
    setting.service.store.close()


def test_an_add_a_kill_or_a_read_commits_what_waits_first(tmp_path: Path) -> None:
    setting = Setting(tmp_path)
    service = setting.service
    service.add([JobSpec(cmd="first", cwd="/tmp", on_worker="local"),
                 JobSpec(cmd="second", cwd="/tmp", on_worker="local")])
    setting.end("local", 1)
    setting.loop_step(at=101.0)
    assert stored_states(setting.db) == {1: "running", 2: "queued"}
    listed = service.jobs(JobQuery())
    assert {job["id"]: job["state"] for job in listed["jobs"]} == {1: "done", 2: "running"}
    assert stored_states(setting.db) == {1: "done", 2: "running"}

    # A kill of a queued job, then an add of the same command again (a rerun): the kill is
    # committed before the job leaves memory, so the add finds it cancelled and queues it.
    service.add([JobSpec(cmd="third", cwd="/tmp", on_worker="local")])
    assert stored_states(setting.db)[3] == "queued"  # job 2 holds the only core
    service.act("kill", [3], None)
    assert stored_states(setting.db)[3] == "cancelled"
    service.add([JobSpec(cmd="third", cwd="/tmp", on_worker="local")], rerun=True)
    assert stored_states(setting.db)[3] == "queued"
    setting.end("local", 2)
    setting.loop_step(at=120.0)
    assert setting.local.assigned == [1, 2, 3]
    service.store.close()


def test_a_job_that_started_and_ended_within_one_commit_is_still_readable_by_listeners(
        tmp_path: Path) -> None:
    """Its end is told to the listeners (`shoal run`'s output, the runmaker file's `!`)
    while the job is still in memory, with its exit code."""
    setting = Setting(tmp_path)
    service = setting.service
    service.add([JobSpec(cmd="first", cwd="/tmp", on_worker="local"),
                 JobSpec(cmd="second", cwd="/tmp", on_worker="local")])
    seen: dict[int, int | None] = {}
    service.listeners.append(lambda transitions: seen.update(
        (t.job_id, service.reactor.jobs[t.job_id].exit_code) for t in transitions
        if t.to_state.value == "failed"))
    setting.end("local", 1)
    setting.loop_step(at=101.0)  # job 2 starts
    setting.end("local", 2, exit_code=5)
    setting.loop_step(at=102.0)  # and ends, both not yet committed
    assert seen == {}
    setting.loop_step(at=111.0)
    assert seen == {2: 5}
    assert 2 not in service.reactor.jobs  # and then it leaves memory
    service.store.close()

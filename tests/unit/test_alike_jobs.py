"""Jobs alike but for their commands (a file's lines) travel and are planned as one set of
fields and a list of commands: the add they make is the add their specs one by one make, in
the database and in memory, with twins, reruns, a window and a backlog."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.client import CommandOf, _chunk_body
from shoal.core.errors import StoreUnavailable
from shoal.core.models import JobDefaults, JobSpec
from shoal.server.effects import AlikeJobs
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store, repository

SHARED = {"cwd": "/tmp", "group": "g", "priority": 3, "env": {"K": "v"}, "limits": ["db"]}
# What adds share: a job with a limit is always held; others may wait in the backlog, in
# the order of their priority.
FIELDS = [SHARED, {"cwd": "/tmp", "env": {"K": "v"}}, {"cwd": "/tmp", "priority": 3},
          {"cwd": "/srv", "priority": -1, "group": "h"}]


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall() + db.execute(
            "SELECT job_id, from_state, to_state, at FROM transitions ORDER BY seq").fetchall()


Add = tuple[int, list[list[str]]]  # which FIELDS, and the commands of each chunk


def add_all(directory: Path, adds: list[Add], alike: bool, window: int, rerun: bool
            ) -> tuple[list[dict[str, object]], list[object], dict[int, str], int]:
    """Each add of chunks of commands, as AlikeJobs or as specs; what each answered, the
    database's rows, the jobs held in memory and the size of the backlog."""
    service = Service(Store(directory / "shoal.db"), ReactorConfig(queue_window=window),
                      clock=lambda: 5.0)
    answers = []
    for which, chunks in adds:
        shared = FIELDS[which]
        answers.append(service.add_chunks(
            [AlikeJobs(JobDefaults(**shared), chunk) if alike else
             [JobSpec(cmd=cmd, **shared) for cmd in chunk] for chunk in chunks],
            rerun=rerun, owner="ann"))
    held = {job.id: job for job in service.reactor.jobs.values()}
    found = rows(directory / "shoal.db")
    backlog = service.reactor.backlog
    service.store.close()
    return answers, found, {job_id: repr(job) for job_id, job in held.items()}, backlog


commands = st.lists(st.sampled_from([f"echo {n}" for n in range(12)]), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(adds=st.lists(st.tuples(st.integers(0, len(FIELDS) - 1),
                               st.lists(commands, min_size=1, max_size=3)),
                     min_size=1, max_size=3),
       window=st.integers(1, 12), rerun=st.booleans())
def test_alike_jobs_make_the_add_their_specs_make(adds: list[Add], window: int,
                                                  rerun: bool) -> None:
    # Every part of alike jobs written by the store's thread (a part of one job or more),
    # while the add plans on: its twins among earlier chunks are found all the same.
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as other, \
            mock.patch.object(repository, "ASYNC_WRITE_JOBS", 1):
        assert add_all(Path(one), adds, True, window, rerun) == add_all(
            Path(other), adds, False, window, rerun)


def test_a_write_that_fails_in_the_thread_undoes_the_whole_add(tmp_path: Path) -> None:
    """A part written by the store's thread fails (its first id is taken, behind the
    service's back): the add raises as a failed write does, and leaves nothing."""
    service = Service(Store(tmp_path / "shoal.db"))
    service.add_chunks([AlikeJobs(JobDefaults(cwd="/tmp"), ["first"])], owner="ann")
    before = rows(tmp_path / "shoal.db")
    service.store._db.execute("INSERT INTO jobs (id, cmd, cwd, env, grp, priority, retries, "
                              "cores, memory_bytes, dependencies, limits, state, attempts, "
                              "lost_attempts, added_at) VALUES (3000, 'x', '/', '{}', 'g', 0, "
                              "0, 1, 0, '[]', '[]', 'done', 0, 0, 1.0)")
    taken = rows(tmp_path / "shoal.db")
    chunks = [AlikeJobs(JobDefaults(cwd="/tmp"), [f"{word} {n}" for n in range(2500)])
              for word in ("echo", "again")]  # ids 2 to 5001, each part by the thread
    with pytest.raises(StoreUnavailable, match=r"UNIQUE constraint failed: jobs\.id"):
        service.add_chunks(chunks, owner="ann")
    assert rows(tmp_path / "shoal.db") == taken != before
    assert service.add_chunks([AlikeJobs(JobDefaults(cwd="/tmp"), ["later"])],
                              owner="ann")["added"] == 1  # the store still writes
    service.store.close()


def test_each_held_job_has_collections_of_its_own(tmp_path: Path) -> None:
    service = Service(Store(tmp_path / "shoal.db"))
    service.add_chunks([AlikeJobs(JobDefaults(**SHARED), ["a", "b"])], owner="ann")
    first, second = service.reactor.jobs.values()
    first.env["K"] = "changed"
    assert second.env == {"K": "v"}
    service.store.close()


def test_the_client_sends_a_chunk_of_alike_jobs_as_shared_fields_and_commands() -> None:
    specs = [JobSpec(cmd=f"echo {n}", **SHARED) for n in range(3)]
    assert _chunk_body(specs) == {"shared": {**SHARED}, "cmds": ["echo 0", "echo 1", "echo 2"]}
    dicts = [{"cmd": "a", "cwd": "/x"}, {"cmd": "b", "cwd": "/x"}]
    assert _chunk_body(dicts) == {"shared": {"cwd": "/x"}, "cmds": ["a", "b"]}


def test_lines_that_share_their_fields_are_sent_as_those_fields_and_their_commands() -> None:
    shared = {"cwd": "/x", "priority": 3}
    lines = [CommandOf(shared, "a"), CommandOf(shared, "b")]
    assert dict(lines[0]) == {"cwd": "/x", "priority": 3, "cmd": "a"}
    assert _chunk_body(lines) == {"shared": shared, "cmds": ["a", "b"]}
    # Equal fields in another dict, or a plain job beside them: compared field by field.
    assert _chunk_body([*lines, CommandOf(dict(shared), "c")])["cmds"] == ["a", "b", "c"]
    assert _chunk_body([*lines, {**shared, "cmd": "c"}])["cmds"] == ["a", "b", "c"]
    assert list(_chunk_body([*lines, CommandOf({"cwd": "/y"}, "c")])) == ["jobs"]


@pytest.mark.parametrize("specs", [
    [JobSpec(cmd="a", cwd="/x"), JobSpec(cmd="b", cwd="/y")],  # fields differ
    [{"cmd": "a", "cwd": "/x"}, {"cwd": "/x"}],  # one without a command: the server says so
    [{"cmd": "a"}, JobSpec(cmd="b")],  # a dict beside a spec: not compared
], ids=["different", "no command", "mixed"])
def test_any_other_chunk_is_sent_as_its_jobs(specs: list[JobSpec | dict[str, str]]) -> None:
    body = _chunk_body(specs)
    assert list(body) == ["jobs"] and len(body["jobs"]) == len(specs)

"""Duplicates are found through the job_keys table (migration 13): written a part at a time
in digest order, kept in step with deletes, and looked up beside an add's write in progress
for keys that none of that add's chunks had."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.models import JobDefaults, JobState
from shoal.server.effects import AlikeJobs
from shoal.server.reactor import Reactor
from shoal.server.service import Service
from shoal.store import JobQuery, Store, key_hash, repository
from shoal.store.schema import MIGRATIONS, SCHEMA_VERSION

from .factories import spec

CWD = "/tmp"


def keys_and_jobs(path: Path) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(key_hash, job id) of job_keys, and of the jobs that have a digest."""
    with sqlite3.connect(path) as db:
        return (set(db.execute("SELECT key_hash, job_id FROM job_keys")),
                set(db.execute("SELECT key_hash, id FROM jobs WHERE key_hash IS NOT NULL")))


commands = st.lists(st.sampled_from([f"echo {n}" for n in range(10)]), min_size=1, max_size=6)
# Each add: its chunks, then the commands removed once it is made.
adds = st.lists(st.tuples(st.lists(commands, min_size=1, max_size=4),
                          st.lists(st.sampled_from([f"echo {n}" for n in range(10)]),
                                   max_size=3)),
                min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(adds=adds)
def test_every_twin_is_found_in_earlier_chunks_earlier_adds_and_never_in_removed_jobs(
        adds: list[tuple[list[list[str]], list[str]]]) -> None:
    """Against a model: a command names the job first made for it, until that job is
    removed. Every part is written by the store's thread while the add plans the next."""
    with tempfile.TemporaryDirectory() as directory, \
            mock.patch.object(repository, "ASYNC_WRITE_JOBS", 1):
        path = Path(directory) / "shoal.db"
        service = Service(Store(path), clock=lambda: 5.0)
        known: dict[str, int] = {}
        next_id = 1
        for chunks, removed in adds:
            expected: list[int] = []
            made = 0
            for cmd in (cmd for chunk in chunks for cmd in chunk):
                if cmd not in known:
                    known[cmd], next_id, made = next_id, next_id + 1, made + 1
                expected.append(known[cmd])
            answer = service.add_chunks([AlikeJobs(JobDefaults(cwd=CWD), chunk)
                                         for chunk in chunks], owner="ann")
            assert (answer["ids"], answer["added"], answer["existed"]) == (
                expected, made, len(expected) - made)
            gone = sorted({known.pop(cmd) for cmd in removed if cmd in known})
            if gone:
                service.act("remove", gone, None)
                service.step()
            in_keys, in_jobs = keys_and_jobs(path)
            assert in_keys == in_jobs
            assert {job_id for _, job_id in in_keys} == set(known.values())
        service.store.close()


def test_a_lookup_of_committed_jobs_neither_waits_for_nor_sees_the_add_being_written(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "shoal.db")
    service = Service(store, clock=lambda: 5.0)
    service.add_chunks([AlikeJobs(JobDefaults(cwd=CWD), ["before"])], owner="ann")
    keys = [("ann", "before", CWD), ("ann", "during", CWD)]
    hashes = [key_hash(*key) for key in keys]
    with store.adding() as writer:
        template = service.reactor.plan_add_chunks(
            [AlikeJobs(JobDefaults(cwd=CWD), ["during"])], rerun=False, now=5.0,
            owner="ann").new_jobs[0]
        writer.write_alike(template, [(template.id, "during", None)], 5.0)
        committed = store.twins(keys, hashes, committed_only=True)
        everything = store.twins(keys, hashes)
        writer.finish({}, template.id)
    assert committed == {keys[0]: (1, JobState.QUEUED)}
    assert everything == {keys[0]: (1, JobState.QUEUED), keys[1]: (2, JobState.QUEUED)}
    assert store.twins(keys, hashes, committed_only=True) == everything  # once committed
    store.close()


def test_a_database_from_before_job_keys_has_its_digests_moved_there(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.create_function("shoal_key_hash", 3, key_hash, deterministic=True)
        for version, script in enumerate(MIGRATIONS[:12]):
            db.executescript(f"BEGIN;{script}PRAGMA user_version = {version + 1}; COMMIT;")
        for job_id, cmd, gate in ((1, "echo a", 0), (2, "echo b", 0), (3, "serve", 1)):
            db.execute("INSERT INTO jobs (id, cmd, cwd, env, grp, priority, retries, cores, "
                       "memory_bytes, dependencies, limits, state, attempts, lost_attempts, "
                       "added_at, owner, gate, key_hash) VALUES (?, ?, ?, '{}', 'g', 0, 0, 1, "
                       "0, '[]', '[]', 'done', 0, 0, 1.0, 'ann', ?, ?)",
                       (job_id, cmd, CWD, gate, None if gate else key_hash("ann", cmd, CWD)))
    db.close()
    store = Store(path)
    keys = [("ann", "echo a", CWD), ("ann", "echo b", CWD), ("ann", "serve", CWD)]
    assert store.twins(keys) == {keys[0]: (1, JobState.DONE), keys[1]: (2, JobState.DONE)}
    store.close()
    in_keys, in_jobs = keys_and_jobs(path)
    assert in_keys == in_jobs and len(in_keys) == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'jobs_by_key_hash'"
                          ).fetchall() == []
    db.close()


def test_purged_history_takes_its_digests_with_it(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    store = Store(path)
    service = Service(store, clock=lambda: 5.0)
    service.add_chunks([AlikeJobs(JobDefaults(cwd=CWD, group=group), [f"echo {group}"])
                        for group in ("old", "kept")], owner="ann")
    with store._transaction() as db:  # both ended, as a worker's reports would leave them
        db.execute("UPDATE jobs SET state = 'done', ended_at = 1.0")
    ids, _ = store.purge(JobQuery(states=(JobState.DONE,), group="old"))
    in_keys, in_jobs = keys_and_jobs(path)
    assert ids == [1] and in_keys == in_jobs == {(key_hash("ann", "echo kept", CWD), 2)}
    store.close()


def test_the_lookup_beside_the_write_reads_the_store_s_file_wherever_the_process_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    store = Store(Path("shoal.db"))  # relative, as `shoal run`'s state directory may be
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    plan = reactor.plan_add([spec("echo kept")], rerun=False, now=5.0, owner="ann")
    store.add_jobs(plan.new_jobs, reactor.journal_of_new(plan, 5.0))
    monkeypatch.chdir(tmp_path / "elsewhere")  # before its first lookup beside a write
    key = ("ann", "echo kept", CWD)
    assert store.twins([key], committed_only=True) == {key: (1, JobState.QUEUED)}
    store.close()
    assert not (tmp_path / "elsewhere" / "shoal.db").exists()

"""The repository: every read and write of the database goes through Store.

The connection runs in autocommit mode and each method that writes opens one explicit
transaction, so a batch of transitions costs one commit, not one per job.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from shoal.core.collection import no_cycle_collection
from shoal.core.errors import Conflict, InputError, StoreUnavailable
from shoal.core.models import (
    EMPTY_DICT,
    EMPTY_LIST,
    HOLDING_STATES,
    MAX_INT64,
    Job,
    JobState,
    shared_text,
)
from shoal.core.protocol import AttemptResult, Captured
from shoal.core.states import Transition, created
from shoal.store.arrays import ArrayRow, load_arrays, put_array
from shoal.store.checkpoints import Checkpoints
from shoal.store.files import (
    check_database,
    damaged,
    damaged_to_reader,
    drop_seal,
    is_damage,
    prepare_database_file,
    seal,
    sealed_counts,
)
from shoal.store.schema import SCHEMA_VERSION, key_hash, key_hashes, migrate

_JOB_COLUMNS = (
    "id, name, cmd, cwd, env, grp, priority, retries, cores, memory_bytes, time_seconds, "
    "time_limit_seconds, req_group, dependencies, limits, on_worker, state, fail_reason, "
    "exit_code, attempts, lost_attempts, worker, host, pid, lease_id, added_at, queued_at, "
    "retry_at, started_at, ended_at, wall_seconds, cpu_seconds, peak_rss_bytes, gpus, "
    "resources, grow_memory, requirements_source, dependencies_any, gate, files, always_copy, owner"
)
# What `shoal mod --group` may change straight in the database (modify_group): fields that
# leave a job where it waits (limits, dependencies and a group are counted, or watched, in
# the server's memory). Each is its job column's name.
CHANGED_IN_PLACE = frozenset({"name", "priority", "retries", "cores", "memory_bytes",
                              "time_seconds", "time_limit_seconds", "gpus", "resources", "env",
                              "on_worker"})
# A new job has not run: the columns of its run are left NULL by not naming them (each
# bound parameter costs about 0.2 µs, a fifth of a row's insert at 43 columns).
_RUN_COLUMNS = frozenset({
    "fail_reason", "exit_code", "worker", "host", "pid", "lease_id", "retry_at", "started_at",
    "ended_at", "wall_seconds", "cpu_seconds", "peak_rss_bytes"})
_INSERT_COLUMNS = (*(column for column in _JOB_COLUMNS.split(", ")
                     if column not in _RUN_COLUMNS), "key_hash")
# And those a part of an add leaves out when none of its jobs has them other than their
# defaults (the schema's): most jobs give no name, time, GPUs, files, ...
_DEFAULT_OF: dict[str, object] = {
    "name": None, "time_seconds": None, "time_limit_seconds": None, "req_group": None,
    "on_worker": None, "requirements_source": None, "gpus": 0, "resources": "{}",
    "grow_memory": 0, "dependencies_any": "[]", "gate": 0, "files": "[]", "always_copy": 0}
_INSERT_PART = 10_000  # jobs a statement's rows are laid out for at once
# A part of an add this large is written by a thread while the add plans its next part.
ASYNC_WRITE_JOBS = 2_000
_PROBE_PART = 10_000  # key digests looked up for duplicates in one statement
_NO_DEFAULT = object()
_ID_AT = _INSERT_COLUMNS.index("id")
_ALIKE_VARYING = tuple(_INSERT_COLUMNS.index(name) for name in ("id", "cmd", "key_hash"))


_MUTABLE = (
    "state", "fail_reason", "exit_code", "attempts", "lost_attempts", "worker", "host", "pid",
    "lease_id", "queued_at", "retry_at", "started_at", "ended_at", "wall_seconds", "cpu_seconds",
    "peak_rss_bytes", "priority", "memory_bytes", "requirements_source",
)
_LIVE_SQL = "state IN ('waiting', 'queued', 'delayed', 'running', 'lost')"
# Queued jobs that may wait in the backlog (migration 11's index): exactly its condition.
_BACKLOG_SQL = "state = 'queued' AND limits = '[]' AND gate = 0"
_UPDATE_SQL = f"UPDATE jobs SET {', '.join(c + ' = ?' for c in _MUTABLE)} WHERE id = ?"
# What `shoal mod` may change (core.models.JobChanges), by column.
_SPEC_SQL = ("UPDATE jobs SET name = ?, grp = ?, priority = ?, retries = ?, cores = ?, "
             "memory_bytes = ?, time_seconds = ?, time_limit_seconds = ?, gpus = ?, "
             "resources = ?, env = ?, dependencies = ?, dependencies_any = ?, limits = ?, "
             "on_worker = ? WHERE id = ?")


def _spec_row(job: Job) -> tuple[object, ...]:
    return (job.name, job.group, job.priority, job.retries, job.cores, job.memory_bytes,
            job.time_seconds, job.time_limit_seconds, job.gpus, json.dumps(job.resources),
            json.dumps(job.env), json.dumps(job.dependencies), json.dumps(job.dependencies_any),
            json.dumps(job.limits), job.on_worker, job.id)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs a listing wants; every field narrows it (None: any)."""

    states: tuple[JobState, ...] = ()
    group: str | None = None
    owner: str | None = None
    name: str | None = None
    cmd_contains: str | None = None
    worker: str | None = None
    exit_code: int | None = None
    ended_after: float | None = None
    ended_before: float | None = None

    @property
    def counted(self) -> bool:
        """Whether the server's kept counts answer how many match: by state, group and owner
        only."""
        return dataclasses.replace(self, states=(), group=None, owner=None) == JobQuery()

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if self.states:
            clauses.append(f"state IN ({', '.join('?' * len(self.states))})")
            params += [state.value for state in self.states]
        for column, value in (("grp", self.group), ("owner", self.owner), ("name", self.name),
                              ("worker", self.worker), ("exit_code", self.exit_code)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.cmd_contains is not None:
            clauses.append("instr(cmd, ?) > 0")
            params.append(self.cmd_contains)
        if self.ended_after is not None:
            clauses.append("ended_at >= ?")
            params.append(self.ended_after)
        if self.ended_before is not None:
            clauses.append("ended_at < ?")
            params.append(self.ended_before)
        return " AND ".join(clauses) or "1", params


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """An attempt as first recorded, when the job is assigned to a worker."""

    lease_id: int
    job_id: int
    attempt: int
    worker: str
    host: str | None
    holder: str  # the identity of the worker process it was given to (see Job.holder)


def json_text(value: Any) -> str:
    """JSON text of an add's bulk (its rows and the digests it looks up, handed to
    `json_each`, and its staged chunks), by pydantic-core's encoder: 2.6 times the standard
    library's speed on an add's rows. As text, since SQLite reads a BLOB as no JSON. A row's
    own small collections keep the standard library's text (`_dump`)."""
    return to_json(value).decode()


def _dump(value: Any) -> str:
    """JSON of a collection; most are empty, and the encoder costs more than the rest of a
    row (the mirror of `_json`)."""
    if not value:
        return "[]" if isinstance(value, list) else "{}"
    return json.dumps(value)


_STATE_OF = {state.value: state for state in JobState}
# The other way, None (a job's creation) included, for every row written: a dict lookup is a
# quarter of `.value`'s cost (an enum property), paid for each job and journal entry.
_TEXT_OF: dict[JobState | None, str | None] = {state: state.value for state in JobState}
_TEXT_OF[None] = None


def _new_job_row(job: Job) -> tuple[object, ...]:
    """The row of a job that has not run yet (_INSERT_COLUMNS)."""
    return (
        job.id, job.name, job.cmd, job.cwd, _dump(job.env), job.group, job.priority,
        job.retries, job.cores, job.memory_bytes, job.time_seconds, job.time_limit_seconds,
        job.req_group, _dump(job.dependencies), _dump(job.limits), job.on_worker,
        _TEXT_OF[job.state], job.attempts, job.lost_attempts, job.added_at, job.queued_at,
        job.gpus, _dump(job.resources), int(job.grow_memory), job.requirements_source,
        _dump(job.dependencies_any), int(job.gate), _dump(job.files),
        int(job.always_copy), job.owner,
        None if job.gate else key_hash(job.owner, job.cmd, job.cwd),
    )


@functools.cache
def _insert_sql(varying: tuple[str, ...], constant: tuple[str, ...]) -> str:
    values = [f"value ->> {index}" for index in range(len(varying))] + ["?"] * len(constant)
    return (f"INSERT INTO jobs ({', '.join(varying + constant)}) "
            f"SELECT {', '.join(values)} FROM json_each(?)")


def _insert_new_jobs(db: sqlite3.Connection, rows: Iterable[tuple[object, ...]]) -> None:
    """Rows of new jobs (_new_job_row), a part at a time, in one statement each: the values
    the part's rows share given once, the others as one JSON array of rows (binding each
    value of each row cost more than SQLite's insert), and columns at their schema default
    in every row left out."""
    iterator = iter(rows)
    while part := list(itertools.islice(iterator, _INSERT_PART)):
        by_column = list(zip(*part, strict=True))  # column-wise, so that a test is C's count
        varying: list[int] = []
        constant: list[int] = []
        for index, name in enumerate(_INSERT_COLUMNS):
            values = by_column[index]
            # The id always varies, even in a part of one row: json_each gives a row for each.
            if index == _ID_AT or values.count(values[0]) != len(part):
                varying.append(index)
            elif _DEFAULT_OF.get(name, _NO_DEFAULT) != values[0]:
                constant.append(index)
        sql = _insert_sql(tuple(_INSERT_COLUMNS[index] for index in varying),
                          tuple(_INSERT_COLUMNS[index] for index in constant))
        db.execute(sql, [*(by_column[index][0] for index in constant), json_text(
            list(zip(*(by_column[index] for index in varying), strict=True)))])
        _index_keys(db, min(by_column[_ID_AT]), max(by_column[_ID_AT]))


def _index_keys(db: sqlite3.Connection, first: int, last: int) -> None:
    """Index the key digests of the jobs just written, of ids `first` to `last`, in digest
    order: a B-tree takes a sorted run far faster than the same keys one at a time. (Jobs in
    that range written before are indexed already: their keys are the same, and ignored.)"""
    db.execute("INSERT OR IGNORE INTO job_keys (key_hash, job_id) SELECT key_hash, id FROM jobs "
               "WHERE id BETWEEN ? AND ? AND key_hash IS NOT NULL ORDER BY key_hash, id",
               (first, last))


def _alike_statements(template: Job, jobs: Sequence[tuple[int, str, int | None]]
                      ) -> list[tuple[str, list[object]]]:
    """The statements that write the rows of jobs that are `template` but for their (id, cmd,
    key_hash or None if not known yet): the template's other columns given once, and the
    jobs' triples as they come (laying out a whole row per job, as _insert_new_jobs must,
    cost more than SQLite's insert)."""
    row = _new_job_row(template)
    constant = [index for index, name in enumerate(_INSERT_COLUMNS)
                if index not in _ALIKE_VARYING
                and _DEFAULT_OF.get(name, _NO_DEFAULT) != row[index]]
    sql = _insert_sql(tuple(_INSERT_COLUMNS[index] for index in _ALIKE_VARYING),
                      tuple(_INSERT_COLUMNS[index] for index in constant))
    values = [row[index] for index in constant]
    if template.gate:  # an ensemble's component is never a duplicate: no digest
        jobs = [(job_id, cmd, None) for job_id, cmd, _ in jobs]
    elif any(digest is None for _, _, digest in jobs):
        digests = key_hashes(template.owner, (cmd for _, cmd, _ in jobs), template.cwd)
        jobs = [(job_id, cmd, made if digest is None else digest)
                for (job_id, cmd, digest), made in zip(jobs, digests, strict=True)]
    return [(sql, [*values, json_text(jobs[start:start + _INSERT_PART])])
            for start in range(0, len(jobs), _INSERT_PART)]


def _mutable_row(job: Job) -> tuple[object, ...]:
    return (
        _TEXT_OF[job.state], job.fail_reason, job.exit_code, job.attempts, job.lost_attempts,
        job.worker, job.host, job.pid, job.lease_id, job.queued_at, job.retry_at,
        job.started_at, job.ended_at, job.wall_seconds, job.cpu_seconds, job.peak_rss_bytes,
        job.priority, job.memory_bytes, job.requirements_source, job.id,
    )


CACHE_KIB = 32 * 1024
_DECODED: dict[str, Any] = {}  # text -> its value: jobs of one add share their lists
_DECODED_MAX = 4096


def _json(text: object) -> Any:
    """Most rows hold empty collections (shared), and the rest of an add's jobs the same few
    (their limits, their env): decode each text once, and give every job a copy of its own."""
    if text == "[]":
        return EMPTY_LIST
    if text == "{}":
        return EMPTY_DICT
    key = str(text)
    value = _DECODED.get(key)
    if value is None:
        value = json.loads(key)
        if len(_DECODED) >= _DECODED_MAX or not _flat(value):
            return value
        _DECODED[key] = value  # kept as decoded: every job, the first too, gets a copy
    return value.copy()  # flat: a shallow copy is a whole one


def _flat(value: Any) -> bool:
    """A list or dict of plain values (strings, numbers): what a shallow copy copies whole."""
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, list | dict) and all(
        isinstance(item, str | int | float | bool) for item in items)


def _job_from_row(row: Any) -> Job:  # a row of _JOB_COLUMNS, as SQLite returns it
    (id_, name, cmd, cwd, env, grp, priority, retries, cores, memory_bytes, time_seconds,
     time_limit_seconds, req_group, dependencies, limits, on_worker, state, fail_reason,
     exit_code, attempts, lost_attempts, worker, host, pid, lease_id, added_at, queued_at,
     retry_at, started_at, ended_at, wall_seconds, cpu_seconds, peak_rss_bytes, gpus, resources,
     grow_memory, requirements_source, dependencies_any, gate, files, always_copy, owner) = row
    # Positional, in Job's field order (a restart makes a million of these; keywords cost a
    # third more), with the empty collections and repeated strings shared inline.
    return Job(
        id_, cmd, shared_text(cwd), EMPTY_DICT if env == "{}" else _json(env),
        shared_text(grp), priority, retries, cores, memory_bytes, time_limit_seconds,
        time_seconds, req_group and shared_text(req_group), name, gpus,
        EMPTY_DICT if resources == "{}" else _json(resources), bool(grow_memory),
        requirements_source, EMPTY_LIST if dependencies == "[]" else _json(dependencies),
        EMPTY_LIST if dependencies_any == "[]" else _json(dependencies_any), bool(gate),
        EMPTY_LIST if files == "[]" else _json(files), bool(always_copy),
        EMPTY_LIST if limits == "[]" else _json(limits),
        on_worker and shared_text(on_worker), shared_text(owner), _STATE_OF[state],
        fail_reason, exit_code, attempts, lost_attempts, worker and shared_text(worker),
        host and shared_text(host), pid, lease_id, None, added_at, queued_at, retry_at,
        started_at, ended_at, wall_seconds, cpu_seconds, peak_rss_bytes,
    )


def _of_group(condition: str, group: str, owner: str | None) -> tuple[str, list[object]]:
    """The group's jobs (of `owner`, if given) that meet `condition`."""
    where, params = JobQuery(group=group, owner=owner).where()
    return f"{where} AND {condition}", params


# (owner, group, state, jobs): the jobs' counts, or what a change made straight in the
# database did to them
StateCounts = list[tuple[str, str, JobState, int]]


def _affected(db: sqlite3.Connection, where: str, params: Sequence[object]
              ) -> tuple[list[int], StateCounts]:
    """The ids of the jobs `where` selects, and their counts by owner, group and state."""
    rows = db.execute(f"SELECT id, owner, grp, state FROM jobs WHERE {where}",
                      params).fetchall()
    counts: Counter[tuple[str, str, JobState]] = Counter(
        (owner, group, _STATE_OF[state]) for _, owner, group, state in rows)
    return [row[0] for row in rows], [(*key, count) for key, count in counts.items()]


def _delete_where(db: sqlite3.Connection, where: str, params: Sequence[object]) -> None:
    """The jobs `where` selects, with their output, attempts, journal and key digests."""
    # In one statement, not a trigger's one per job: a million went a quarter faster.
    db.execute("DELETE FROM job_keys WHERE (key_hash, job_id) IN (SELECT key_hash, id FROM jobs "
               f"WHERE ({where}) AND key_hash IS NOT NULL)", params)
    for table in ("outputs", "attempts", "transitions"):
        db.execute(f"DELETE FROM {table} WHERE job_id IN (SELECT id FROM jobs WHERE {where})",
                   params)
    db.execute(f"DELETE FROM jobs WHERE {where}", params)


class JobWriter:
    """Writes an add's new jobs inside the transaction `Store.adding` holds open.

    A large part of alike jobs is written by a thread of its own (SQLite lets go of the
    interpreter while it inserts): the add reads and plans its next chunk meanwhile. The
    store's connection is the same, and the Store waits for that write before any other use
    of it (`settle`), so every read, the commit and a rollback see the add as written. (The
    statements it runs call no Python function: a callback would need the interpreter while
    holding the connection, which a read waiting for it may hold.)"""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._pending: Future[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    def settle(self) -> None:
        """Wait for the write in progress, if any; raise what it raised."""
        pending = self._pending
        if pending is None:
            return
        try:
            pending.result()
        finally:
            if pending.done():  # not if the wait itself was interrupted (Ctrl-C)
                self._pending = None

    def close(self) -> None:
        """End the thread once the write in progress is done, whatever it raised (the add is
        being undone, or `settle` raised it already)."""
        if self._thread is not None:
            self._thread.shutdown()  # waits for the write in progress
            self._thread = None
        self._pending = None

    def write(self, jobs: Sequence[Job], now: float) -> None:
        """New jobs, each journaled as created at `now`."""
        self.settle()
        if not jobs or jobs[-1].id - jobs[0].id + 1 != len(jobs):
            self.write_journaled(jobs, (created(job, now=now) for job in jobs))
            return
        _insert_new_jobs(self._db, (_new_job_row(job) for job in jobs))
        self._journal_created(jobs[0].id, jobs[-1].id, now)

    def write_alike(self, template: Job, jobs: Sequence[tuple[int, str, int | None]],
                    now: float) -> None:
        """New jobs that are `template` but for their (id, cmd, key_hash if known), of
        consecutive ids, each journaled as created at `now`: no Job is made for them. A part
        of ASYNC_WRITE_JOBS or more is written by the thread, and this returns at once."""
        if not jobs:
            return
        if jobs[-1][0] - jobs[0][0] + 1 != len(jobs):
            raise ValueError("the jobs of write_alike must have consecutive ids")
        # Laid out while the part before may still be written; run once it is.
        statements = _alike_statements(template, jobs)
        first, last = jobs[0][0], jobs[-1][0]
        self.settle()
        if len(jobs) < ASYNC_WRITE_JOBS:
            self._execute(statements, first, last, now)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-add")
        self._pending = self._thread.submit(self._execute, statements, first, last, now)

    def _execute(self, statements: list[tuple[str, list[object]]], first: int, last: int,
                 now: float) -> None:
        for sql, params in statements:
            self._db.execute(sql, params)
        _index_keys(self._db, first, last)
        self._journal_created(first, last, now)

    def _journal_created(self, first: int, last: int, now: float) -> None:
        # One run of ids, as an add's chunk makes them: SQLite journals them from their rows.
        self._db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
                         "SELECT id, NULL, state, ?, NULL FROM jobs WHERE id BETWEEN ? AND ? "
                         "ORDER BY id", (now, first, last))

    def write_journaled(self, jobs: Iterable[Job], transitions: Iterable[Transition]) -> None:
        # Generators: the rows of a million jobs are written, never held, at once.
        self.settle()
        _insert_new_jobs(self._db, (_new_job_row(job) for job in jobs))
        Store._journal(self._db, transitions)

    def finish(self, limit_caps: dict[str, int], last_id: int | None) -> None:
        """The caps the add's specs set, and its last job's id."""
        self.settle()
        self._db.executemany("INSERT OR REPLACE INTO limits (name, cap) VALUES (?, ?)",
                             list(limit_caps.items()))
        if last_id is not None:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                             "('max_job_id', ?)", (str(last_id),))


class Store:
    """One SQLite database in WAL mode. Not thread-safe: the server uses it from its loop."""

    _connection: sqlite3.Connection
    _writer: JobWriter | None = None  # an add's, while `adding` holds its transaction
    _reader: sqlite3.Connection | None = None  # see _committed_reader

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, once the add's writer (if any) has written what it was given."""
        if self._writer is not None:
            self._writer.settle()
        return self._connection

    @_db.setter
    def _db(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __init__(self, path: Path):
        self.path = path
        self._file = path.absolute()  # the same file, should the working directory change
        self._checkpoints: Checkpoints | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held = prepare_database_file(path)  # refuses an empty one where a server lived
            # As a clean stop left it: checked then, and not written since (see files.seal).
            self._sealed_counts = sealed_counts(path, SCHEMA_VERSION) if held else None
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if held and self._sealed_counts is None:
                # Before anything writes: a damaged database is refused, not built on.
                check_database(self._db, path, on_refusal=self._db.close)
            # Set before the first table exists: history purged later gives its pages back.
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            # Transitions survive a crash of the process (WAL, NORMAL); adds are fsynced (FULL)
            # before they are acknowledged, so they survive the machine too.
            self._db.execute("PRAGMA synchronous = NORMAL")
            # A large add writes its key digests all over their table (in order, a part at a
            # time): with SQLite's 2 MB of cache each part reads pages back; 32 MB keeps them.
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db.execute("PRAGMA foreign_keys = OFF")
            self._db.execute("PRAGMA busy_timeout = 5000")
            try:
                migrate(self._db)
            except InputError as exc:  # written by a newer shoal
                self._db.close()
                raise InputError(f"{path}: {exc}") from None
            drop_seal(path)  # open for writing: only the next clean stop vouches for it
        except sqlite3.Error as exc:
            if is_damage(exc):
                if hasattr(self, "_connection"):  # not a database: leave it as it was
                    self._db.close()
                raise damaged(path, exc) from None
            raise StoreUnavailable(f"{path}: cannot open the database ({exc})") from None
        except OSError as exc:
            raise StoreUnavailable(f"{path}: cannot open the database ({exc})") from None

    @classmethod
    def read_only(cls, path: Path) -> Store:
        """The database opened for reading only (`shoal logs` on a `shoal run`'s state while
        it may still be running): nothing is created, migrated or written."""
        store = cls.__new__(cls)
        store.path, store._file = path, path.absolute()
        store._checkpoints = None
        store._sealed_counts = None
        try:
            store._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                        isolation_level=None, check_same_thread=False)
            store._db.execute("PRAGMA busy_timeout = 5000")
            version = store._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            if hasattr(store, "_connection"):
                store._connection.close()
            if is_damage(exc):  # not a database, or a truncated one
                raise damaged_to_reader(path, exc) from None
            raise StoreUnavailable(f"{path}: cannot read the database ({exc})") from None
        if version != SCHEMA_VERSION:
            store._db.close()
            raise InputError(f"{path}: written by another version of shoal (schema {version}, "
                             f"this one reads {SCHEMA_VERSION}); run it again to upgrade it")
        return store

    def checkpoint_in_background(self) -> None:
        """From now on, the log is copied into the database off the caller's thread (see
        store.checkpoints); `close` stops it."""
        if self._checkpoints is None:
            self._checkpoints = Checkpoints(self._file)
            self._db.execute("PRAGMA wal_autocheckpoint = 0")

    def _committed_reader(self) -> sqlite3.Connection:
        """A second connection, read-only: each statement sees the last commit (WAL)."""
        if self._reader is None:
            self._reader = sqlite3.connect(self._file, isolation_level=None,
                                           check_same_thread=False)
            self._reader.execute("PRAGMA query_only = 1")
            self._reader.execute("PRAGMA busy_timeout = 5000")
        return self._reader

    def close(self, counts: StateCounts | None = None) -> None:
        """`counts`, every job's (owner, group, state, jobs) as the server kept them, once
        all it changed is written: the file is sealed with them (see files.seal)."""
        if self._checkpoints is not None:
            self._checkpoints.stop()
            self._checkpoints = None
        if self._reader is not None:  # before the seal: an open connection keeps the log
            self._reader.close()
            self._reader = None
        self._db.close()
        if counts is not None:
            seal(self.path, ((owner, group, state.value, jobs)
                             for owner, group, state, jobs in counts), SCHEMA_VERSION)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: cannot write ({exc})") from None
        try:
            yield self._db
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreUnavailable(f"{self.path}: cannot write ({exc})") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (a full disk): only undo what is open.
        if self._writer is not None:
            self._writer.close()  # its write ends first; what it raised is not this error
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def backup(self, destination: Path) -> None:
        """SQLite's online backup: a consistent snapshot while the server keeps writing.

        It reads through a connection of its own, so it may run in another thread while the
        store's connection keeps serving the loop (WAL lets both read).
        """
        try:
            source = sqlite3.connect(self.path)
            target = sqlite3.connect(destination)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"backup to {destination} failed: {exc}") from None

    # ---- loading -------------------------------------------------------------------------

    def load_jobs(self, live_only: bool = False, window: int | None = None) -> list[Job]:
        """Every job, or (`live_only`) those not ended: all a restarted server holds. With
        `window`, only that many of the queued jobs that may wait in the backlog, the first
        to run: the rest stay here until the queue drains (`queued_after`)."""
        queries: list[tuple[str, tuple[int, ...]]]
        if window is None:
            queries = [(f"SELECT {_JOB_COLUMNS} FROM jobs "
                        f"{f'WHERE {_LIVE_SQL}' if live_only else ''} ORDER BY id", ())]
        else:
            queries = [
                (f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_LIVE_SQL} "
                 f"AND NOT ({_BACKLOG_SQL}) ORDER BY id", ()),
                (f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_BACKLOG_SQL} "
                 "ORDER BY priority DESC, id LIMIT ?", (window,)),
            ]
        with no_cycle_collection():
            # Row by row: the rows of a million jobs would double the load's peak.
            jobs = [_job_from_row(row) for sql, params in queries
                    for row in self._db.execute(sql, params)]
        gc.freeze()  # they live as long as the server: keep later collections from rescanning
        self._load_holders([job for job in jobs if job.state in HOLDING_STATES])
        return jobs

    def opening_counts(self) -> StateCounts:
        """job_counts as the database was opened: those a clean stop sealed, if the file is
        as it left it (called before anything is written), else counted."""
        sealed, self._sealed_counts = self._sealed_counts, None
        if sealed is None:
            return self.job_counts()
        return [(owner, group, JobState(state), jobs) for owner, group, state, jobs in sealed]

    def job_counts(self) -> StateCounts:
        """(owner, group, state, jobs) for every combination there is."""
        return [(owner, group, JobState(state), count) for owner, group, state, count in
                self._db.execute("SELECT owner, grp, state, COUNT(*) FROM jobs "
                                 "GROUP BY owner, grp, state")]

    def arrays(self) -> list[ArrayRow]:
        return load_arrays(self._db)

    def put_array(self, row: ArrayRow) -> None:
        with self._transaction() as db:
            put_array(db, row)

    # ---- ended jobs, kept here only (the reactor's archive) --------------------------------

    def jobs_by_id(self, job_ids: Sequence[int]) -> list[Job]:
        # An id no INTEGER column can hold names no job (and SQLite would refuse it).
        job_ids = [job_id for job_id in job_ids if 0 < job_id <= MAX_INT64]
        found: list[Job] = []
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start:start + 500])
            found += [_job_from_row(row) for row in self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk)]
        return found

    def twins(self, keys: Sequence[tuple[str, str, str]], hashes: Sequence[int] | None = None,
              *, committed_only: bool = False
              ) -> dict[tuple[str, str, str], tuple[int, JobState]]:
        """The job already added for each (owner, cmd, cwd) that has one, with its state;
        `hashes`, when known, are the keys' key_hash, in the same order. `committed_only`
        looks among the committed jobs alone, through a connection of its own: beside an
        add's write in progress, which it neither waits for nor sees."""
        db = self._committed_reader() if committed_only else self._db
        if hashes is None:
            hashes = [key_hash(*key) for key in keys]
        found: dict[tuple[str, str, str], tuple[int, JobState]] = {}
        # Looked up in the index's order: each probe starts near where the last one ended.
        hashes = sorted(set(hashes))
        for start in range(0, len(hashes), _PROBE_PART):
            for job_id, owner, cmd, cwd, state in db.execute(
                    "SELECT j.id, j.owner, j.cmd, j.cwd, j.state FROM json_each(?) AS h "
                    "JOIN job_keys AS k ON k.key_hash = h.value JOIN jobs AS j ON j.id = k.job_id "
                    "ORDER BY j.id",
                    (json_text(hashes[start:start + _PROBE_PART]),)):
                found.setdefault((owner, cmd, cwd), (job_id, _STATE_OF[state]))
        return found

    def queued_after(self, after: tuple[int, int] | None, limit: int) -> list[Job]:
        """The next `limit` queued jobs that may wait in the backlog, in the order they run
        (priority, then id), after the one whose (-priority, id) is `after`."""
        select = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_BACKLOG_SQL}"
        if after is None:
            return [_job_from_row(row) for row in self._db.execute(
                f"{select} ORDER BY priority DESC, id LIMIT ?", (limit,))]
        # Two seeks into the index (the rest of `after`'s priority, then the lower ones): a
        # single OR would scan it from its start.
        priority, job_id = -after[0], after[1]
        found = [_job_from_row(row) for row in self._db.execute(
            f"{select} AND priority = ? AND id > ? ORDER BY priority DESC, id LIMIT ?",
            (priority, job_id, limit))]
        if len(found) < limit:
            found += [_job_from_row(row) for row in self._db.execute(
                f"{select} AND priority < ? ORDER BY priority DESC, id LIMIT ?",
                (priority, limit - len(found)))]
        return found

    def list_jobs(self, query: JobQuery, *, after_id: int | None = None, limit: int = 1000,
                  newest_first: bool = False) -> list[Job]:
        """One page of jobs, as `list_ids` orders them."""
        ids = self.list_ids(query, after_id=after_id, limit=limit, newest_first=newest_first)
        by_id = {job.id: job for job in self.jobs_by_id(ids)}
        return [by_id[job_id] for job_id in ids]

    def list_ids(self, query: JobQuery, *, after_id: int | None = None, limit: int = 1000,
                 newest_first: bool = False) -> list[int]:
        """One page of ids (keyset paging: after `after_id`, which is never an offset scan)."""
        where, params = query.where()
        if after_id is not None:
            where += " AND id < ?" if newest_first else " AND id > ?"
            params.append(after_id)
        order = "DESC" if newest_first else "ASC"
        return [row[0] for row in self._db.execute(
            f"SELECT id FROM jobs WHERE {where} ORDER BY id {order} LIMIT ?", [*params, limit])]

    def count_jobs(self, query: JobQuery) -> int:
        where, params = query.where()
        return int(self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}",
                                    params).fetchone()[0])

    def purge(self, query: JobQuery) -> tuple[list[int], StateCounts]:
        """Delete ended jobs (ensemble components excepted) with their output, attempts and
        journal, in one transaction; returns their ids and counts."""
        assert query.states and all(state.is_final for state in query.states)
        where, params = query.where()
        where += " AND gate = 0"
        with self._transaction() as db:
            found = _affected(db, where, params)
            _delete_where(db, where, params)
        return found

    # A group's jobs the server does not hold, acted on straight in the database once it has
    # acted on those it holds (committed): what is left of the group there is then only its
    # ended jobs and the backlog's queued ones. Each returns the ids and counts before.

    def cancel_backlog(self, group: str, owner: str | None, reason: str, now: float
                       ) -> tuple[list[int], StateCounts]:
        """Cancel the group's queued jobs, journaled, as the reactor's kill does."""
        return self._move(_of_group(_BACKLOG_SQL, group, owner),
                          JobState.CANCELLED, reason, now,
                          "fail_reason = ?, lease_id = NULL", [reason])

    def retry_backlog(self, group: str, owner: str | None, reason: str, now: float
                      ) -> tuple[list[int], StateCounts]:
        """Queue again the group's failed and cancelled jobs that may wait in the backlog
        once queued, journaled, as the reactor's retry does."""
        return self._move(_of_group("state IN ('failed', 'cancelled') AND limits = '[]' "
                                    "AND gate = 0", group, owner),
                          JobState.QUEUED, reason, now,
                          "queued_at = ?, retry_at = NULL, fail_reason = NULL, "
                          "exit_code = NULL, lease_id = NULL, attempts = 0, lost_attempts = 0",
                          [now])

    def _move(self, selection: tuple[str, list[object]], to_state: JobState, reason: str,
              now: float, setting: str, values: list[object]) -> tuple[list[int], StateCounts]:
        where, params = selection
        with self._transaction() as db:
            found = _affected(db, where, params)
            db.execute("INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
                       f"SELECT id, state, ?, ?, ? FROM jobs WHERE {where} ORDER BY id",
                       [to_state.value, now, reason, *params])
            db.execute(f"UPDATE jobs SET state = ?, {setting} WHERE {where}",
                       [to_state.value, *values, *params])
        return found

    def modify_group(self, group: str, owner: str | None, changes: dict[str, Any]
                     ) -> list[int]:
        """Change the group's failed and cancelled jobs and the backlog's queued ones (those
        it holds the server has changed alike already): `changes`, field -> value, of
        CHANGED_IN_PLACE only. Returns the ids changed."""
        if not changes.keys() <= CHANGED_IN_PLACE:
            raise ValueError(f"not changed in place: {sorted(changes.keys() - CHANGED_IN_PLACE)}")
        where, params = _of_group(f"(state IN ('failed', 'cancelled') OR ({_BACKLOG_SQL}))",
                                  group, owner)
        columns = ", ".join(f"{column} = ?" for column in changes)
        values = [_dump(value or {}) if column in ("env", "resources") else value
                  for column, value in changes.items()]
        with self._transaction() as db:
            ids = [row[0] for row in db.execute(f"SELECT id FROM jobs WHERE {where}", params)]
            db.execute(f"UPDATE jobs SET {columns} WHERE {where}", [*values, *params])
        return ids

    def remove_group(self, group: str, owner: str | None) -> tuple[list[int], StateCounts]:
        """Delete the group's jobs with their output, attempts and journal."""
        where, params = JobQuery(group=group, owner=owner).where()
        with self._transaction() as db:
            found = _affected(db, where, params)
            _delete_where(db, where, params)
        return found

    def compact(self, pages: int = 2000) -> None:
        """Give back up to `pages` free pages to the file system, without a VACUUM (only a
        database made with incremental auto-vacuum can; others reuse their free pages)."""
        self._db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()

    def size_bytes(self) -> int:
        """The database with its write-ahead log."""
        return sum(path.stat().st_size for path in (self.path, self.path.with_name(
            self.path.name + "-wal")) if path.exists())

    def ids_in_group(self, group: str, owner: str | None,
                     states: Iterable[JobState] | None = None) -> list[int]:
        """The group's jobs (of `owner`, in `states`, if given), by id."""
        where, params = JobQuery(states=tuple(states or ()), group=group, owner=owner).where()
        return [row[0] for row in self._db.execute(
            f"SELECT id FROM jobs WHERE {where} ORDER BY id", params)]

    def _load_holders(self, jobs: Sequence[Job]) -> None:
        """Whose attempt each job still running or lost is: only that worker may claim it."""
        by_lease = {job.lease_id: job for job in jobs if job.lease_id is not None}
        leases = list(by_lease)
        for start in range(0, len(leases), 500):
            chunk = leases[start:start + 500]
            rows = self._db.execute(
                "SELECT lease_id, holder FROM attempts WHERE lease_id IN "
                f"({', '.join('?' * len(chunk))})", chunk)
            for lease_id, holder in rows:
                by_lease[lease_id].holder = holder

    def max_ids(self) -> tuple[int, int]:
        """The largest job id and lease id ever handed out (0 when none)."""
        job_id = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
        lease = self._db.execute("SELECT COALESCE(MAX(lease_id), 0) FROM attempts").fetchone()[0]
        stored = self.get_meta("max_job_id")
        return max(job_id, int(stored or 0)), lease

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---- writes --------------------------------------------------------------------------

    def add_jobs(self, new_jobs: Sequence[Job], transitions: Iterable[Transition],
                 limit_caps: dict[str, int] | None = None,
                 array: ArrayRow | None = None) -> None:
        """Commit a whole add, planned beforehand, durably before it is acknowledged; with
        `array`, the array whose tasks these jobs are, as it is after them."""
        with self.adding(array) as writer:
            writer.write_journaled(new_jobs, transitions)
            writer.finish(limit_caps or {}, max((job.id for job in new_jobs), default=None))

    @contextmanager
    def adding(self, array: ArrayRow | None = None) -> Iterator[JobWriter]:
        """One add written as it is planned, a part at a time, and committed durably at the
        end (or rolled back if anything raises): the jobs of a large add are never all
        held at once. Reads in between (duplicates) see what is written so far. With
        `array`, the array whose tasks these jobs are, as it is after them."""
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            with self._transaction() as db:
                if array is not None:
                    put_array(db, array)
                self._writer = JobWriter(db)
                try:
                    yield self._writer
                    self._writer.settle()  # before the commit: what it raises undoes the add
                finally:
                    self._writer.close()
                    self._writer = None
        finally:
            self._db.execute("PRAGMA synchronous = NORMAL")

    def commit_tick(self, changed: Iterable[Job], transitions: Sequence[Transition],
                    new_attempts: Sequence[AttemptRow], results: Sequence[AttemptResult],
                    started: Sequence[tuple[int, int, float]], removed: Sequence[int],
                    learned: Sequence[tuple[str, int, float]] = (),
                    modified: Sequence[Job] = (), withdrawn: Sequence[int] = ()) -> None:
        """One transaction for everything a loop tick changed."""
        with self._transaction() as db:
            if modified:
                db.executemany(_SPEC_SQL, [_spec_row(job) for job in modified])
            if learned:
                db.executemany("INSERT INTO requirement_history (req_group, peak_rss_bytes, "
                               "wall_seconds) VALUES (?, ?, ?)", list(learned))
            db.executemany(_UPDATE_SQL, [_mutable_row(j) for j in changed])
            self._journal(db, transitions)
            if new_attempts:
                db.executemany(
                    "INSERT OR IGNORE INTO attempts (lease_id, job_id, attempt, worker, host, "
                    "holder) VALUES (?, ?, ?, ?, ?, ?)",
                    [(a.lease_id, a.job_id, a.attempt, a.worker, a.host, a.holder)
                     for a in new_attempts],
                )
            # An attempt that also ended in this transaction gets its pid and start below.
            ended = {r.lease_id for r in results}
            if started:
                db.executemany("UPDATE attempts SET pid = ?, started_at = ? WHERE lease_id = ?",
                               [(pid, at, lease) for lease, pid, at in started
                                if lease not in ended])
            if results:
                db.executemany(
                    "UPDATE attempts SET pid = ?, started_at = ?, ended_at = ?, outcome = ?, "
                    "exit_code = ?, wall_seconds = ?, cpu_seconds = ?, peak_rss_bytes = ? "
                    "WHERE lease_id = ?",
                    [(r.pid, r.started_at, r.ended_at, r.outcome, r.exit_code, r.wall_seconds,
                      r.cpu_seconds, r.peak_rss_bytes, r.lease_id) for r in results],
                )
                # A new attempt's output replaces the last one's; silent streams leave no row.
                db.executemany("DELETE FROM outputs WHERE job_id = ?",
                               [(r.job_id,) for r in results])
                db.executemany(
                    "INSERT INTO outputs (job_id, stream, head, tail, total_bytes) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(r.job_id, stream, cap.head, cap.tail, cap.total_bytes)
                     for r in results
                     for stream, cap in (("stdout", r.stdout), ("stderr", r.stderr))
                     if cap.total_bytes],
                )
            # How each ended attempt ended; one that succeeded after being lost a while (its
            # worker back in time) keeps no reason of the loss.
            reasons = [(t.reason, t.lease_id) for t in transitions if t.lease_id is not None]
            if reasons:
                db.executemany("UPDATE attempts SET reason = ? WHERE lease_id = ?", reasons)
            if withdrawn:  # given back unstarted: no attempt after all
                db.executemany("DELETE FROM attempts WHERE lease_id = ?",
                               [(lease,) for lease in withdrawn])
            if removed:
                _delete_where(db, "id IN (SELECT value FROM json_each(?))",
                              [json.dumps(list(removed))])

    @staticmethod
    def _journal(db: sqlite3.Connection, transitions: Iterable[Transition]) -> None:
        db.executemany(
            "INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            [(t.job_id, _TEXT_OF[t.from_state], _TEXT_OF[t.to_state], t.at, t.reason)
             for t in transitions],
        )

    # ---- reads for the API ---------------------------------------------------------------

    def output(self, job_id: int, stream: str) -> Captured:
        row = self._db.execute(
            "SELECT head, tail, total_bytes FROM outputs WHERE job_id = ? AND stream = ?",
            (job_id, stream),
        ).fetchone()
        return Captured() if row is None else Captured(head=row[0], tail=row[1], total_bytes=row[2])

    def attempt_history(self, job_id: int) -> list[dict[str, object]]:
        rows = self._db.execute(
            "SELECT attempt, lease_id, worker, host, pid, started_at, ended_at, outcome, "
            "exit_code, wall_seconds, cpu_seconds, peak_rss_bytes, reason FROM attempts "
            "WHERE job_id = ? ORDER BY lease_id", (job_id,),
        ).fetchall()
        keys = ("attempt", "lease_id", "worker", "host", "pid", "started_at", "ended_at",
                "outcome", "exit_code", "wall_seconds", "cpu_seconds", "peak_rss_bytes",
                "reason")
        # Numbered by order: a user's retry restarts the retry budget, not the history.
        return [dict(zip(keys, (number, *row[1:]), strict=True))
                for number, row in enumerate(rows, start=1)]

    # ---- limits and learned requirements --------------------------------------------------

    def limits(self) -> dict[str, int | None]:
        return {row[0]: row[1] for row in self._db.execute("SELECT name, cap FROM limits")}

    def set_limits(self, caps: dict[str, int | None]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO limits (name, cap) VALUES (?, ?)",
                           list(caps.items()))

    def requirement_history(self, per_group: int) -> dict[str, list[tuple[int, float]]]:
        """The last `per_group` (peak RSS, wall seconds) of each requirement group."""
        history: dict[str, list[tuple[int, float]]] = {}
        for group, rss, wall in self._db.execute(
                "SELECT req_group, peak_rss_bytes, wall_seconds FROM requirement_history "
                "ORDER BY seq"):
            history.setdefault(group, []).append((rss, wall))
        return {group: rows[-per_group:] for group, rows in history.items()}

    # ---- tokens --------------------------------------------------------------------------

    def tokens(self) -> dict[str, tuple[str, str]]:
        """token hash -> (role, name), of the tokens not revoked."""
        rows = self._db.execute(
            "SELECT token_hash, role, name FROM tokens WHERE revoked_at IS NULL").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def token_list(self) -> list[dict[str, Any]]:
        """Every token ever made, without its hash, oldest first."""
        rows = self._db.execute("SELECT name, role, created_at, revoked_at FROM tokens "
                                "ORDER BY created_at, name").fetchall()
        return [{"name": name, "role": role, "created_at": created, "revoked_at": revoked}
                for name, role, created, revoked in rows]

    def add_token(self, role: str, name: str, token_hash: str, now: float) -> None:
        """Conflict if a live token already has this name."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL",
                          (name,)).fetchone():
                raise Conflict(f"a token named {name!r} exists; revoke it first")
            db.execute("INSERT INTO tokens (token_hash, role, name, created_at) "
                       "VALUES (?,?,?,?)", (token_hash, role, name, now))

    def revoke_token(self, name: str, now: float) -> list[str]:
        """Revoke the live token of this name; returns the hashes revoked (none or one)."""
        with self._transaction() as db:
            hashes = [row[0] for row in db.execute(
                "SELECT token_hash FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,))]
            db.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                       (now, name))
        return hashes

    def replace_tokens(self, role: str, name: str, token_hash: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM tokens WHERE role = ? AND name = ?", (role, name))
            db.execute("INSERT INTO tokens (token_hash, role, name, created_at) VALUES (?,?,?,?)",
                       (token_hash, role, name, now))

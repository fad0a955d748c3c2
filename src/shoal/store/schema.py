"""The schema as an ordered list of migrations; PRAGMA user_version counts those applied."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

from shoal.core.errors import InputError

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT,
        cmd TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL,
        grp TEXT NOT NULL,
        priority INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        cores INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        time_seconds REAL,
        time_limit_seconds REAL,
        req_group TEXT,
        dependencies TEXT NOT NULL,
        limits TEXT NOT NULL,
        on_worker TEXT,
        state TEXT NOT NULL,
        fail_reason TEXT,
        exit_code INTEGER,
        attempts INTEGER NOT NULL,
        lost_attempts INTEGER NOT NULL,
        worker TEXT,
        host TEXT,
        pid INTEGER,
        lease_id INTEGER,
        added_at REAL NOT NULL,
        queued_at REAL,
        retry_at REAL,
        started_at REAL,
        ended_at REAL,
        wall_seconds REAL,
        cpu_seconds REAL,
        peak_rss_bytes INTEGER
    );
    CREATE UNIQUE INDEX jobs_by_key ON jobs (cmd, cwd);
    CREATE INDEX jobs_by_group ON jobs (grp);
    CREATE TABLE attempts (
        lease_id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        host TEXT,
        pid INTEGER,
        started_at REAL,
        ended_at REAL,
        outcome TEXT,
        exit_code INTEGER,
        wall_seconds REAL,
        cpu_seconds REAL,
        peak_rss_bytes INTEGER
    );
    CREATE INDEX attempts_by_job ON attempts (job_id);
    CREATE TABLE outputs (
        job_id INTEGER NOT NULL,
        stream TEXT NOT NULL,
        head TEXT NOT NULL,
        tail TEXT NOT NULL,
        total_bytes INTEGER NOT NULL,
        PRIMARY KEY (job_id, stream)
    );
    CREATE TABLE transitions (
        seq INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT
    );
    CREATE INDEX transitions_by_job ON transitions (job_id);
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: scheduling: GPUs and named resources, dependencies on any outcome, limits,
    # learned requirements.
    """
    ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN resources TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE jobs ADD COLUMN grow_memory INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN requirements_source TEXT;
    ALTER TABLE jobs ADD COLUMN dependencies_any TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE limits (name TEXT PRIMARY KEY, cap INTEGER);
    CREATE TABLE requirement_history (
        seq INTEGER PRIMARY KEY,
        req_group TEXT NOT NULL,
        peak_rss_bytes INTEGER NOT NULL,
        wall_seconds REAL NOT NULL
    );
    CREATE INDEX requirement_history_by_group ON requirement_history (req_group, seq);
    """,
    # 3: ensemble components: held at a start line, with files to put in place.
    """
    ALTER TABLE jobs ADD COLUMN gate INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN files TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN always_copy INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_by_key;
    CREATE INDEX jobs_by_key ON jobs (cmd, cwd);
    """,
    # 4: users: every job has an owner (the name of the token that added it); tokens are
    # revoked, not deleted, and a name belongs to one live token.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    -- Duplicates are found in memory, per owner; an index over every command only slowed adds.
    DROP INDEX jobs_by_key;
    ALTER TABLE tokens ADD COLUMN revoked_at REAL;
    CREATE UNIQUE INDEX live_token_names ON tokens (name) WHERE revoked_at IS NULL;
    """,
    # 5: an attempt belongs to the worker process (and token) it was given to.
    """
    ALTER TABLE attempts ADD COLUMN holder TEXT;
    """,
    # 6: ended jobs live in the database only. Their duplicates are found through a 64-bit
    # digest of (owner, cmd, cwd). (A restart reads the live jobs by one scan: an index over
    # them would cost every change of state more than it saves once at start.)
    """
    ALTER TABLE jobs ADD COLUMN key_hash INTEGER;
    UPDATE jobs SET key_hash = shoal_key_hash(owner, cmd, cwd) WHERE gate = 0;
    CREATE INDEX jobs_by_key_hash ON jobs (key_hash) WHERE key_hash IS NOT NULL;
    """,
    # 7: allocation queues (workers through Slurm or the user's commands), what each has
    # submitted, and what happened to them.
    """
    CREATE TABLE alloc_queues (
        name TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        settings TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE allocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        engine_id TEXT NOT NULL,
        state TEXT NOT NULL,
        workers INTEGER NOT NULL,
        submitted_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        reason TEXT,
        work_dir TEXT,
        joined INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX allocations_by_queue ON allocations (queue, id);
    CREATE TABLE alloc_events (
        seq INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        at REAL NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX alloc_events_by_queue ON alloc_events (queue, seq);
    """,
    # 8: a large add arrives in chunks, kept here until it is committed whole (or dropped).
    """
    CREATE TABLE staged_adds (
        batch TEXT NOT NULL,
        seq INTEGER NOT NULL,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        jobs TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (batch, seq)
    );
    """,
    # 9: job arrays kept as one record each; their jobs are made as workers take them.
    """
    CREATE TABLE arrays (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        grp TEXT NOT NULL,
        spec TEXT NOT NULL,
        runs TEXT NOT NULL,
        total INTEGER NOT NULL,
        fed INTEGER NOT NULL,
        added_at REAL NOT NULL,
        stopped_at REAL,
        stop_reason TEXT
    );
    """,
    # 10: what an ensemble run was, kept when its state changes: seen after a restart.
    """
    CREATE TABLE ensemble_runs (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        summary TEXT NOT NULL,
        snapshot TEXT NOT NULL
    );
    """,
    # 11: queued jobs beyond the server's window stay here (the backlog), read in the order
    # they will run as the window drains. Only jobs with nothing else to watch go there:
    # no limits, not ensemble components.
    """
    CREATE INDEX jobs_backlog ON jobs (priority DESC, id)
        WHERE state = 'queued' AND limits = '[]' AND gate = 0;
    """,
    # 12: why each attempt ended (or was lost), not only the job's last reason.
    """
    ALTER TABLE attempts ADD COLUMN reason TEXT;
    """,
    # 13: the key digests' index is a table of its own, written a part of an add at a time in
    # digest order: an index on jobs.key_hash took each row's digest at a random place as the
    # row was written, a third of a million-job add's time. A job's key is deleted with it;
    # one left behind would name no job (lookups join jobs by id, and ids are never reused).
    """
    CREATE TABLE job_keys (
        key_hash INTEGER NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (key_hash, job_id)
    ) WITHOUT ROWID;
    INSERT INTO job_keys (key_hash, job_id)
        SELECT key_hash, id FROM jobs WHERE key_hash IS NOT NULL ORDER BY key_hash, id;
    DROP INDEX jobs_by_key_hash;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def key_hash(owner: str, cmd: str, cwd: str) -> int:
    """The digest that finds a job's duplicates among those kept only in the database."""
    return key_hashes(owner, (cmd,), cwd)[0]


def key_hashes(owner: str, cmds: Iterable[str], cwd: str) -> list[int]:
    """key_hash of each command of one owner and cwd, in one loop: a call per command cost
    nearly as much as the digest (0.8 s of 1.9 s for a million). Each digest continues a
    copy of the owner's: making a blake2b with its keyword arguments cost a third of the
    whole (0.75 s against 0.52 s for a million)."""
    owner_part = hashlib.blake2b(f"{owner}\0".encode(), digest_size=8)
    cwd_part = f"\0{cwd}".encode()
    from_bytes, digests = int.from_bytes, []
    for cmd in cmds:
        digest = owner_part.copy()
        digest.update(cmd.encode())
        digest.update(cwd_part)
        digests.append(from_bytes(digest.digest(), "big", signed=True))
    return digests


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; refuse one written by a newer shoal."""
    connection.create_function("shoal_key_hash", 3, key_hash, deterministic=True)
    current = connection.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise InputError(
            f"database schema version {current} is newer than this shoal understands "
            f"({SCHEMA_VERSION}); upgrade shoal"
        )
    for version in range(current, SCHEMA_VERSION):
        connection.executescript(
            "BEGIN;" + MIGRATIONS[version] + f"PRAGMA user_version = {version + 1}; COMMIT;"
        )
    return SCHEMA_VERSION

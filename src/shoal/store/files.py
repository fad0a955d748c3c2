"""The database file on disk: kept to its owner, and refused when it has lost what it held.

A database holds jobs' environments and output, so it and SQLite's `-wal` and `-shm` beside it
are mode 0600 (SQLite gives those two the database's own mode). A server's home whose database
is empty or damaged is not started over: that would hand out new tokens over an empty queue,
and every job and user would be gone without a word.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from shoal.core.errors import InputError
from shoal.home import CONNECTION_FILE, has_server_identity

FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")
SEAL_SUFFIX = "-sealed"
# SQLite's result codes for a file that is not, or no longer, a sound database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# And those shoal's own reads meet only in a database changed behind its back: a table or a
# column gone (SQLite's generic error), a value of the wrong type.
_SQLITE_ERROR = 1
_SQLITE_MISMATCH = 20
_RESTORE_HINT = ("restore the latest copy made by `shoal backup` to this path, or move the file "
                 "away to start with an empty queue and new tokens")


def prepare_database_file(path: Path) -> bool:
    """Before SQLite opens `path`: refuse an empty database where a server has lived, make a
    new one readable by its owner only, and take back wider modes from an older one.

    Returns whether the file held something already (so that it is worth checking)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if size == 0 and has_server_identity(path.parent):
        raise InputError("the database is empty (0 bytes), yet a server has lived in this "
                         f"home; not starting an empty queue over it: {_RESTORE_HINT}",
                         source=str(path))
    if size is None:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for name in (path, *_side_files(path)):
        _keep_private(name)
    return bool(size)


def check_database(db: sqlite3.Connection, path: Path,
                   on_refusal: Callable[[], None]) -> None:
    """After SQLite opened a database that held something, before anything writes to it:
    refuse one that is damaged, or (where a server has lived) one that holds no queue.
    `on_refusal` is called first (it closes `db`). A damaged file may also make SQLite raise
    its own error here (see `is_damage`)."""
    problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(10)").fetchall()]
    if problems != ["ok"]:
        on_refusal()
        more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise damaged(path, problems[0].removeprefix("*** in database main ***").strip() + more)
    tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    if tables == 0 and (path.parent / CONNECTION_FILE).exists():
        on_refusal()
        raise InputError("the database holds no tables, yet a server has lived in this home; "
                         f"not starting an empty queue over it: {_RESTORE_HINT}",
                         source=str(path))


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error says the file is not a sound database (rather than, say, busy)."""
    return getattr(exc, "sqlite_errorcode", None) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def is_damage_to_reader(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error, met by a reader of a database of shoal's schema (after its
    version was checked), says the file is not what shoal wrote (rather than, say, busy)."""
    return is_damage(exc) or getattr(exc, "sqlite_errorcode", None) in (_SQLITE_ERROR,
                                                                        _SQLITE_MISMATCH)


def damaged_to_reader(path: Path, reason: object) -> InputError:
    """The error of a database that cannot be read for what it holds: damaged, or changed
    by something other than shoal."""
    return InputError(f"the database is damaged ({reason}); it cannot be read",
                      source=str(path))


def damaged(path: Path, reason: object) -> InputError:
    return InputError(f"the database is damaged ({reason}); not starting over it: "
                      f"{_RESTORE_HINT}", source=str(path))


def _keep_private(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, FILE_MODE)


# ---- the seal of a clean stop ------------------------------------------------------------

CountRow = tuple[str, str, str, int]  # (owner, group, state, jobs)


def seal(path: Path, counts: Iterable[CountRow], schema: int) -> None:
    """After a clean close that left nothing of SQLite's beside the file: what the file is
    (inode, size, modification and change times) and the jobs' counts the server kept, so
    that a start that finds the file exactly so need neither read all of it to check it nor
    scan its jobs to count them: both grow with history."""
    if any(side.exists() for side in _side_files(path)):
        return  # another connection is open, or the log was not folded in
    record = {"file": _identity(path), "schema": schema, "counts": [list(row) for row in counts]}
    sealed = _seal_of(path)
    partial = sealed.with_name(sealed.name + ".partial")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(handle, "w") as out:
        json.dump(record, out)
    os.replace(partial, sealed)


def sealed_counts(path: Path, schema: int) -> list[CountRow] | None:
    """The counts of the seal, when the file is still exactly as it was sealed, by this
    schema, with nothing beside it; otherwise None (the file must be checked and counted).
    Anything that writes to the file, or sets its times back, changes its change time."""
    if any(side.exists() for side in _side_files(path)):
        return None
    try:
        record = json.loads(_seal_of(path).read_text())
        if record["file"] != _identity(path) or record["schema"] != schema:
            return None
        return [(str(owner), str(group), str(state), int(jobs))
                for owner, group, state, jobs in record["counts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def drop_seal(path: Path) -> None:
    """The seal removed, once the file is open to be written: it vouched for the file as one
    stop left it, and the next clean stop writes its own. None is left to be trusted by
    mistake; a file refused at its opening keeps its seal, as it keeps everything."""
    with contextlib.suppress(FileNotFoundError):
        _seal_of(path).unlink()


def _seal_of(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def _side_files(path: Path) -> list[Path]:
    """SQLite's files beside the database (its log, its shared memory, its journal)."""
    return [path.with_name(path.name + suffix) for suffix in SIDE_FILES]


def _identity(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]

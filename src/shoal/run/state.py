"""Where `shoal run` keeps a run's state: one directory per input, so runs never mix.

`<base>/runs/<name>/` holds the run's database, its spool and the output kept until shown,
where `<base>` is `.shoal/` beside the file (or in the current directory for stdin and
arguments), or `$SHOAL_HOME` when set. `<name>` is the file's name (two files of one
directory are two runs, which may go at the same time), `stdin`, `stdin-<digest of the
command>`, or `args-<digest of the command and its arguments>`; under `$SHOAL_HOME`, which
every directory shares, followed by a digest of the directory. `<base>/last` names the most
recent run: `shoal logs`, `status` and `jobs` read that one when given `--state-dir <base>`
or, with no server to ask, when `.shoal/` is in the current directory (`$SHOAL_HOME`, when
set).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path

from shoal.core.errors import InputError
from shoal.home import DATABASE_FILE, LOCK_FILE, private_directory

RUNS = "runs"
LAST = "last"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


def base_dir(beside: Path | None) -> Path:
    """`.shoal` beside the file (in the current directory for stdin), or $SHOAL_HOME."""
    home = os.environ.get("SHOAL_HOME")
    if home:
        return Path(home).expanduser()
    return (beside.resolve().parent if beside is not None else Path.cwd()) / ".shoal"


def file_key(path: Path) -> str:
    name = path.name or "input"
    safe = _UNSAFE.sub("_", name)[:100]
    if safe != name or safe.startswith("."):
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
        safe = f"{safe.lstrip('.') or 'file'}-{digest}"
    return safe


def run_key(beside: Path | None, name: str) -> str:
    """The run's name under its base: `name`; under $SHOAL_HOME, which every directory
    shares, with a digest of the directory (the file's, or the current one for stdin and
    arguments) too, so that the runs of two directories never mix."""
    if not os.environ.get("SHOAL_HOME"):
        return name
    directory = beside.resolve().parent if beside is not None else Path.cwd()
    return f"{name}-{hashlib.sha256(os.fsencode(directory)).hexdigest()[:8]}"


def run_dir(base: Path, key: str) -> Path:
    return base / RUNS / key


def clear(home: Path) -> None:
    """Start the run over: everything but the lock (held by this process) goes."""
    if not home.is_dir():
        return
    for entry in home.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def make_private(base: Path) -> None:
    """`<base>` and `<base>/runs` kept to their owner, like each run's directory (0700): what
    runs are there, and their output, are nobody else's business."""
    private_directory(base / RUNS)
    private_directory(base)


def remember_last(base: Path, home: Path) -> bytes | None:
    """Name `home` the last run; what `last` held just before (to give to `forget_last`)."""
    before = read_last(base)
    _write_last(base, _last_line(base, home))
    return before


def read_last(base: Path) -> bytes | None:
    """What `<base>/last` holds now (None: nothing)."""
    try:
        return (base / LAST).read_bytes()
    except OSError:
        return None


def forget_last(base: Path, home: Path, before: bytes | None) -> None:
    """A run refused before it took a job is not the last one: `last` goes back to what it
    was, unless another run has named itself there since (two runs in one directory)."""
    if read_last(base) != _last_line(base, home):
        return
    if before is None:
        with contextlib.suppress(OSError):
            (base / LAST).unlink()
    else:
        _write_last(base, before)


def _last_line(base: Path, home: Path) -> bytes:
    return os.fsencode(os.path.relpath(home, base) + "\n")


def _write_last(base: Path, content: bytes) -> None:
    """Replaced whole, never seen half written by a reader."""
    with contextlib.suppress(OSError):
        temporary = base / f".{LAST}.{os.getpid()}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
        os.replace(temporary, base / LAST)


def default_state_dir() -> Path | None:
    """Where `shoal run` in the current directory keeps its runs (`.shoal/`, or
    $SHOAL_HOME), when it holds the state of a run."""
    candidate = base_dir(None)
    if (candidate / LAST).is_file() or (candidate / RUNS).is_dir() \
            or (candidate / DATABASE_FILE).is_file():
        return candidate
    return None


def resolve(directory: Path) -> Path:
    """The directory holding the database of a run: `directory` itself when it is one (a
    `runs/<name>` directory, or a runmaker file's state), else the last run under it."""
    if (directory / DATABASE_FILE).is_file() and not (directory / RUNS).is_dir():
        return directory
    # A `last` that cannot be read, or names nothing (garbled: not text, a NUL in it), is
    # passed over as a missing one is: the newest run is found by looking.
    with contextlib.suppress(OSError, ValueError):
        name = (directory / LAST).read_text().strip()
        chosen = (directory / name).resolve()
        if name and (chosen / DATABASE_FILE).is_file():
            return chosen
    runs = sorted((run for run in (directory / RUNS).glob("*")
                   if (run / DATABASE_FILE).is_file()),
                  key=lambda run: (run / DATABASE_FILE).stat().st_mtime)
    if runs:
        return runs[-1]
    if (directory / DATABASE_FILE).is_file():
        return directory
    raise InputError(f"--state-dir {directory}: no shoal run state here")

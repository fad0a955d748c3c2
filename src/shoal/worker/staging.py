"""Put an ensemble component's directory and files in place before it starts.

A file already at its destination with the same size and SHA-256 is left alone (unless
`always_copy`), so a component run again copies only what changed. Anything else is fetched by
content into a temporary file beside its destination, given its mode, and renamed over the
destination: a reader never sees a half-written file, and a failed fetch leaves the old one.
Hashing runs in a thread, so a large file does not hold up the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.core.errors import ShoalError
from shoal.core.protocol import Assignment, FileEntry
from shoal.ensemble.digest import sha256_of_file

# fetch_blob(sha256, path): write the blob with that SHA-256 to `path`; raise if it cannot.
FetchBlob = Callable[[str, Path], Awaitable[None]]



class StagingError(ShoalError):
    """A file or directory could not be put in place; the message names it."""


@dataclass(slots=True)
class StagingReport:
    copied_files: int = 0
    copied_bytes: int = 0
    skipped_files: int = 0  # already there with the same size and SHA-256


def workdir_for(assignment: Assignment, fresh_base: Path | None,
                workdir: Path | None = None) -> str:
    """The component's directory: its cwd, made if missing (a relative cwd is under `workdir`,
    the worker's working directory; None: this process's current directory), or when it has
    none a fresh ``shoal-JOBID-<random suffix>`` under `fresh_base` (None: the system's
    temporary directory), as ``mktemp -d`` makes one."""
    if assignment.cwd:
        cwd = os.path.normpath(os.path.join(workdir or os.getcwd(), assignment.cwd))
        try:
            os.makedirs(cwd, exist_ok=True)
        except OSError as exc:
            raise StagingError(f"cwd {cwd}: {exc.strerror or exc}") from None
        return cwd
    try:
        if fresh_base is not None:
            fresh_base.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"shoal-{assignment.job_id}-", dir=fresh_base)
    except OSError as exc:
        where = fresh_base or tempfile.gettempdir()
        raise StagingError(
            f"cannot make a working directory in {where}: {exc.strerror or exc}"
        ) from None


async def stage_files(
    entries: Sequence[FileEntry],
    base_dir: Path,
    fetch_blob: FetchBlob | None,
    *,
    always_copy: bool = False,
) -> StagingReport:
    """Create the directories and files `entries` describe; relative paths are under
    `base_dir`. Entries are handled in order; the first failure raises StagingError."""
    report = StagingReport()
    for entry in entries:
        destination = base_dir / entry.path  # an absolute entry path replaces base_dir
        try:
            if entry.kind == "dir":
                _make_directory(destination, entry.mode)
            else:
                await _stage_file(entry, destination, fetch_blob, always_copy, report)
        except StagingError as exc:
            raise StagingError(f"{destination}: {exc}") from None
        except OSError as exc:
            raise StagingError(f"{destination}: {exc.strerror or exc}") from None
    return report


def _make_directory(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != mode:  # the umask trimmed it, or it existed
        path.chmod(mode)


async def _stage_file(
    entry: FileEntry,
    destination: Path,
    fetch_blob: FetchBlob | None,
    always_copy: bool,
    report: StagingReport,
) -> None:
    if not always_copy and await _has_content(destination, entry):
        if stat.S_IMODE(destination.stat().st_mode) != entry.mode:
            destination.chmod(entry.mode)
        report.skipped_files += 1
        return
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagingError(
            f"cannot create its directory {exc.filename}: {exc.strerror or exc}"
        ) from None
    fd, part_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    os.close(fd)
    part = Path(part_name)
    try:
        if entry.sha256 is not None:
            if fetch_blob is None:
                raise StagingError("this worker has no way to fetch files")
            try:
                await fetch_blob(entry.sha256, part)
            except StagingError:
                raise
            except Exception as exc:  # the fetcher's own errors, whatever its transport
                raise StagingError(f"cannot fetch its content: {exc}") from None
        elif entry.size:
            raise StagingError("a file with content needs its sha256")
        size = part.stat().st_size
        if size != entry.size:
            raise StagingError(f"fetched {size} bytes, expected {entry.size}")
        part.chmod(entry.mode)  # before the rename, so it never appears with the wrong mode
        part.replace(destination)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    report.copied_files += 1
    report.copied_bytes += entry.size


async def _has_content(path: Path, entry: FileEntry) -> bool:
    """Whether `path` is a regular file with the entry's size and SHA-256."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
        return False
    if entry.sha256 is None:
        return entry.size == 0
    return await asyncio.to_thread(sha256_of_file, path) == entry.sha256


"""Who holds which line of a runmaker file: a claims file beside it, one lock per line.

runmaker4 keeps no record of who set a line to `r`, so a line left `r` by a process that died
stays `r` for ever. shoal runners record their claims where any other runner, on any host
sharing the directory, can test them: the claims file `<dir>/.shoal/runmaker/<name>.claims`,
whose byte k stands for the line whose state byte is at offset k of the runmaker file.

A shoal runner claims a line in three steps:

1. it takes an exclusive lock on byte k of the claims file, without waiting (a lock held means
   another live runner has the line);
2. it compare-and-sets the line's state `.` -> `r` in the runmaker file (runmaker4's lock);
3. it writes `s` at byte k of the claims file.

When the job has ended it writes 0 at byte k, sets `r` -> `d` (or `!`), and unlocks byte k.

The locks are open-file-description locks (Linux `F_OFD_SETLK`): they belong to the runner's
one open description of the claims file, which its guard process (see guard.py) shares, and
they go only when both are gone. The guard outlives a runner killed with SIGKILL until the jobs
that runner started are gone too. On NFS the server keeps the locks, so a runner on another
host sees them; a host that dies loses its locks when its NFS lease runs out.

So a checker that finds byte k unlocked and marked `s` while the line reads `r` knows the runner
that claimed it is dead, with its jobs, and may set the line back to `.` -- holding byte k's
lock while it does, so no runner can claim the line meanwhile. A line `r` without the mark was
set by runmaker4 (or by a shoal runner that died between steps 2 and 3, or after clearing the
mark): that cannot be judged, and is only listed. A checker never takes a locked line.

A mark left beside a line that is no longer `r` (its runner died, then someone set the line with
runset4) is cleared by the next check while its lock is free.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from shoal.core.errors import InputError, ShoalError
from shoal.formats.common import ParsedJob
from shoal.formats.runmaker import RunmakerFile, line_rest
from shoal.home import private_directory

CLAIMED = b"s"
CLEAR = b"\0"
_FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
_CONFLICT = (errno.EACCES, errno.EAGAIN)


def claims_path(runmaker_path: Path) -> Path:
    resolved = runmaker_path.resolve()
    return resolved.parent / ".shoal" / "runmaker" / f"{resolved.name}.claims"


class ClaimBook:
    """One open description of a runmaker file's claims file, and the line locks it holds."""

    def __init__(self, runmaker_path: Path):
        if not hasattr(fcntl, "F_OFD_SETLK"):
            raise ShoalError("sharing a runmaker file needs open-file-description locks "
                             "(Linux 3.15 or later)")
        self.path = claims_path(runmaker_path)
        try:
            private_directory(self.path.parent)
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                           0o600)
        except OSError as error:
            raise InputError(f"cannot open the claims file: {error.strerror or error}",
                             source=str(self.path)) from None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("this ClaimBook is closed")
        return self._fd

    def _lock(self, kind: int, offset: int) -> bool:
        request = struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, request)
        except OSError as error:
            if error.errno in _CONFLICT:
                return False
            raise InputError(f"cannot lock: {error.strerror or error}",
                             source=str(self.path)) from None
        return True

    def try_hold(self, offset: int) -> bool:
        """Take the line's lock if nobody holds it; False if a live runner does."""
        return self._lock(fcntl.F_WRLCK, offset)

    def release(self, offset: int) -> None:
        self._lock(fcntl.F_UNLCK, offset)

    def _write(self, offset: int, byte: bytes) -> None:
        try:
            os.pwrite(self.fd, byte, offset)
        except OSError as error:
            raise InputError(f"cannot write: {error.strerror or error}",
                             source=str(self.path)) from None

    def mark(self, offset: int) -> None:
        self._write(offset, CLAIMED)

    def clear(self, offset: int) -> None:
        self._write(offset, CLEAR)

    def marked(self, offset: int) -> bool:
        """Whether this one line is marked claimed now (read again once its lock is held)."""
        try:
            return os.pread(self.fd, len(CLAIMED), offset) == CLAIMED
        except OSError as error:
            raise InputError(f"cannot read: {error.strerror or error}",
                             source=str(self.path)) from None

    def marks(self) -> set[int]:
        """Offsets marked claimed (the file is sparse: it is read whole)."""
        try:
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, size, 0) if size else b""
        except OSError as error:
            raise InputError(f"cannot read: {error.strerror or error}",
                             source=str(self.path)) from None
        found: set[int] = set()
        start = data.find(CLAIMED)
        while start >= 0:
            found.add(start)
            start = data.find(CLAIMED, start + 1)
        return found

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> ClaimBook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class LineRef:
    line: int
    offset: int
    state: str
    cmd: str


@dataclass
class CheckReport:
    """What a check found among the lines that are running or being claimed."""

    live: list[LineRef] = field(default_factory=list)  # held by a live shoal runner
    dead: list[LineRef] = field(default_factory=list)  # a dead shoal runner's: recoverable
    recovered: list[LineRef] = field(default_factory=list)  # set back to "."
    unjudgeable: list[LineRef] = field(default_factory=list)  # runmaker4's, or unknown

    def to_dict(self) -> dict[str, list[dict[str, object]]]:
        return {name: [ref.__dict__ for ref in getattr(self, name)]
                for name in ("live", "dead", "recovered", "unjudgeable")}


def check_claims(runmaker: RunmakerFile, data: bytes, jobs: list[ParsedJob],
                 runmaker_path: Path, *, recover: bool) -> CheckReport:
    """Judge every `r` and `?` line; with `recover`, set a dead shoal runner's lines to `.`.

    Uses a description of the claims file of its own, so a runner that checks sees its own
    claims as held, like anyone else's.
    """
    report = CheckReport()
    with ClaimBook(runmaker_path) as book:
        marked = book.marks()
        for job in jobs:
            offset = job.state_offset
            if offset is None:
                continue
            state = job.state_char or ""
            ref = LineRef(job.line, offset, state, job.spec.cmd)
            if state == "?":
                report.unjudgeable.append(ref)
                continue
            if state != "r" and offset not in marked:
                continue
            if not book.try_hold(offset):
                if state == "r":
                    report.live.append(ref)
                continue
            try:
                # Read again under the lock: the marks read before may be stale (a live
                # runner ended the line, clearing its mark, and runmaker4 took it again).
                marked_now = book.marked(offset)
                if state != "r":
                    book.clear(offset)  # a mark its dead runner left; the line moved on
                elif not marked_now:
                    report.unjudgeable.append(ref)
                elif not recover:
                    report.dead.append(ref)
                else:
                    if runmaker.compare_and_set(offset, "r", ".", line_rest(data, offset)):
                        report.recovered.append(ref)
                    book.clear(offset)
            finally:
                book.release(offset)
    return report

"""The `runmaker` format (runmaker4's job file) and the in-place rewriting of its state characters.

Each job line is `<state><space or TAB><command>`. runmaker4 tracks progress by overwriting the
one state byte of each line, so several processes (even on several hosts over NFS) can share a
file without ever rewriting it whole. shoal keeps that contract: it records the byte offset of
every state character and later changes only that byte, by compare-and-set under the same
`fcntl` record locks runmaker4, runset4 and runwait4 take (see `claim_lock_range`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from shoal.core.errors import InputError
from shoal.formats.common import ParsedJob, SpecBuilder, is_blank_or_comment

STATE_CHARS = ".rd!e"  # new, running, done, failed, error
CLAIMING = "?"  # written by runmaker4 for an instant while one of its processes claims a line
_STATE_NAMES = {".": "new", "r": "running", "d": "done", "!": "failed", "e": "error",
                "?": "being claimed by runmaker4"}
# Any of these may be found in a live file.
READABLE_STATES = STATE_CHARS + CLAIMING


def parse_runmaker(text: str, builder: SpecBuilder, *, first_offset: int = 0
                   ) -> Iterator[ParsedJob]:
    """first_offset is the byte offset at which text starts in the file (3 after a UTF-8 BOM)."""
    line_offset = first_offset
    for number, line in builder.lines(text):
        offset = line_offset
        line_offset += len(line.encode()) + 1
        # runmaker4 treats a '#' or '/' in the first column as a comment.
        if is_blank_or_comment(line) or line.startswith("/"):
            continue
        state = line[0]
        if state.isspace():
            raise builder.error(
                'the state character must start the line, as in ". make all"', number
            )
        if len(line) < 2 or line[1] not in " \t":
            raise builder.error(
                'expected a state character, a space and a command, as in ". make all"', number
            )
        if state not in READABLE_STATES:
            raise builder.error(_unknown_state_message(state), number)
        command = line[2:].strip()
        if not command:
            raise builder.error(f'no command after the state character "{state}"', number)
        yield builder.job({"cmd": command}, number, state_offset=offset, state_char=state)


def _unknown_state_message(state: str) -> str:
    known = ", ".join(f'"{char}" {name}' for char, name in _STATE_NAMES.items())
    if not state.isprintable():  # an escape sequence must not reach the terminal as is
        return f"state {state!a} is not known (known: {known})"
    return f'state "{state}" is not known (known: {known})'


def claim_lock_range(state_offset: int) -> tuple[int, int]:
    """(start, length) of the record lock under which a line's state byte is compared and set.

    runmaker4 (and runset4) call `fcntl.lockf(f, LOCK_EX, job.offset, 1)`. Python's argument
    order is (len, start), so that call locks `job.offset` bytes from byte 1 -- from byte 1 to
    the end of the file for the first line (length 0 means "to the end"). The state byte of a
    line at offset k >= 1 lies inside [1, k + 1); the first line's does not; but every such
    range contains byte 1, which is what makes two runmaker4 claims exclude each other.

    shoal locks [0, max(k, 1) + 1): the state byte and byte 1 both. It therefore conflicts with
    every claim runmaker4 or runset4 makes on the file, with runwait4's and runmaker4's shared
    lock of the whole file while they read it, and with shoal's own claims.
    """
    return 0, max(state_offset, 1) + 1


class RunmakerFile:
    """A runmaker file opened for reading its jobs and compare-and-setting their states.

    Reads take a shared lock on the whole file, as runmaker4's `read_jobs` does; every change
    of a state byte is a compare-and-set under `claim_lock_range`'s exclusive lock. The
    descriptor stays open for the object's life: POSIX record locks belong to the process, and
    closing any descriptor of the file drops them, so the file is never opened twice here.
    """

    def __init__(self, path: str | Path, *, writable: bool = True):
        self.path = str(path)
        self.writable = writable
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except (OSError, ValueError) as error:
            doing = "open for writing" if writable else "open"
            raise InputError(f"cannot {doing}: {_reason(error)}", source=self.path) from None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("this RunmakerFile is closed")
        return self._fd

    def read(self) -> bytes:
        """The whole file, read under a shared lock (no claim can change it meanwhile)."""
        fd = self.fd
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH, 0, 0, os.SEEK_SET)
            try:
                chunks = []
                position = 0
                while True:
                    chunk = os.pread(fd, 1 << 20, position)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    position += len(chunk)
                return b"".join(chunks)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0, os.SEEK_SET)
        except OSError as error:
            raise InputError(f"cannot read: {_reason(error)}", source=self.path) from None

    def states(self, offsets: Iterable[int]) -> list[str]:
        """The state character at each offset, read under one shared lock ('' past the end)."""
        fd = self.fd
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH, 0, 0, os.SEEK_SET)
            try:
                return [os.pread(fd, 1, offset).decode("latin-1") for offset in offsets]
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0, os.SEEK_SET)
        except OSError as error:
            raise InputError(f"cannot read: {_reason(error)}", source=self.path) from None

    def compare_and_set(self, state_offset: int, expected: str, new: str,
                        rest: bytes | None = None) -> str | None:
        """If the state at state_offset is one of `expected`, set it to `new`.

        `rest`, when given, is what must follow the state byte (the separator and the
        command, up to the line's end): a line that no longer reads so is left alone, since
        the file was edited and the offset may now point into another line. Returns the state
        that was replaced, or None if nothing was written.
        """
        if len(new) != 1 or new not in READABLE_STATES:
            raise ValueError(f"runmaker state must be one of {READABLE_STATES!r}, not {new!r}")
        fd = self.fd
        start, length = claim_lock_range(state_offset)
        want = 1 + (len(rest) if rest is not None else 0)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, length, start, os.SEEK_SET)
            try:
                current = os.pread(fd, want, state_offset)
                if len(current) != want or chr(current[0]) not in expected:
                    return None
                if rest is not None and current[1:] != rest:
                    return None
                os.pwrite(fd, new.encode("ascii"), state_offset)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)
        except OSError as error:
            raise InputError(
                f"cannot write a job state: {_reason(error)}", source=self.path
            ) from None
        return chr(current[0])

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunmakerFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def line_rest(data: bytes, state_offset: int) -> bytes:
    """The bytes after the state character up to the line's end (no newline), as in the file."""
    end = data.find(b"\n", state_offset)
    return data[state_offset + 1 : end if end >= 0 else len(data)]


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)

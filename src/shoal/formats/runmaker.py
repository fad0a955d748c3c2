"""The `runmaker` format (runmaker4's job file) and the in-place rewriting of its state characters.

Each job line is `<state><space or TAB><command>`. runmaker4 tracks progress by overwriting the
one state byte of each line, so several processes (even on several hosts over NFS) can share a
file without ever rewriting it whole. shoal keeps that contract: it records the byte offset of
every state character and later changes only that byte.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shoal.core.errors import InputError
from shoal.formats.common import ParsedJob, SpecBuilder, is_blank_or_comment

STATE_CHARS = ".rd!e"  # new, running, done, failed, error
_STATE_NAMES = {".": "new", "r": "running", "d": "done", "!": "failed", "e": "error"}
# runmaker4 writes '?' while a process claims a job; any of these may be found in a live file.
_READABLE_STATE_BYTES = frozenset((STATE_CHARS + "?").encode())


def parse_runmaker(text: str, builder: SpecBuilder, *, first_offset: int = 0) -> list[ParsedJob]:
    """first_offset is the byte offset at which text starts in the file (3 after a UTF-8 BOM)."""
    jobs = []
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
        if state not in STATE_CHARS:
            raise builder.error(_unknown_state_message(state), number)
        command = line[2:].strip()
        if not command:
            raise builder.error(f'no command after the state character "{state}"', number)
        spec = builder.build({"cmd": command}, number)
        jobs.append(ParsedJob(spec=spec, line=number, state_offset=offset, state_char=state))
    return jobs


def _unknown_state_message(state: str) -> str:
    known = ", ".join(f'"{char}" {name}' for char, name in _STATE_NAMES.items())
    if not state.isprintable():  # an escape sequence must not reach the terminal as is
        return f"state {state!a} is not known (known: {known})"
    if state == "?":
        return (
            'state "?" means a runmaker4 process was claiming this job when it stopped; '
            f'set it to "." to run the job or "d" to skip it (known: {known})'
        )
    return f'state "{state}" is not known (known: {known})'


class RunmakerMarker:
    """Rewrites the state character of a runmaker file in place (one byte at state_offset).

    Each write takes a POSIX record lock on that byte, as runmaker4 does, so shoal and
    runmaker4 processes working on the same file do not interleave their updates.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR)
        except (OSError, ValueError) as error:
            raise InputError(
                f"cannot open for writing: {_reason(error)}", source=self.path
            ) from None

    def mark(self, state_offset: int, char: str) -> None:
        """Set the state at state_offset to char, one of '.rd!e'."""
        if len(char) != 1 or char not in STATE_CHARS:
            raise ValueError(f"runmaker state must be one of {STATE_CHARS!r}, not {char!r}")
        if self._fd is None:
            raise ValueError("this RunmakerMarker is closed")
        fd = self._fd
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, state_offset, os.SEEK_SET)
            try:
                current = os.pread(fd, 1, state_offset)
                # A byte that is no longer a state character means the file changed under us;
                # writing anyway would corrupt a command.
                if len(current) != 1 or current[0] not in _READABLE_STATE_BYTES:
                    raise InputError(
                        f"byte {state_offset} is no longer a job state character; "
                        "was the file edited while its jobs ran?",
                        source=self.path,
                    )
                os.pwrite(fd, char.encode("ascii"), state_offset)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, state_offset, os.SEEK_SET)
        except OSError as error:
            raise InputError(
                f"cannot write a job state: {_reason(error)}", source=self.path
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunmakerMarker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)

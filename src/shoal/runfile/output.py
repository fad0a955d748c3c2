"""What runmaker4 shows: its live lines on the terminal, and its output log (`-l FILE -n N`).

Live lines, as runmaker4 prints them::

    executing `CMD'
    status (HOST,PID): forked "CMD"
    stdout (HOST,PID): LINE
    stderr (HOST,PID): LINE
    status (HOST,PID): exit CODE "CMD"

shoal prints a job's stdout and stderr lines when it has ended (from what it captured: the
head and the tail of each stream), not as they are written.

The log file keeps, for job number n (its rank among the file's job lines, from 1), a record at
byte (n - 1) * 161 * (N + 1): a header line `.-> CMD (in CWD)` and the last N lines of the
job's output and status, each padded with spaces to 160 bytes and ended by a newline. The file
must exist, as for runmaker4, and is written in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shoal.core.errors import InputError
from shoal.core.protocol import Captured

LOG_WIDTH = 160


def captured_lines(captured: Captured) -> list[str]:
    """The lines of a captured stream; a gap between head and tail is shown as such."""
    text = captured.head
    if captured.tail:
        missing = captured.total_bytes - len(captured.head.encode()) - len(captured.tail.encode())
        text += ("\n[... output cut ...]\n" if missing > 0 else "") + captured.tail
    return text.splitlines()


def _clean(text: str) -> str:
    """Job output is untrusted: no terminal control sequences reach the screen or the log."""
    return "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text)


class LiveLines:
    """runmaker4's lines, written through `emit` (one call per line)."""

    def __init__(self, emit: Callable[[str], None]):
        self._emit = emit

    def executing(self, cmd: str) -> None:
        self._emit(f"executing `{_clean(cmd)}'")

    def forked(self, cmd: str, host: str, pid: int | None) -> None:
        self._emit(f'status ({host},{pid}): forked "{_clean(cmd)}"')

    def finished(self, cmd: str, host: str, pid: int | None, exit_text: str,
                 stdout: list[str], stderr: list[str]) -> None:
        for line in stdout:
            self._emit(f"stdout ({host},{pid}): {_clean(line)}")
        for line in stderr:
            self._emit(f"stderr ({host},{pid}): {_clean(line)}")
        self._emit(f'status ({host},{pid}): {exit_text} "{_clean(cmd)}"')


def _padded(text: str) -> bytes:
    raw = _clean(text).encode()[:LOG_WIDTH]
    raw = raw.decode("utf-8", "ignore").encode()  # a character cut in two is dropped
    return raw.ljust(LOG_WIDTH) + b"\n"


class RunmakerLog:
    """runmaker4's output log: one fixed-size record per job, rewritten in place."""

    def __init__(self, path: Path, lines_per_job: int):
        if lines_per_job < 0:
            raise InputError("-n: must be 0 or more")
        self.path = path
        self.lines_per_job = lines_per_job
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY)  # must exist, as for runmaker4
        except OSError as error:
            raise InputError(f"cannot open the log file: {error.strerror or error} "
                             "(create it first, as for runmaker4)", source=str(path)) from None

    def _record(self, number: int) -> int:
        return (number - 1) * (LOG_WIDTH + 1) * (self.lines_per_job + 1)

    def _write(self, number: int, header: str | None, lines: list[str]) -> None:
        if self._fd is None:
            return
        kept = lines[-self.lines_per_job:] if self.lines_per_job else []
        body = [":"] * (self.lines_per_job - len(kept)) + kept
        data = b"".join(_padded(line) for line in body)
        offset = self._record(number) + LOG_WIDTH + 1
        if header is not None:
            data, offset = _padded(header) + data, offset - LOG_WIDTH - 1
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as error:
            raise InputError(f"cannot write the log file: {error.strerror or error}",
                             source=str(self.path)) from None

    def started(self, number: int, cmd: str, cwd: str, host: str, pid: int | None) -> None:
        self._write(number, f".-> {cmd} (in {cwd})", [f'+ status ({host},{pid}): forked "{cmd}"'])

    def finished(self, number: int, cmd: str, host: str, pid: int | None, exit_text: str,
                 stdout: list[str], stderr: list[str]) -> None:
        lines = [f'+ status ({host},{pid}): forked "{cmd}"']
        lines += [f": stdout ({host},{pid}): {line}" for line in stdout]
        lines += [f"! stderr ({host},{pid}): {line}" for line in stderr]
        lines.append(f'+ status ({host},{pid}): {exit_text} "{cmd}"')
        self._write(number, None, lines)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

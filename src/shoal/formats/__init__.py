"""Input formats for job files: `lines`, `wr` and `runmaker` (see docs/formats.md).

Parsing is all or nothing: any problem raises InputError naming the file, the line and the
field, and no jobs are returned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.core.errors import InputError
from shoal.core.models import GROUP_PREFIX
from shoal.formats.common import ParsedJob, SpecBuilder
from shoal.formats.detect import detect_format, runmaker_share
from shoal.formats.lines import count_lines, parse_lines, plain_commands
from shoal.formats.runmaker import RunmakerFile, parse_runmaker
from shoal.formats.wr import parse_wr

__all__ = [
    "FORMATS",
    "FileCheck",
    "ParsedJob",
    "Reading",
    "RunmakerFile",
    "check_file",
    "detect_format",
    "iter_file",
    "iter_text",
    "parse_file",
    "parse_text",
    "read_file",
    "read_text",
]

FORMATS = ("auto", "lines", "wr", "runmaker")

_UTF8_BOM = "\ufeff"


def parse_text(
    text: str,
    fmt: str = "auto",
    *,
    source: str = "<stdin>",
    defaults: Mapping[str, Any] | None = None,
) -> list[ParsedJob]:
    """Parse job file content. defaults are JobSpec fields that a line's own options override."""
    return list(iter_text(text, fmt, source=source, defaults=defaults))


def parse_file(
    path: str | Path, fmt: str = "auto", *, defaults: Mapping[str, Any] | None = None
) -> list[ParsedJob]:
    """Read and parse a job file. Runmaker state offsets are byte offsets into this file."""
    return list(iter_file(path, fmt, defaults=defaults))


def iter_text(
    text: str,
    fmt: str = "auto",
    *,
    source: str = "<stdin>",
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[ParsedJob]:
    """parse_text's jobs as they are read: a million lines are never a million jobs at once.
    A bad format or default is refused at once; a bad line when it is reached."""
    return read_text(text, fmt, source=source, defaults=defaults).jobs()


def read_text(text: str, fmt: str = "auto", *, source: str = "<stdin>",
              defaults: Mapping[str, Any] | None = None) -> Reading:
    """The text made ready to give its jobs (or, if each is only a command, its commands)."""
    return Reading(text, fmt, source, defaults)


def read_file(path: str | Path, fmt: str = "auto", *,
              defaults: Mapping[str, Any] | None = None) -> Reading:
    """read_text of the file (read whole, and checked)."""
    return Reading(_read_text(path), fmt, str(path), defaults)


@dataclass(frozen=True)
class FileCheck:
    """What checking a whole file found: its jobs, never kept."""

    jobs: int
    fmt: str  # the format it was read as
    most_cores: int  # the most cores any of its jobs asks for
    most_cores_line: int  # the first line asking for them (0 without jobs)
    most_memory: int = 0  # the most memory (bytes) any of its jobs asks for
    most_memory_line: int = 0
    relative_cwd_line: int = 0  # the first line whose cwd is not absolute (0: none)
    # A group waited for that no job of the file is in: (the group, the first line waiting).
    missing_group: tuple[str, int] | None = None
    # Jobs (1-based, in file order) from a job waiting for a group to the group's first job
    # further down: each span must be added at once, or the wait would find the group empty.
    forward_spans: tuple[tuple[int, int], ...] = ()


def check_file(
    path: str | Path, fmt: str = "auto", *, defaults: Mapping[str, Any] | None = None,
) -> FileCheck:
    """iter_file's checks, all of them, and its jobs counted; a file of plain commands is
    checked without making a job for each line (see count_lines)."""
    reading = read_file(path, fmt, defaults=defaults)
    if reading.fmt == "lines" and (counted := count_lines(reading.text)) is not None:
        jobs, first = counted
        base = reading.builder.base
        memory = base.memory_bytes if jobs else 0
        return FileCheck(jobs, "lines", base.cores if jobs else 0, first, memory,
                         first if memory else 0, first if jobs and _relative(base.cwd) else 0)
    jobs, most, line, memory, memory_line, relative = 0, 0, 0, 0, 0, 0
    first_in_group: dict[str, int] = {}
    waits: dict[str, tuple[int, int]] = {}  # group -> (first job waiting for it, its line)
    spans: list[tuple[int, int]] = []
    for job in reading.jobs():
        jobs += 1
        spec = job.base
        if spec.cores > most:
            most, line = spec.cores, job.line
        if spec.memory_bytes > memory:
            memory, memory_line = spec.memory_bytes, job.line
        if not relative and _relative(spec.cwd) and not spec.gate:
            relative = job.line
        first_in_group.setdefault(spec.group, jobs)
        for entry in (*spec.after, *spec.after_any):
            if entry.startswith(GROUP_PREFIX):
                waits.setdefault(entry[len(GROUP_PREFIX):], (jobs, job.line))
    missing = None
    for group, (waiting, waiting_line) in waits.items():
        group_start = first_in_group.get(group)
        if group_start is None:
            if missing is None or waiting_line < missing[1]:
                missing = (group, waiting_line)
        elif group_start > waiting:
            spans.append((waiting, group_start))
    return FileCheck(jobs, reading.fmt, most, line, memory, memory_line, relative, missing,
                     tuple(sorted(spans)))


def _relative(cwd: str | None) -> bool:
    return cwd is not None and not cwd.startswith("/")


class Reading:
    """A text made ready to parse: checked, its BOM set aside, its format known. A bad format
    or default is refused when it is made."""

    def __init__(self, text: str, fmt: str, source: str,
                 defaults: Mapping[str, Any] | None):
        if fmt not in FORMATS:
            raise InputError(
                f'format "{fmt}" is not known (known: {", ".join(FORMATS)})', source=source
            )
        _check_encodable(text, source)
        self.first_offset = 0
        if text.startswith(_UTF8_BOM):
            text = text[1:]
            self.first_offset = len(_UTF8_BOM.encode())
        self.text = text
        self.builder = SpecBuilder(defaults, source)
        self.detected = fmt == "auto"
        self.fmt = detect_format(text) if self.detected else fmt

    def jobs(self) -> Iterator[ParsedJob]:
        if self.fmt == "runmaker":
            return _runmaker_jobs(self.text, self.builder, self.first_offset, self.detected)
        if self.fmt == "wr":
            return parse_wr(self.text, self.builder)
        return parse_lines(self.text, self.builder)

    def plain_commands(self) -> Iterator[str] | None:
        """Every job's command when each job is the defaults' spec (`builder.base`) with only
        its command (a `lines` text in which no line can be refused): the same jobs as
        `jobs()`, none of them made. Otherwise None."""
        return plain_commands(self.text) if self.fmt == "lines" else None


def iter_file(
    path: str | Path, fmt: str = "auto", *, defaults: Mapping[str, Any] | None = None,
) -> Iterator[ParsedJob]:
    """parse_file's jobs as they are read (the file itself is read whole, and checked)."""
    return read_file(path, fmt, defaults=defaults).jobs()


def _read_text(path: str | Path) -> str:
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise InputError(f"cannot read the file: {reason}", source=source) from None
    try:
        # Decoded as is, without newline translation, so byte offsets stay true to the file.
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        raise InputError(
            f"not UTF-8 text: byte 0x{data[error.start]:02x} "
            f"at byte column {error.start - line_start + 1}",
            source=source,
            line=data.count(b"\n", 0, error.start) + 1,
        ) from None


def _runmaker_jobs(text: str, builder: SpecBuilder, first_offset: int,
                   detected: bool) -> Iterator[ParsedJob]:
    try:
        yield from parse_runmaker(text, builder, first_offset=first_offset)
    except InputError as error:
        if not detected:
            raise
        shaped, content = runmaker_share(text)
        raise InputError(
            f"{error.args[0].removeprefix(f'{builder.source}:{error.line}: ')} (the file was "
            f"read as runmaker's, {shaped} of its {content} lines being job lines; "
            "--format lines runs every line as a command)",
            source=builder.source, line=error.line,
        ) from None


def _check_encodable(text: str, source: str) -> None:
    """A str can hold lone surrogates that no file can; refuse them before they reach a job."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            "text is not valid Unicode (a lone surrogate)",
            source=source,
            line=text.count("\n", 0, error.start) + 1,
        ) from None

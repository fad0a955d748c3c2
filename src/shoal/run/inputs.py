"""What `shoal run` runs: a file's lines, stdin's lines, or a template filled from arguments.

Each gives `Item`s in input order, in batches: a file or arguments all at once (the count is
known), a stream (stdin, `/dev/stdin`, `<(...)`, a FIFO) as its lines arrive, so jobs start
before the input ends. A job is a place in its input: two identical lines are two jobs.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shoal.core.errors import InputError
from shoal.core.models import JobSpec
from shoal.formats import check_file, iter_file, parse_text
from shoal.formats.common import SpecBuilder, is_blank_or_comment
from shoal.run import state
from shoal.run.template import Sources, fill, split_columns, template_key

BATCH = 5000
STREAM_BATCH = 2000


@dataclass(slots=True)  # not frozen, as ParsedJob: one is made for every job
class Item:
    number: int  # its line in the file or stream, or its place among the arguments
    spec: JobSpec
    tag: str  # what --tag puts before its output lines


@dataclass
class RunInput:
    label: str  # for the bar and messages
    key: str  # the state directory's name under <base>/runs/
    base: Path
    stream: bool  # read as it comes; its state starts over unless --resume
    total: int | None = None
    numbered_by: str = "line"  # what an Item's number counts, for messages
    _items: Iterator[Item] | None = None
    _handle: BinaryIO | None = None
    _template: str | None = None
    _colsep: re.Pattern[str] | None = None
    _tagstring: str | None = None
    _fmt: str = "lines"
    _defaults: dict[str, Any] = field(default_factory=dict)

    async def batches(self) -> AsyncIterator[list[Item]]:
        if self._items is not None:
            while True:
                batch = [item for _, item in zip(range(BATCH), self._items, strict=False)]
                if not batch:
                    return
                yield batch
                await asyncio.sleep(0)
            return
        assert self._handle is not None
        async for batch in _stream_batches(self._handle, self._line_items()):
            yield batch

    def _line_items(self) -> _LineParser:
        return _LineParser(self.label, self._fmt, self._defaults, self._template, self._colsep,
                           self._tagstring)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def is_stream(path: Path) -> bool:
    """stdin, /dev/stdin, <(...), a FIFO: anything but a regular file is read as it comes
    (a path under /dev or /proc always: /dev/stdin may be a redirected regular file)."""
    if str(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class FileScan:
    jobs: int
    runmaker: bool  # its lines carry runmaker's state characters


def scan_file(path: Path, fmt: str, parallel: int, defaults: Mapping[str, Any]) -> FileScan:
    """Every line of a file checked before anything runs (a bad one anywhere is refused, and
    nothing runs), and counted; no job is kept, so a million lines cost no more than one."""
    checked = check_file(path, fmt, defaults=defaults)
    if checked.most_cores > parallel:
        raise InputError(f"asks for {checked.most_cores} cores but -j is {parallel}",
                         source=str(path), line=checked.most_cores_line)
    return FileScan(checked.jobs, runmaker=checked.fmt == "runmaker")


def tag_of(tagstring: str | None, words: Sequence[str], number: int, given: str, *,
           columns: bool = False) -> str:
    """What --tag puts before a job's lines: `given` (its line number or arguments), or
    --tagstring filled with its arguments (a command's line for a file of commands) as they
    are, unquoted."""
    if tagstring is None:
        return given
    return fill(tagstring, words, number, columns=columns, quote=False)


def from_file(path: Path, fmt: str, defaults: Mapping[str, Any], scan: FileScan,
              tagstring: str | None = None) -> RunInput:
    """A checked file's jobs, read again as they are fed."""
    items = (Item(job.line, job.spec, tag_of(tagstring, [job.spec.cmd], job.line,
                                             str(job.line)))
             for job in iter_file(path, fmt, defaults=defaults))
    return RunInput(label=path.name, key=state.file_key(path), base=state.base_dir(path),
                    stream=False, total=scan.jobs, _items=items)


def _command_key(template: str, colsep: re.Pattern[str] | None) -> str:
    """A run's state is named by its command (and how arguments are split into columns)."""
    return template_key(template if colsep is None else f"{template}\0{colsep.pattern}")


def from_stream(path: Path | None, fmt: str, defaults: Mapping[str, Any],
                template: str | None, colsep: re.Pattern[str] | None = None,
                tagstring: str | None = None) -> RunInput:
    """stdin (`path` None or `-`), or a path that is not a regular file."""
    if fmt == "runmaker":
        raise InputError("--format runmaker: a runmaker file is rewritten in place, so it "
                         "cannot come from a pipe")
    if path is None or str(path) == "-":
        handle: BinaryIO = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        label = "stdin"
    else:
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115
        except OSError as error:
            raise InputError(f"cannot read it: {error.strerror or error}",
                             source=str(path)) from None
        label = str(path)
    key = "stdin" if template is None else f"stdin-{_command_key(template, colsep)}"
    return RunInput(label=label, key=key, base=state.base_dir(None), stream=True,
                    _handle=handle, _template=template, _colsep=colsep, _tagstring=tagstring,
                    _fmt="wr" if fmt == "wr" else "lines", _defaults=dict(defaults))


def from_arguments(template: str, sources: Sources, defaults: Mapping[str, Any],
                   colsep: re.Pattern[str] | None = None, tagstring: str | None = None
                   ) -> RunInput:
    builder = SpecBuilder(defaults, "arguments")
    width = len(sources.lists)
    if template and colsep is None:
        fill(template, [""] * width, 0)  # a {N} past the sources: refused before any job
    if tagstring is not None and colsep is None:
        try:
            fill(tagstring, [""] * width, 0, quote=False)
        except InputError as error:
            raise InputError(f"--tagstring: {error}") from None

    def items() -> Iterator[Item]:
        for number, args in enumerate(sources.combinations(), start=1):
            words = args if colsep is None else split_columns(args, colsep)
            # With no command the arguments are the commands (`shoal run ::: 'make a' ...`).
            cmd = (fill(template, words, number, columns=colsep is not None) if template
                   else " ".join(words))
            yield Item(number, builder.build({"cmd": cmd}, number),
                       tag_of(tagstring, words, number, " ".join(args),
                              columns=colsep is not None))

    # Named by the command (and its --colsep) alone, so `--resume` with more arguments skips
    # those done.
    return RunInput(label="arguments", key=f"args-{_command_key(template, colsep)}",
                    base=state.base_dir(None), stream=False, total=sources.count(),
                    numbered_by="argument set", _items=items())


class _LineParser:
    """One line of a stream at a time: a command (lines or wr), or an argument for a template."""

    def __init__(self, label: str, fmt: str, defaults: Mapping[str, Any],
                 template: str | None, colsep: re.Pattern[str] | None = None,
                 tagstring: str | None = None):
        self.label = label
        self.tagstring = tagstring
        self.colsep = colsep
        self.fmt = fmt
        self.defaults = defaults
        self.template = template
        self.builder = SpecBuilder(defaults, label)
        self.count = 0

    def __call__(self, number: int, raw: bytes) -> Item | None:
        try:
            line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text", source=self.label, line=number) from None
        if self.template is not None:
            if not line:
                return None
            self.count += 1
            words = [line] if self.colsep is None else split_columns([line], self.colsep)
            columns = self.colsep is not None
            cmd = fill(self.template, words, self.count, columns=columns)
            return Item(number, self.builder.build({"cmd": cmd}, number),
                        tag_of(self.tagstring, words, self.count, line, columns=columns))
        if is_blank_or_comment(line):
            return None
        if self.fmt == "wr":
            try:
                job = parse_text(line + "\n", "wr", source=self.label, defaults=self.defaults)[0]
            except InputError as error:
                raise InputError(str(error.args[0]).split(": ", 2)[-1], source=self.label,
                                 line=number) from None
            return Item(number, job.spec,
                        tag_of(self.tagstring, [job.spec.cmd], number, str(number)))
        spec = self.builder.build({"cmd": line.strip()}, number)
        return Item(number, spec, tag_of(self.tagstring, [spec.cmd], number, str(number)))


async def _stream_batches(handle: BinaryIO, parse: _LineParser) -> AsyncIterator[list[Item]]:
    """Lines are read in a thread and handed over as they come; each batch is what has
    arrived since the last one."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(handle.fileno(), 1 << 16)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError):
            pass
        finally:
            if pending:
                loop.call_soon_threadsafe(queue.put_nowait, pending)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="shoal-run-input", daemon=True).start()
    number = 0
    ended = False
    while not ended:
        raw = await queue.get()
        batch: list[Item] = []
        while True:
            if raw is None:
                ended = True
                break
            number += 1
            item = parse(number, raw)
            if item is not None:
                batch.append(item)
            if len(batch) >= STREAM_BATCH or queue.empty():
                break
            raw = queue.get_nowait()
        if batch:
            yield batch

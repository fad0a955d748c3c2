"""What `shoal run` runs: a file's lines, stdin's lines, or a template filled from arguments.

Each gives `Item`s in input order, in batches: a file or arguments all at once (the count is
known), a stream (stdin, `/dev/stdin`, `<(...)`, a FIFO) as its lines arrive, so jobs start
before the input ends. A job is a place in its input: two identical lines are two jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import stat
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shoal.core.errors import InputError
from shoal.core.models import MAX_COMMAND_BYTES, MAX_LINE_BYTES, JobSpec
from shoal.formats import check_file, iter_file, parse_text
from shoal.formats.common import SpecBuilder, is_blank_or_comment
from shoal.run import pipe, state
from shoal.run.arrivals import arrivals
from shoal.run.template import (
    Sources,
    by_position,
    chunked,
    fill,
    packed,
    read_items,
    split_columns,
    template_key,
    wants_total,
)

# A file's or arguments' lines go to the run BATCH at a time: an add holds the loop (about
# 15 µs a job), and one of thousands of jobs left the slots without their next jobs for tens
# of milliseconds. The first batch is smaller still, each next one twice the last until
# BATCH lines are in: the first jobs start once a few lines are in, and the batches still
# end where BATCH-sized ones would.
BATCH = 128
FIRST_BATCH = 64
_PERL = re.compile(r"\{=.*=\}", re.DOTALL)
STREAM_BATCH = 2000


@dataclass(slots=True)  # not frozen, as ParsedJob: one is made for every job
class Item:
    number: int  # its line in the file or stream, or its place among the arguments
    spec: JobSpec
    tag: str  # what --tag puts before its output lines


@dataclass(frozen=True)
class Filling:
    """How arguments become commands and tags: GNU parallel's options for them."""

    template: str | None = None  # CMD; None: each argument (or item of stdin) is a command
    colsep: re.Pattern[str] | None = None  # --colsep
    tagstring: str | None = None  # --tagstring
    max_args: int | None = None  # -N: arguments a job
    delimiter: bytes | None = None  # -0, -d: what ends an item of stdin (None: a line)
    header: bool = False  # --header: a source's first value names it (or its columns)
    shuffle: bool = False  # --shuf: the jobs in a random order, numbered in it
    total: int | None = None  # how many jobs there are, for {##}; None: not known (yet)
    pack: str | None = None  # -X or -m: as many arguments a job as fit
    slots: int = 1  # the jobs at once (-j), over which -X and -m spread few arguments
    block: int | None = None  # --pipe: stdin is cut into blocks of this size, one a job

    def named(self, names: Sequence[str]) -> Filling:
        """--header: the command and the tag with `{name}` put as `{N}`."""
        names = self.words(names)  # with --colsep, the first line's columns name them
        return dataclasses.replace(
            self, header=False,
            template=None if self.template is None else by_position(self.template, names),
            tagstring=None if self.tagstring is None else by_position(self.tagstring, names))

    @property
    def padded(self) -> bool:
        """Whether a `{N}` past a job's last argument is empty (--colsep, -N, -X, -m), not
        refused."""
        return (self.colsep is not None or self.max_args is not None or self.pack is not None
                or self.block is not None)

    @property
    def reads_all(self) -> bool:
        """Every argument is read before the first job: to count the jobs (`{##}`), or to
        spread them over the slots (-X, -m)."""
        return self.wants_total or self.pack is not None

    @property
    def wants_total(self) -> bool:
        """`{##}` is in the command or the tag: every job is counted before the first runs."""
        return wants_total(self.template) or wants_total(self.tagstring)

    def check(self, width: int) -> None:
        """Before any job: a `{N}` past `width` arguments a job is refused, and so is `{##}`
        where the number of jobs is not known."""
        width = width if not self.padded else 0
        for given, text in (("the command", self.template), ("--tagstring", self.tagstring)):
            if text is not None and _PERL.search(text):
                raise InputError(f"{given}: {{= perl =}} replacement strings are GNU "
                                 "parallel's, not supported; do it in the command's shell")
        if self.template:
            fill(self.template, [""] * width, 0, padded=self.padded, total=self.total)
        if self.tagstring is not None:
            try:
                fill(self.tagstring, [""] * width, 0, padded=self.padded, quote=False,
                     total=self.total)
            except InputError as error:
                raise InputError(f"--tagstring: {error}") from None

    def words(self, args: Sequence[str]) -> list[str]:
        return list(args) if self.colsep is None else split_columns(args, self.colsep)

    def command(self, words: Sequence[str], number: int) -> str:
        # With no command the arguments are the commands (`shoal run ::: 'make a' ...`).
        if self.template is None:
            return " ".join(words)
        return fill(self.template, words, number, padded=self.padded, total=self.total,
                    per_word=self.max_args is not None or self.pack == "-X")

    def pack_jobs(self, args: Sequence[str]) -> list[tuple[str, ...]]:
        """-X, -m: `args` grouped into jobs whose commands stay within the size of one."""
        assert self.template is not None
        # Sized with the widest {#} and {##}, and an argument by what it adds after another
        # (with -X, its copy of the word, separator included): never less than the command.
        sizing = dataclasses.replace(self, total=len(args))

        def size(some: Sequence[str]) -> int:
            command = sizing.command(sizing.words(some), len(args))
            return len(command.encode("utf-8", "surrogateescape"))

        return packed(args, self.slots, size([]),
                      lambda arg: size([arg, arg]) - size([arg]), MAX_COMMAND_BYTES)

    def tag(self, words: Sequence[str], number: int, given: str) -> str:
        """What --tag puts before a job's lines: `given` (its line number or arguments), or
        --tagstring filled with its arguments (a command's line for a file of commands) as
        they are, unquoted."""
        if self.tagstring is None:
            return given
        return fill(self.tagstring, words, number, padded=self.padded, quote=False,
                    total=self.total)

    def key(self) -> str:
        """A run's state is named by its command (and how arguments are split into
        columns, or stdin into blocks)."""
        text = self.template or ""
        if self.colsep is not None:
            text += f"\0{self.colsep.pattern}"
        if self.block is not None:
            text += f"\0--pipe {self.block}"
        return template_key(text)


@dataclass
class RunInput:
    label: str  # for the bar and messages
    key: str  # the state directory's name under <base>/runs/
    base: Path
    # Its state starts over unless --resume (stdin, arguments); a file's is resumed.
    starts_over: bool
    total: int | None = None
    numbered_by: str = "line"  # what an Item's number counts, for messages
    _items: Iterator[Item] | None = None
    _handle: BinaryIO | None = None
    _filling: Filling = Filling()
    _fmt: str = "lines"
    _defaults: dict[str, Any] = field(default_factory=dict)
    writes: bool = True  # False for a dry run: --pipe's blocks are not kept
    _blocks: pipe.Blocks | None = None
    # Spans of items (1-based, first and last) that go in one batch: a job waiting for a
    # group whose first job comes later in the file is added with it, never before it.
    _uncut: tuple[tuple[int, int], ...] = ()

    async def batches(self) -> AsyncIterator[list[Item]]:
        if self._filling.block is not None:
            async for batch in self._block_batches():
                yield batch
            return
        if self._items is not None:
            taken = 0
            spans = iter(self._uncut)
            span = next(spans, None)
            size = FIRST_BATCH
            while True:
                while span is not None and span[0] <= taken + size:
                    if span[1] > taken + size:  # the batch would end inside it: take it all
                        size = span[1] - taken
                    span = next(spans, None)
                batch = [item for _, item in zip(range(size), self._items, strict=False)]
                if not batch:
                    return
                taken += len(batch)
                yield batch
                await asyncio.sleep(0)
                size = min(size * 2, BATCH - taken) if taken < BATCH else BATCH
            return
        assert self._handle is not None
        async for batch in _stream_batches(self._handle, self._line_items(),
                                           self._filling.delimiter):
            yield batch

    @property
    def _blocks_dir(self) -> Path:
        return state.run_dir(self.base, self.key) / pipe.BLOCKS

    async def _block_batches(self) -> AsyncIterator[list[Item]]:
        """--pipe: a job for each block of stdin, as it is read."""
        assert self._handle is not None and self._filling.block is not None
        builder = SpecBuilder(self._defaults, self.label)
        directory = self._blocks_dir
        self._blocks = pipe.Blocks(self._handle, self._filling.block,
                                   directory if self.writes else None,
                                   ahead=2 * self._filling.slots + 2,
                                   header=self._filling.header)
        async for numbers in self._blocks.numbers():
            yield [Item(number, builder.build({"cmd": pipe.piped(
                        self._filling.command([], number), pipe.block_path(directory, number))},
                        number), self._filling.tag([], number, str(number)))
                   for number in numbers]
            if not self.writes:  # a dry run starts nothing: nothing ends to make room
                for number in numbers:
                    self._blocks.ended(number, succeeded=True)

    def stdin_bytes(self, number: int) -> int:
        """What this item's job was given on its stdin (--pipe: its block)."""
        return 0 if self._blocks is None else self._blocks.sizes.get(number, 0)

    def ended(self, number: int, succeeded: bool) -> None:
        """The job of this item ended, or was skipped (--pipe: its block is let go)."""
        if self._blocks is not None:
            self._blocks.ended(number, succeeded)

    def _line_items(self) -> _LineParser:
        return _LineParser(self.label, self._fmt, self._defaults, self._filling)

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()
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
    uncut: tuple[tuple[int, int], ...] = ()  # spans of jobs to add at once (see batches)


def scan_file(path: Path, fmt: str, parallel: int, defaults: Mapping[str, Any],
              memory_bytes: int = 0) -> FileScan:
    """Every line of a file checked before anything runs (a bad one anywhere is refused, and
    nothing runs), and counted; no job is kept, so a million lines cost no more than one.
    What the run would refuse when a job is added is refused here, for the whole file:
    more cores than -j, more memory than the machine's (`memory_bytes`, 0: not known), a
    relative cwd, and a wait for a group none of the file's jobs is in."""
    checked = check_file(path, fmt, defaults=defaults)
    source = str(path)
    if checked.most_cores > parallel:
        raise InputError(f"asks for {checked.most_cores} cores but -j is {parallel}",
                         source=source, line=checked.most_cores_line)
    if checked.most_memory > memory_bytes > 0:
        raise InputError(too_much_memory(checked.most_memory, memory_bytes), source=source,
                         line=checked.most_memory_line)
    if checked.relative_cwd_line:
        raise InputError("cwd: must be an absolute path", source=source,
                         line=checked.relative_cwd_line)
    if checked.missing_group is not None:
        group, line = checked.missing_group
        raise InputError(f"group:{group} has no jobs in this file", source=source, line=line)
    return FileScan(checked.jobs, runmaker=checked.fmt == "runmaker",
                    uncut=_merged(checked.forward_spans))


def too_much_memory(asked: int, machine: int) -> str:
    return f"asks for {asked} bytes of memory, more than this machine has ({machine})"


def _merged(spans: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def from_file(path: Path, fmt: str, defaults: Mapping[str, Any], scan: FileScan,
              filling: Filling = Filling()) -> RunInput:
    """A checked file's jobs, read again as they are fed (only --tagstring applies)."""
    filling = dataclasses.replace(filling, total=scan.jobs)
    filling.check(1)
    items = (Item(job.line, job.spec, filling.tag([job.spec.cmd], job.line, str(job.line)))
             for job in iter_file(path, fmt, defaults=defaults))
    return RunInput(label=path.name, key=state.run_key(path, state.file_key(path)),
                    base=state.base_dir(path),
                    starts_over=False, total=scan.jobs, _items=items, _uncut=scan.uncut)


def from_stream(path: Path | None, fmt: str, defaults: Mapping[str, Any],
                filling: Filling) -> RunInput:
    """stdin (`path` None or `-`), or a path that is not a regular file."""
    if fmt == "runmaker":
        raise InputError("--format runmaker: a runmaker file is rewritten in place, so it "
                         "cannot come from a pipe")
    for flag, given in (("-N", filling.max_args is not None), ("--header", filling.header),
                        (filling.pack, filling.pack is not None)):
        if given and filling.template is None:
            raise InputError(f"{flag}: for arguments given to a command; the lines of stdin "
                             "are commands here")
    if filling.shuffle:
        raise InputError("--shuf: shuffles arguments given after :::, :::: or -a; stdin is "
                         "run as it comes (shuffle it first: `shuf | shoal run ...`)")
    if filling.block is not None and filling.wants_total:
        raise InputError("{##}: --pipe cuts stdin into jobs as it comes, so their number is "
                         "not known")
    if filling.reads_all and filling.template is not None:
        return _whole_stream(path, defaults, filling)  # parallel reads it all first too
    filling.check(1 if filling.max_args is None else filling.max_args)
    if path is None or str(path) == "-":
        try:
            handle: BinaryIO = os.fdopen(os.dup(0), "rb", buffering=0)
        except OSError:
            raise InputError("stdin is closed: give a FILE, or commands on stdin") from None
        label = "stdin"
    else:
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115
        except OSError as error:
            raise InputError(f"cannot read it: {error.strerror or error}",
                             source=str(path)) from None
        label = str(path)
    key = state.run_key(None, "stdin" if filling.template is None
                        else f"stdin-{filling.key()}")
    return RunInput(label=label, key=key, base=state.base_dir(None), starts_over=True,
                    numbered_by="line" if filling.block is None else "block",
                    _handle=handle, _filling=filling,
                    _fmt="wr" if fmt == "wr" else "lines", _defaults=dict(defaults))


def _whole_stream(path: Path | None, defaults: Mapping[str, Any], filling: Filling
                  ) -> RunInput:
    """A command's stdin read to its end, as one source of arguments, so `{##}` is known."""
    name = "-" if path is None else str(path)
    label = "stdin" if name == "-" else name
    # Blank lines are skipped, as a stream's are; -0 and -d keep empty items, as xargs does.
    items = [item for item in read_items(name, filling.delimiter)
             if item or filling.delimiter is not None]
    run = RunInput(label=label, key="", base=state.base_dir(None), starts_over=True, total=0,
                   _items=iter(())) if not items else \
        from_arguments(Sources(((*items,),), (False,)), defaults, filling)
    # Still stdin's run: named as one.
    return dataclasses.replace(run, label=label,
                               key=state.run_key(None, f"stdin-{filling.key()}"))


def from_arguments(sources: Sources, defaults: Mapping[str, Any], filling: Filling
                   ) -> RunInput:
    builder = SpecBuilder(defaults, "arguments")
    if filling.header:
        names, sources = sources.without_headers()
        filling = filling.named(names)
    combinations: Iterator[tuple[str, ...]] = sources.combinations()
    total = sources.count()
    width = len(sources.lists)
    if filling.max_args is not None:
        if width > 1:
            raise InputError("-N: groups the arguments of one input source; there are "
                             f"{width}")
        combinations = chunked(combinations, filling.max_args)
        total = total if filling.max_args == 0 else -(-total // filling.max_args)
        width = filling.max_args
    elif filling.pack is not None:
        if width > 1:
            raise InputError(f"{filling.pack}: packs the arguments of one input source; "
                             f"there are {width}")
        jobs = filling.pack_jobs([arg for (arg,) in combinations])
        combinations, total, width = iter(jobs), len(jobs), 0
    filling = dataclasses.replace(filling, total=total)
    filling.check(width)
    if filling.shuffle:  # all of them made first, as parallel does
        shuffled = list(combinations)
        random.shuffle(shuffled)
        combinations = iter(shuffled)

    def items() -> Iterator[Item]:
        for number, args in enumerate(combinations, start=1):
            words = filling.words(args)
            yield Item(number, builder.build({"cmd": filling.command(words, number)}, number),
                       filling.tag(words, number, " ".join(args)))

    # Named by the command (and its --colsep) alone, so `--resume` with more arguments skips
    # those done; without it, the arguments run again, as GNU parallel runs them.
    return RunInput(label="arguments", key=state.run_key(None, f"args-{filling.key()}"),
                    base=state.base_dir(None), starts_over=True, total=total,
                    numbered_by="argument set", _items=items())


class _LineParser:
    """One item of a stream at a time (a line, or what -0/-d ends): a command (lines or
    wr), or an argument for a template (-N of them a job: `finish` gives the last, short)."""

    def __init__(self, label: str, fmt: str, defaults: Mapping[str, Any], filling: Filling):
        self.label = label
        self.fmt = fmt
        self.defaults = defaults
        self.filling = filling
        self.builder = SpecBuilder(defaults, label)
        self.count = 0
        self.pending: list[tuple[int, str]] = []  # -N: (number, argument) of the next job

    def __call__(self, number: int, raw: bytes) -> Item | None:
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(f"the line is longer than {MAX_LINE_BYTES} bytes",
                             source=self.label, line=number)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text", source=self.label, line=number) from None
        if self.filling.delimiter is None:
            line = line.removesuffix("\n").removesuffix("\r")
        if self.filling.template is not None:
            if not line and self.filling.delimiter is None:  # -0, -d: an empty argument, as
                return None                                    # xargs and parallel give it
            if self.filling.header:  # the first line names the argument, or its columns
                self.filling = self.filling.named([line])
                return None
            self.pending.append((number, line))
            if self.filling.max_args is not None and len(self.pending) < self.filling.max_args:
                return None
            return self.finish()
        if is_blank_or_comment(line):
            return None
        if self.fmt == "wr":
            try:
                job = parse_text(line + "\n", "wr", source=self.label, defaults=self.defaults)[0]
            except InputError as error:
                raise InputError(str(error.args[0]).split(": ", 2)[-1], source=self.label,
                                 line=number) from None
            return Item(number, job.spec, self.filling.tag([job.spec.cmd], number, str(number)))
        spec = self.builder.build({"cmd": line.strip()}, number)
        return Item(number, spec, self.filling.tag([spec.cmd], number, str(number)))

    def finish(self) -> Item | None:
        """The job of the arguments taken so far, if any."""
        if not self.pending:
            return None
        number = self.pending[0][0]
        args = [arg for _, arg in self.pending] if self.filling.max_args != 0 else []
        self.pending = []
        self.count += 1
        words = self.filling.words(args)
        cmd = self.filling.command(words, self.count)
        return Item(number, self.builder.build({"cmd": cmd}, number),
                    self.filling.tag(words, self.count, " ".join(args)))


async def _stream_batches(handle: BinaryIO, parse: _LineParser, delimiter: bytes | None
                         ) -> AsyncIterator[list[Item]]:
    """Items (lines, or what `delimiter` ends) are read in a thread and handed over as they
    come; each batch is what has arrived since the last one (at most STREAM_BATCH jobs)."""
    end = b"\n" if delimiter is None else delimiter

    failed: list[str] = []

    def read(put: Callable[[bytes], None]) -> None:
        pending = b""
        try:
            while chunk := os.read(handle.fileno(), 1 << 16):
                *lines, pending = (pending + chunk).split(end)
                for line in lines:
                    put(line)
                if len(pending) > MAX_LINE_BYTES:  # no end in sight (/dev/zero): refused
                    return
        except ValueError:  # closed here: the run is stopping
            pass
        except OSError as error:  # unreadable: said once what was read has been taken
            failed.append(error.strerror or str(error))
        finally:
            if pending:
                put(pending)

    number = 0
    async for raws in arrivals(read, "shoal-run-input"):
        batch: list[Item] = []
        for raw in raws:
            number += 1
            item = parse(number, raw)
            if item is not None:
                batch.append(item)
            if len(batch) >= STREAM_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
    last = parse.finish()  # -N: the arguments left, fewer than a job's
    if last is not None:
        yield [last]
    if failed:
        raise InputError(f"cannot read it: {failed[0]}", source=parse.label)

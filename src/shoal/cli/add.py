"""`shoal add`: jobs from a command, a file of them, or an array of one command, checked here
(a bad line names its file and line) and sent as one add, in chunks when large."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from array import array as numbers
from collections.abc import Iterable, Iterator, Mapping, MutableSequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli import JsonOption, render, session_of
from shoal.core.errors import BatchInputError, InputError

if TYPE_CHECKING:
    from shoal.client import AddResult, ArrayResult
    from shoal.core.models import JobSpec
    from shoal.formats import ParsedJob

_WHOLE_NUMBER = re.compile(r"[0-9]+")

class InputFormat(StrEnum):
    AUTO = "auto"
    LINES = "lines"
    WR = "wr"
    RUNMAKER = "runmaker"


# The flag that sets each JobSpec field, to name it in error messages.
FLAG_OF_FIELD = {
    "cmd": "CMD",
    "cwd": "--cwd",
    "group": "--group",
    "priority": "--priority",
    "retries": "--retries",
    "cores": "--cores",
    "memory_bytes": "--memory",
    "time_seconds": "--time",
    "time_limit_seconds": "--time-limit",
    "gpus": "--gpus",
    "resources": "--resource",
    "req_group": "--req-group",
    "grow_memory": "--grow-memory",
    "after": "--after",
    "after_any": "--after-any",
    "limits": "--limit",
    "env": "--env",
    "on_worker": "--on",
    "name": "--name",
}

def job_defaults(
    *,
    cwd: str | None = None,
    group: str | None = None,
    priority: int | None = None,
    retries: int | None = None,
    cores: int | None = None,
    memory: str | None = None,
    run_time: str | None = None,
    time_limit: str | None = None,
    gpus: int | None = None,
    resources: list[str] | None = None,
    req_group: str | None = None,
    grow_memory: bool = False,
    after: list[str] | None = None,
    after_any: list[str] | None = None,
    limits: list[str] | None = None,
    env: list[str] | None = None,
    on_worker: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The JobSpec fields set by `add`'s flags, from their text. Flags not given are absent,
    except cwd, which defaults to the current directory (made absolute, like --cwd)."""
    from shoal.core.models import parse_duration, parse_memory

    fields: dict[str, Any] = {
        "cwd": os.path.abspath(os.path.expanduser(cwd)) if cwd else os.getcwd(),
        "group": group,
        "priority": priority,
        "retries": retries,
        "cores": cores,
        "gpus": gpus,
        "resources": parse_resources(resources) if resources else None,
        "req_group": req_group,
        "grow_memory": grow_memory or None,
        "on_worker": on_worker,
        "name": name,
        "after": after or None,
        "after_any": after_any or None,
        "limits": limits or None,
        "env": parse_env(env) if env else None,
    }
    for field, flag, text, parse in (
        ("memory_bytes", "--memory", memory, parse_memory),
        ("time_seconds", "--time", run_time, parse_duration),
        ("time_limit_seconds", "--time-limit", time_limit, parse_duration),
    ):
        if text is not None:
            try:
                fields[field] = parse(text)
            except ValueError as exc:
                raise InputError(f"{flag}: {exc}") from None
    return {field: value for field, value in fields.items() if value is not None}


def parse_env(assignments: list[str]) -> dict[str, str]:
    """['K=V', 'PATH'] -> {'K': 'V', 'PATH': <this shell's PATH>}, as `docker run -e` does."""
    env = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals:
            if key not in os.environ:
                raise InputError(f"--env: {key!r} has no '=' and is not set here")
            value = os.environ[key]
        if not key:
            raise InputError("--env: an assignment has no variable name (expected NAME=VALUE)")
        env[key] = value
    return env


def parse_resources(requests: list[str]) -> dict[str, int]:
    """['license=2', 'scratch'] -> {'license': 2, 'scratch': 1}: named resources, as Slurm's
    --licenses (a bare name asks for one)."""
    from shoal.core.models import RESERVED_RESOURCES

    resources: dict[str, int] = {}
    for request in requests:
        name, equals, amount = request.partition("=")
        name = name.strip()
        if name in RESERVED_RESOURCES:
            option = "--memory" if name == "memory" else f"--{name}"
            raise InputError(f"--resource: {name} has its own option, {option}")
        if not name or (equals and not _WHOLE_NUMBER.fullmatch(amount.strip())):
            raise InputError(f"--resource: {request!r} is not NAME=N (e.g. license=2)")
        if name in resources:
            raise InputError(f"--resource: {name} is given twice")
        resources[name] = int(amount) if equals else 1
    return resources


def spec_from_fields(fields: dict[str, Any]) -> JobSpec:
    """A validated JobSpec; a bad field is an InputError naming the flag that set it."""
    from pydantic import ValidationError

    from shoal.core.models import JobSpec

    try:
        return JobSpec.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        raise InputError(f"{FLAG_OF_FIELD.get(field, field)}: {message}") from None


def specs_from_command(words: list[str], defaults: dict[str, Any]) -> list[JobSpec]:
    return [spec_from_fields({**defaults, "cmd": " ".join(words)})]


def specs_from_file(file: str, input_format: InputFormat, defaults: dict[str, Any],
                    lines: MutableSequence[int] | None = None
                    ) -> Iterator[JobSpec | Mapping[str, Any]]:
    """Jobs read from FILE ('-': stdin), the flags as defaults that a line's options override.
    They are read as they are sent: a bad line further on stops the add, which adds nothing.
    `lines`, if given, gets each sent job's line in the file (a file of commands alone,
    which the server cannot refuse a line of, is not numbered)."""
    from shoal.client import CommandOf
    from shoal.formats import read_file, read_text

    spec_from_fields({**defaults, "cmd": "true"})  # a bad flag is reported by its name
    if file == "-":
        reading = read_text(sys.stdin.read(), input_format.value, source="<stdin>",
                            defaults=defaults)
    else:
        reading = read_file(file, input_format.value, defaults=defaults)
    commands = reading.plain_commands()
    if commands is not None:  # every line only a command: no job is made for each
        fields = _sent_fields(reading.builder.base)
        return (CommandOf(fields, command) for command in commands)
    parsed = reading.jobs()
    first = next(parsed, None)
    if first is None:
        return iter(())
    if first.state_offset is None:
        return _as_sent(itertools.chain([first], parsed), lines)
    # A runmaker file: its new lines only, counted (runmaker files are small) to say so.
    jobs = [first, *parsed]
    new = [job.spec for job in jobs if job.state_char == "."]
    if lines is not None:
        lines.extend(job.line for job in jobs if job.state_char == ".")
    print(f"{file}: a runmaker file: adding its {len(new)} new ('.') lines, leaving "
          f"{len(jobs) - len(new)} others; the server does not write their states "
          "back (`shoal run FILE --listen` does)", file=sys.stderr)
    return iter(new)


def _as_sent(jobs: Iterator[ParsedJob], lines: MutableSequence[int] | None = None
             ) -> Iterator[JobSpec | Mapping[str, Any]]:
    """Each job as the client sends it: a line that gives only its command as the defaults'
    fields and that command, with no JobSpec made for it (the client sends a chunk of such
    jobs as their shared fields and their commands)."""
    from shoal.client import CommandOf

    base: JobSpec | None = None
    fields: dict[str, Any] = {}
    for job in jobs:
        if lines is not None:
            lines.append(job.line)
        if job.command is None:
            yield job.spec
            continue
        if job.base is not base:
            base = job.base
            fields = _sent_fields(base)
        yield CommandOf(fields, job.command)


def _sent_fields(base: JobSpec) -> dict[str, Any]:
    """The fields that jobs made of `base` and each its own command share, as sent."""
    return base.model_dump(mode="json", exclude_defaults=True, exclude={"cmd"})


def check_job_source(command: list[str] | None, file: str | None, array: str | None,
                     each_line: str | None) -> None:
    """Jobs come from one place: a command, a file, or a command repeated over items."""
    given = [flag for flag, value in (("-f", file), ("--array", array),
                                      ("--each-line", each_line)) if value is not None]
    if len(given) > 1:
        raise InputError("give only one of -f, --array and --each-line")
    if array is not None or each_line is not None:
        if not command:
            raise InputError(f"{given[0]}: give the command to run for each item")
    elif bool(command) == (file is not None):
        raise InputError("give a command or -f FILE (not both)")
    elif command and any("{}" in word for word in command):
        # `shoal add 'echo {}' --array 1-9` would add one job that runs "echo {} --array 1-9".
        for word in command:
            option = word.partition("=")[0]
            if option in ("--array", "--each-line"):
                raise InputError(f"{option}: options go before the command, "
                                 "or they are part of it")


def array_job(words: list[str], defaults: dict[str, Any], array: str) -> dict[str, Any]:
    """--array SPEC: the job of every task, checked here as the server will check it (its
    largest number's job checks every task's) so a mistake is named by its option."""
    from shoal.core import arrays

    fields = {**defaults, "cmd": " ".join(words)}
    spec_from_fields({**fields, "cmd": "true"})  # a bad flag is reported by its name
    if arrays.PLACEHOLDER not in fields["cmd"]:
        raise InputError(f"--array: the command has no {arrays.PLACEHOLDER} to replace")
    try:
        runs = arrays.parse_array_spec(array)
    except ValueError as exc:
        raise InputError(f"--array: {exc}") from None
    largest = arrays.numbers_from(runs, arrays.run_count(runs) - 1, 1)[0]
    try:
        spec_from_fields(arrays.expand(fields, [(largest, str(largest))])[0])
    except InputError as exc:
        raise InputError(f"--array: item {largest}: {exc}") from None
    return fields


def jobs_from_lines(words: list[str], defaults: dict[str, Any],
                    each_line: str) -> list[dict[str, Any]]:
    """One job per line of --each-line FILE, as job spec fields.

    Kept as plain dicts rather than JobSpecs: a million of those take many seconds to
    build. Items differ only in cmd, name and two env values, so checking the job of the
    longest item checks them all (lines with a NUL are refused as they are read).
    """
    from shoal.core import arrays

    fields = {**defaults, "cmd": " ".join(words)}
    spec_from_fields({**fields, "cmd": "true"})  # a bad flag is reported by its name
    if arrays.PLACEHOLDER not in fields["cmd"]:  # checked before a long list is read
        raise InputError(f"--each-line: the command has no {arrays.PLACEHOLDER} to replace")
    source = "<stdin>" if each_line == "-" else each_line
    try:
        items = arrays.items_from_lines(read_text(each_line))
    except ValueError as exc:
        raise InputError(f"--each-line: {source}: {exc}") from None
    if not items:
        return []
    longest = max(items, key=lambda item: len(item[1].encode()))
    try:
        spec_from_fields(arrays.expand(fields, [longest])[0])
    except InputError as exc:
        raise InputError(f"--each-line: item {longest[1][:40]!r}: {exc}") from None
    return arrays.expand(fields, items)


def read_text(file: str) -> str:
    """The text of FILE ('-': standard input), as UTF-8."""
    if file == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        data: bytes | str = stdin.read() if stdin is not None else sys.stdin.read()
    else:
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"line {line} is not UTF-8 text") from None


def format_array_result(result: ArrayResult) -> str:
    line = f"added array {result.array}: {result.tasks:,} tasks, {result.added:,} jobs now"
    if result.existed:
        line += f", {result.existed:,} already existed"
    if result.tasks > result.added + result.existed:
        line += "; the rest become jobs as workers take them (shoal arrays)"
    return line


def format_add_result(result: AddResult) -> str:
    line = f"added {result.added}, {result.existed} already existed"
    if result.requeued:
        line += f", {result.requeued} requeued"
    return line


def add(
    ctx: typer.Context,
    command: Annotated[list[str] | None, typer.Argument(
        metavar="CMD...", show_default=False,
        help="The command (words joined with spaces). Options go before it.")] = None,
    file: Annotated[str | None, typer.Option(
        "--file", "-f", metavar="FILE|-", help="Read jobs from FILE ('-': standard input).")
    ] = None,
    input_format: Annotated[InputFormat | None, typer.Option(
        "--format", help="Format of FILE (default: auto).", show_default=False)] = None,
    array: Annotated[str | None, typer.Option(
        metavar="SPEC", help="One job per number: 1-100, 1-100:10, 1,5,9; {} in CMD is the "
        "number.")] = None,
    each_line: Annotated[str | None, typer.Option(
        metavar="FILE|-", help="One job per non-blank line of FILE; {} in CMD is the line.")
    ] = None,
    cwd: Annotated[str | None, typer.Option(
        metavar="DIR", help="Working directory (default: this one).")] = None,
    group: Annotated[str | None, typer.Option(
        "--group", "-g", help="Group, for reports and bulk actions (default: default).")
    ] = None,
    priority: Annotated[int | None, typer.Option(
        help="Higher runs first (default: 0).")] = None,
    retries: Annotated[int | None, typer.Option(
        help="Attempts after a failure (default: 0).")] = None,
    cores: Annotated[int | None, typer.Option(help="Cores needed (default: 1).")] = None,
    memory: Annotated[str | None, typer.Option(
        metavar="SIZE", help="Memory needed: 512M, 8G (bare numbers are MB).")] = None,
    gpus: Annotated[int | None, typer.Option(metavar="N", help="GPUs needed (default: 0).")
    ] = None,
    resource: Annotated[list[str] | None, typer.Option(
        metavar="NAME=N", help="A named resource needed, e.g. license=1 (repeatable).")] = None,
    run_time: Annotated[str | None, typer.Option(
        "--time", metavar="DURATION", help="Expected run time: 90s, 30m, 1h30m.")] = None,
    time_limit: Annotated[str | None, typer.Option(
        metavar="DURATION", help="Kill the job after this long.")] = None,
    req_group: Annotated[str | None, typer.Option(
        metavar="NAME", help="Requirements group: jobs alike, whose needs are learned.")
    ] = None,
    grow_memory: Annotated[bool, typer.Option(
        "--grow-memory", help="Killed for using more memory than asked: retry with more.")
    ] = False,
    after: Annotated[list[str] | None, typer.Option(
        metavar="ID|group:G",
        help="Run after this job, or every job of a group, has succeeded (repeatable).")
    ] = None,
    after_any: Annotated[list[str] | None, typer.Option(
        metavar="ID|group:G",
        help="Run after this job, or every job of a group, has ended, however (repeatable).")
    ] = None,
    limit: Annotated[list[str] | None, typer.Option(
        metavar="NAME[:N]", help="A named concurrency limit; :N sets its cap (repeatable).")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(
        metavar="K=V", help="Environment variable; K alone copies it from here (repeatable).")
    ] = None,
    on: Annotated[str | None, typer.Option(
        metavar="WORKER|K=V", help="Run on this worker only, or on workers with this label.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the job.")] = None,
    rerun: Annotated[bool, typer.Option(
        "--rerun", help="Queue again the jobs already added that have ended.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Add jobs: a command, a file of them, or an array of one command.

    A (cmd, cwd) already added is not added again (see --rerun).
    With -f, the flags are defaults: a line's own options win.
    With --array or --each-line, each {} in CMD and --name becomes the item.
    Each job gets SHOAL_ARRAY_INDEX and SHOAL_ARRAY_ITEM; all are added at once.
    """
    check_job_source(command, file, array, each_line)
    if input_format is not None and file is None:
        raise InputError("--format applies to -f FILE only")
    defaults = job_defaults(
        cwd=cwd, group=group, priority=priority, retries=retries, cores=cores, memory=memory,
        run_time=run_time, time_limit=time_limit, gpus=gpus, resources=resource,
        req_group=req_group, grow_memory=grow_memory, after=after, after_any=after_any,
        limits=limit, env=env, on_worker=on, name=name,
    )
    if array is not None:
        assert command
        if rerun:
            raise InputError("--rerun: not for --array (an array is added once; add it "
                             "again as a new array)")
        fields = array_job(command, defaults, array)
        added = session_of(ctx).client().add_array(fields, array)
        if as_json:
            render.print_json(dataclasses.asdict(added))
        else:
            print(format_array_result(added))
        return
    specs: Iterable[JobSpec | Mapping[str, Any]]
    if each_line is not None:
        assert command
        specs = jobs_from_lines(command, defaults, each_line)
        total: int | None = len(specs)
    elif command:
        specs, total = specs_from_command(command, defaults), 1
    else:
        assert file is not None
        lines = numbers("q")  # 8 bytes a job: a million-line file's numbers in 8 MB
        specs = specs_from_file(file, input_format or InputFormat.AUTO, defaults, lines)
        total = None
    progress = _AddProgress(total) if sys.stderr.isatty() else None
    try:
        result = session_of(ctx).client().add(specs, rerun=rerun, progress=progress)
    except BatchInputError as error:  # a job the server refused: named by its line
        if file is None or error.index >= len(lines):
            raise
        raise InputError(error.reason, source="<stdin>" if file == "-" else file,
                         line=lines[error.index]) from None
    finally:
        if progress is not None:
            progress.finish()
    if as_json:
        render.print_json(dataclasses.asdict(result))
    else:
        print(format_add_result(result))


class _AddProgress:
    """On a terminal, how much of a large add (sent in chunks) has gone; a file is read as it
    is sent, so its total is not known until the end."""

    def __init__(self, total: int | None):
        self.total, self.shown = total, False

    def __call__(self, sent: int) -> None:
        self.shown = True
        of = "" if self.total is None else f" of {self.total:,}"
        print(f"\rsent {sent:,}{of} jobs", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.shown:
            print(file=sys.stderr)

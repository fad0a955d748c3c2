"""`shoal run FILE -j N`: the embedded default. Parse, run, show progress, summarise."""

# No `from __future__ import annotations` here (nor in main.py): typer reads run_command's
# annotations twice when it makes the command, and evaluating ~40 of them from strings each
# time cost 5 ms of every `shoal run`; now they are evaluated once, as the module loads.
# Names imported only for type checking are quoted where they are used.

import asyncio
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from shoal.core.collection import resume_collection
from shoal.core.errors import InputError
from shoal.run.slots import jobs_at_once
from shoal.run.template import Sources

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.provision.hosts import SshHost
    from shoal.run.inputs import Filling, RunInput
    from shoal.run.output import OutputSettings
    from shoal.runfile.driver import FileRunReport, RunfileOptions

T = TypeVar("T")
FORMATS = ("auto", "lines", "wr", "runmaker")
DEFAULT_LISTEN = "0.0.0.0:7341"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):[0-9]{1,5}$")


def listen_value(args: list[str]) -> list[str]:
    """`--listen` may stand alone: give it its default unless HOST:PORT follows it."""
    out = list(args)
    for index, word in enumerate(out):
        if word == "--":
            break
        if word == "--listen":
            following = out[index + 1] if index + 1 < len(out) else ""
            if not _HOST_PORT.match(following):
                out[index] = f"--listen={DEFAULT_LISTEN}"
    return out


def run_command(
    words: Annotated[list[str] | None, typer.Argument(
        metavar="[FILE|-] [CMD [::: ARGS...] [:::: ARGFILE...]]", show_default=False,
        help="A file of commands (lines, wr or runmaker format), or - (or nothing, from a "
             "pipe) for commands on stdin, or a command to fill with each argument after "
             "::: (or each line of the files after ::::, or of stdin).")] = None,
    jobs: Annotated[str | None, typer.Option(
        "-j", "--jobs", metavar="N",
        help="Commands at once: N, N% of the cores, +N or -N cores (default: all cores).",
        show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="auto, lines, wr or runmaker.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    retry: Annotated[bool, typer.Option(
        "-r", "--retry", help="runmaker file: run again the lines marked ! or e.")] = False,
    one_only: Annotated[bool, typer.Option(
        "-1", "--one-only",
        help="runmaker file: each of the -j slots stops after its first job that succeeds.")
    ] = False,
    logfile: Annotated[Path | None, typer.Option(
        "-l", "--logfile", metavar="FILE",
        help="runmaker file: runmaker4's output log (FILE must exist).")] = None,
    loglines: Annotated[int | None, typer.Option(
        "-n", "--loglines", metavar="N",
        help="runmaker file: with -l, the last N lines of each job's output (3).")] = None,
    live: Annotated[bool, typer.Option(
        "--live", help="runmaker file: print runmaker4's lines (executing, status, stdout) "
                       "instead of a progress bar.")] = False,
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="[HOST:PORT]",
        help=f"runmaker file: let workers on other hosts take its lines (default "
             f"{DEFAULT_LISTEN}); prints their join line. Lines run here only with -j N.")
    ] = None,
    hosts: Annotated[str | None, typer.Option(
        "--hosts", "-S", "--sshlogin", metavar="HOST,...",
        help="Also run the jobs on these \\[user@]host[:port] over SSH (GNU parallel's "
             "--sshlogin): a worker is started on each for this run and stopped after it, "
             "joined to this run on --listen (default: every address, any free port). "
             "Commands run in the same directory there.")] = None,
    line_buffer: Annotated[bool, typer.Option(
        "--line-buffer", "--lb", "-u", "--ungroup",
        help="Print output lines as they come (default: each job's output whole when it "
             "ends). Lines are never cut, even as -u/--ungroup.")] = False,
    tag: Annotated[bool, typer.Option(
        "--tag", help="Start each output line with the job's line number or argument.")
    ] = False,
    keep_order: Annotated[bool, typer.Option(
        "-k", "--keep-order", help="Print jobs' output in input order.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="Print no job output, only the summary.")] = False,
    results: Annotated[str | None, typer.Option(
        "--results", metavar="DIR",
        help="Keep each job's stdout, stderr, cmd and exit_code in DIR/N/.")] = None,
    joblog: Annotated[str | None, typer.Option(
        "--joblog", metavar="FILE", help="A line per ended job, in GNU parallel's format.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the commands that would run; run nothing.")] = False,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Forget what earlier runs of this input did; run every job.")
    ] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip jobs an earlier run of this input finished, failed or not.")
    ] = False,
    resume_failed: Annotated[bool, typer.Option(
        "--resume-failed", help="Skip jobs an earlier run of this input did; run the failed "
                                "ones again (a file's default).")] = False,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="T", help="Kill a job that runs longer (30, 90s, 5m, 2h).")
    ] = None,
    retries: Annotated[int | None, typer.Option(
        "--retries", metavar="N", min=0, help="Run a failed job up to N more times.")] = None,
    halt: Annotated[str | None, typer.Option(
        "--halt", metavar="WHEN,WHY=N",
        help="Stop early, as GNU parallel: now,fail=1 | soon,fail=10% | now,success=1 | "
             "soon,done=5 (now kills running jobs; soon lets them end).")] = None,
    memory_limit: Annotated[str | None, typer.Option(
        "--memory-limit", metavar="SIZE",
        help="Kill a job whose memory goes past SIZE (e.g. 2G); it is also reserved.")
    ] = None,
    delay: Annotated[str | None, typer.Option(
        "--delay", metavar="T", help="At least T between two job starts.")] = None,
    nice: Annotated[int | None, typer.Option(
        "--nice", metavar="N", min=-20, max=19,
        help="Run at this niceness (shoal run and its jobs on this machine).")] = None,
    colsep: Annotated[str | None, typer.Option(
        "--colsep", metavar="REGEX",
        help="Split each argument (or line given to a command) into columns {1}, {2}, ...")
    ] = None,
    arg_file: Annotated[list[str] | None, typer.Option(
        "-a", "--arg-file", metavar="FILE",
        help="Each line of FILE is an argument, as after :::: (before the other sources).")
    ] = None,
    link: Annotated[bool, typer.Option(
        "--link", "--xapply",
        help="Read the sources side by side, not crossed (a shorter one starts over); :::+ "
             "links one source to the one before it.")] = False,
    tagstring: Annotated[str | None, typer.Option(
        "--tagstring", metavar="STR",
        help="Start each output line with STR, its placeholders filled ({}, {1}, {#}); "
             "implies --tag.")] = None,
    max_args: Annotated[int | None, typer.Option(
        "-N", "--max-args", metavar="N", min=0, max=1_000_000,
        help="N arguments a job ({1} to {N}; the last job's may be fewer).")] = None,
    context_pack: Annotated[bool, typer.Option(
        "-X", help="As many arguments a job as fit in a command (64 KiB), spread over the -j "
                   "jobs when they are few; a word holding {} is repeated for each.")] = False,
    multiple_pack: Annotated[bool, typer.Option(
        "-m", help="As -X, but {} is all of a job's arguments, space-separated.")] = False,
    replace: Annotated[str | None, typer.Option(
        "-I", metavar="STR", help="STR stands for {} in the command (xargs -I).")] = None,
    null: Annotated[bool, typer.Option(
        "-0", "--null", help="Items of stdin, :::: files and -a files end with NUL, not a "
                             "newline (find -print0).")] = False,
    delimiter: Annotated[str | None, typer.Option(
        "-d", "--delimiter", metavar="DELIM",
        help="Items end with DELIM (\\t, \\0, \\x1f... as in C), not a newline.")] = None,
    workdir: Annotated[str | None, typer.Option(
        "--wd", "--workdir", metavar="DIR",
        help="Run the jobs in DIR (default: here; a wr line's cwd beats it).")] = None,
    shuffle: Annotated[bool, typer.Option(
        "--shuf", help="Run the jobs of ::: and :::: arguments in a random order ({#} counts "
                       "in it).")] = False,
    pipe: Annotated[bool, typer.Option(
        "--pipe", help="Cut stdin into blocks of whole lines, each the stdin of one run of "
                       "the command (kept in the run's state until its job succeeds).")
    ] = False,
    block: Annotated[str | None, typer.Option(
        "--block", "--block-size", metavar="SIZE",
        help="With --pipe: a block's size (default 1M; K, M, G are 1024s, k, m, g 1000s).")
    ] = None,
    header: Annotated[str | None, typer.Option(
        "--header", metavar=":",
        help="The first argument of each source (first line, of a file or stdin) is its "
             "name: {name} in the command. With --colsep, its columns name the columns.")
    ] = None,
) -> None:
    """Run every command of FILE (or stdin, or a command over arguments) on this machine, N
    at a time; no server to start.

    State is kept in .shoal/runs/NAME/ beside FILE (or $SHOAL_HOME): run a file again and what
    is done is skipped, what failed is retried. Each job's output is printed when it ends.
    Exit 0 iff every command succeeded.
    """
    for flag, value in (("--results", results), ("--joblog", joblog), ("--wd", workdir),
                        ("--halt", halt), ("--timeout", timeout),
                        ("--memory-limit", memory_limit), ("--delay", delay)):
        if value is not None and not value.strip():
            raise InputError(f"{flag}: give a value (it is empty)")
    cores = len(os.sched_getaffinity(0))
    parallel = cores if jobs is None else jobs_at_once(jobs, cores)
    choices = _Choices(line_buffer=line_buffer, tag=tag, keep_order=keep_order, quiet=quiet,
                       results=Path(results) if results is not None else None,
                       joblog=Path(joblog) if joblog is not None else None,
                       dry_run=dry_run, fresh=fresh,
                       resume=resume, resume_failed=resume_failed, timeout=timeout,
                       retries=retries, halt=halt, memory_limit=memory_limit, delay=delay,
                       nice=nice, colsep=colsep, tagstring=tagstring, max_args=max_args,
                       pack=_pack(context_pack, multiple_pack, max_args), replace=replace,
                       delimiter=_delimiter(null, delimiter),
                       header=_header(header), workdir=workdir, shuffle=shuffle,
                       block=_block(pipe, block))
    file, command, sources = _input_words(words or [], arg_file or [], link, choices)
    if file is None or command is not None or str(file) == "-" or _is_stream(file):
        given = [name for name, value in (("-r", retry), ("-1", one_only), ("-l", logfile),
                                          ("-n", loglines is not None), ("--live", live))
                 if value]
        if given:
            raise _runmaker_only(given[0])
        _run_new(file, command, sources, parallel, format, json_output, hosts, listen, choices)
    assert file is not None
    if format not in FORMATS:
        raise InputError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    ssh_hosts = _ssh_hosts(hosts)
    listen_for_hosts: str | None = None
    if ssh_hosts and listen is not None:  # where the hosts' workers join: not runmaker's
        listen_for_hosts, listen = listen, None
    if listen is not None and not jobs:
        if one_only:  # no slots of its own to count successes in: it would run nothing
            raise InputError("-1 with --listen needs -j N: N slots here, each stopping after "
                             "its first job that succeeds")
        parallel = 0  # as runmaker4-server: only the workers that join run lines
    elif one_only and not jobs:
        parallel = 1  # runmaker4 -1: one job; with -j N, one per slot
    if choices.for_arguments():
        raise InputError(f"{choices.for_arguments()[0]}: {_NEEDS_ARGUMENTS}")
    from shoal.embedded import job_defaults
    from shoal.run.inputs import from_file, scan_file

    defaults = {**job_defaults(file), **choices.job_fields()}
    # Other hosts' workers may have more memory than this machine: they say so when they join.
    memory = 0 if listen is not None or ssh_hosts else _machine_memory()
    scan = scan_file(file, format, parallel or 2**31, defaults, memory)
    options = _runfile_options(file, scan.runmaker, parallel, retry=retry, one_only=one_only,
                               logfile=logfile, loglines=loglines, live=live, listen=listen)
    if options is not None and ssh_hosts:
        raise InputError("--hosts: not for a runmaker file; give --listen and start workers "
                         "with `shoal up`")
    if options is not None:
        if choices.given():
            raise InputError(f"{choices.given()[0]}: not for a runmaker file (its lines are "
                             "claimed in the file; see docs/formats.md)")
        _run_runmaker(file, options, json_output)
    parsed = from_file(file, format, defaults, scan, choices.filling(None, parallel))
    _run_new(file, None, Sources(), parallel, format, json_output, hosts, listen_for_hosts,
             choices, parsed=parsed)


# ---- files, stdin and arguments: shoal.run --------------------------------------------------

_NEEDS_ARGUMENTS = ("for arguments (after ::: or ::::, -a, or the lines of stdin); a file of "
                    "commands has none")


def _header(text: str | None) -> bool:
    if text not in (None, ":"):
        raise InputError(f"--header: {text!r}; give ':' (the first argument or line names "
                         "each source, or each column)")
    return text is not None


def _delimiter(null: bool, text: str | None) -> bytes | None:
    from shoal.run.template import parse_delimiter

    if null and text is not None:
        raise InputError("-0 and -d: give one of them (-0 is -d '\\0')")
    return b"\0" if null else None if text is None else parse_delimiter(text)


def _joblog_path(given: Path | None) -> Path | None:
    """--joblog FILE, or GNU parallel's `+FILE` (append to FILE)."""
    return None if given is None else Path(str(given).removeprefix("+"))


def _block(pipe: bool, size: str | None) -> int | None:
    """--pipe's block size in bytes; None without --pipe."""
    if not pipe:
        if size is not None:
            raise InputError("--block: the size of --pipe's blocks; --pipe is not given")
        return None
    from shoal.run.pipe import DEFAULT_BLOCK_BYTES, parse_block

    return DEFAULT_BLOCK_BYTES if size is None else parse_block(size)


def _pipe_refusals(choices: "_Choices", command: str | None, sources: Sources,
                   hosts: str | None) -> None:
    """--pipe feeds stdin to one command, in blocks: nothing else gives it input."""
    if choices.block is None:
        return
    if command is None:
        raise InputError("--pipe: give the command that reads each block "
                         "(`... | shoal run --pipe wc -l`)")
    clashing = [flag for flag in choices.for_arguments() if flag not in ("--pipe", "--header")]
    if sources or clashing:
        raise InputError(f"--pipe: stdin is cut into blocks for the command; not with "
                         f"{clashing[0] if clashing else ':::, :::: or -a'}")
    if hosts is not None:
        raise InputError("--pipe: the blocks are kept on this machine; not with --hosts")


def _pack(context: bool, multiple: bool, max_args: int | None) -> str | None:
    """-X or -m, each of which says how many arguments a job gets, as -N does."""
    given = [flag for flag, on in (("-X", context), ("-m", multiple), ("-N", max_args is not None))
             if on]
    if len(given) > 1:
        raise InputError(f"{given[0]} and {given[1]}: give one of them")
    return given[0] if given and given[0] != "-N" else None


# Options that give a command arguments: with one of them, the first word that is not an
# option starts the command (`ls | shoal run -I % cp -p % /backup`).
_ARGUMENT_OPTIONS = frozenset({"-N", "--max-args", "-X", "-m", "-I", "-0", "--null", "-d",
                               "--delimiter", "--header", "--shuf", "--link", "--xapply", "-a",
                               "--arg-file", "--colsep", "--pipe", "--block",
                               "--block-size"})


def _option_name(word: str) -> str:
    """`--max-args=2` and `-N2` are `--max-args` and `-N`."""
    if word.startswith("--"):
        return word.partition("=")[0]
    return word[:2]


def _options_only(words: list[str], names: frozenset[str], value_options: frozenset[str]
                  ) -> bool:
    """Whether `words` are all shoal's own options, each with its value."""
    index = 0
    while index < len(words):
        word = words[index]
        if not word.startswith("-") or _option_name(word) not in names:
            return False
        index += 2 if word in value_options else 1
    return True


def _option_names(command: Any, *, flags: bool) -> frozenset[str]:
    """The names of `command`'s options (with `flags`, or only those that take a value), as
    typer made them: what tells shoal's words from the command's, kept with each option."""
    return frozenset(name for param in command.params
                     if param.param_type_name == "option" and (flags or not param.is_flag)
                     for name in (*param.opts, *param.secondary_opts))


def run_arguments(args: list[str], command: Any) -> list[str]:
    """`shoal run`'s words as GNU parallel users write them: in `shoal run -j4 gzip -9 {} :::
    *.csv` the command's own options (`-9`) are the command's, so a `--` goes before it.
    `command` is `shoal run`'s, as typer made it."""
    out = listen_value(args)  # `--listen` alone is given its value: now every one has one
    from shoal.run.template import SOURCE_MARKS, has_placeholder

    value_options = _option_names(command, flags=False)
    option_names = _option_names(command, flags=True)
    index = 0
    for_arguments = False
    while index < len(out):
        word = out[index]
        if word == "--":
            return out
        if word.startswith("-") and word != "-" and len(word) > 1:
            for_arguments = for_arguments or _option_name(word) in _ARGUMENT_OPTIONS
            if word in value_options:
                index += 1
            index += 1
            continue
        rest = out[index:]
        is_command = (for_arguments or any(mark in rest for mark in SOURCE_MARKS)
                      or " " in word or any(has_placeholder(later) for later in rest))
        # `jobs.txt --tagstring {#}`: a file, then only shoal's options, is a FILE.
        if is_command and not (os.path.exists(word)
                               and _options_only(rest[1:], option_names, value_options)):
            return [*out[:index], "--", *rest]
        return out
    return out


@dataclass
class _Choices:
    """What the options of a run of a file, stdin or arguments ask for."""

    line_buffer: bool = False
    tag: bool = False
    keep_order: bool = False
    quiet: bool = False
    results: Path | None = None
    joblog: Path | None = None
    dry_run: bool = False
    fresh: bool = False
    resume: bool = False
    resume_failed: bool = False
    timeout: str | None = None
    retries: int | None = None
    halt: str | None = None
    memory_limit: str | None = None
    delay: str | None = None
    nice: int | None = None
    colsep: str | None = None
    tagstring: str | None = None
    max_args: int | None = None
    pack: str | None = None  # -X or -m
    replace: str | None = None
    delimiter: bytes | None = None
    header: bool = False
    workdir: str | None = None
    shuffle: bool = False
    block: int | None = None  # --pipe's block size

    def given(self) -> list[str]:
        return ["--" + name.replace("_", "-") for name, value in vars(self).items()
                if value not in (None, False)]

    def job_fields(self) -> dict[str, object]:
        """Defaults for every job, under what a wr line's own options say."""
        from shoal.core.models import parse_duration, parse_memory

        fields: dict[str, object] = {}
        if self.retries is not None:
            fields["retries"] = self.retries
        if self.workdir is not None:
            directory = Path(self.workdir).absolute()
            if not directory.is_dir():
                raise InputError(f"--wd {self.workdir}: no such directory")
            fields["cwd"] = str(directory)
        if self.timeout is not None and self.timeout.endswith("%"):
            raise InputError(f"--timeout {self.timeout}: a share of the median run time, as "
                             "GNU parallel takes it, is not supported; give a time (90s, 5m)")
        for name, flag, text, parse in (
                ("time_limit_seconds", "--timeout", self.timeout, parse_duration),
                ("memory_bytes", "--memory-limit", self.memory_limit, parse_memory)):
            if text is not None:
                try:
                    fields[name] = parse(text)
                except ValueError as error:
                    raise InputError(f"{flag}: {error}") from None
        timeout = fields.get("time_limit_seconds")
        if isinstance(timeout, float | int) and not 0 < timeout < math.inf:
            raise InputError(f"--timeout {self.timeout}: give a time above 0 (90s, 5m)")
        limit = fields.get("memory_bytes")
        if isinstance(limit, int):  # said of the option, not of every line it applies to
            machine = _machine_memory()
            if limit > machine > 0:
                raise InputError(f"--memory-limit {self.memory_limit}: more than this machine "
                                 f"has ({machine} bytes)")
        return fields

    def resume_mode(self) -> str:
        chosen = [flag for flag, on in (("--fresh", self.fresh), ("--resume", self.resume),
                                        ("--resume-failed", self.resume_failed)) if on]
        if len(chosen) > 1:
            raise InputError(f"{chosen[0]} and {chosen[1]}: give one of them")
        return chosen[0].removeprefix("--") if chosen else "auto"

    def output_settings(self, json_output: bool) -> "OutputSettings":
        from shoal.run.output import GROUP, LINE, NONE, OutputSettings

        mode = NONE if self.quiet or json_output else LINE if self.line_buffer else GROUP
        return OutputSettings(mode=mode, tag=self.tag or self.tagstring is not None,
                              keep_order=self.keep_order)

    def for_arguments(self) -> list[str]:
        """The options given that fill commands from arguments (no file of commands)."""
        return [flag for flag, given in (
            ("--colsep", self.colsep is not None), ("-N", self.max_args is not None),
            (self.pack or "-X", self.pack is not None),
            ("-I", self.replace is not None), ("-0/-d", self.delimiter is not None),
            ("--header", self.header), ("--shuf", self.shuffle),
            ("--pipe", self.block is not None)) if given]

    def filling(self, command: str | None, slots: int) -> "Filling":
        """How arguments fill `command` (None: they are the commands), `slots` at once."""
        from shoal.run.inputs import Filling
        from shoal.run.template import parse_colsep, with_replace_string

        if self.tagstring is not None and "{%}" in self.tagstring:
            raise InputError("--tagstring: {%} is a job's slot, known only when it starts; "
                             "{#} (its number) or its arguments can tag it")
        if self.replace is not None:
            if command is None:
                raise InputError("-I: stands for {} in a command; none is given")
            command = with_replace_string(command, self.replace)
        colsep = None if self.colsep is None else parse_colsep(self.colsep)
        return Filling(template=command, colsep=colsep, tagstring=self.tagstring,
                       max_args=self.max_args, delimiter=self.delimiter, header=self.header,
                       shuffle=self.shuffle, pack=self.pack, slots=slots, block=self.block)

    def delay_seconds(self) -> float:
        from shoal.core.models import parse_duration

        if self.delay is None:
            return 0.0
        try:
            return parse_duration(self.delay)
        except ValueError as error:
            raise InputError(f"--delay: {error}") from None


def _input_words(words: list[str], arg_files: list[str], link: bool, choices: _Choices
                 ) -> tuple[Path | None, str | None, Sources]:
    """(a file or -, a command, the ::: sources) from the positional words. One word is a
    FILE unless it reads as a command, an option for arguments says it is one
    (`seq 9 | shoal run -N 3 echo`), or lines are piped in and it is a program
    (`ls *.txt | shoal run ./process.sh`, as xargs and GNU parallel read it)."""
    from shoal.run.template import looks_like_template, split_sources

    head, sources = split_sources(words, arg_files, link, choices.delimiter)
    if sources:
        return None, " ".join(head) if head else None, sources
    if not head:
        return None, None, sources
    word = head[0]
    if len(head) == 1 and not looks_like_template(word) and not (
            choices.for_arguments() and not os.path.exists(word) and word != "-") \
            and not (_stdin_is_piped() and _is_program(word)):
        return Path(word), None, sources
    return None, " ".join(head), sources


def _machine_memory() -> int:
    from shoal.worker.resources import machine_memory

    return machine_memory()


def _stdin_is_piped() -> bool:
    """Lines are coming on stdin: a pipe, a FIFO or a file redirected in (not a terminal,
    nor /dev/null, nor a socket that may never end)."""
    import stat

    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _is_program(word: str) -> bool:
    """A program to run (on PATH, or a path to an executable), and not a file of commands
    beside it: a readable file that is not executable stays a FILE."""
    import shutil

    if word == "-" or shutil.which(word) is None:
        return False
    return not (os.path.isfile(word) and not os.access(word, os.X_OK))


def _is_stream(file: Path) -> bool:
    from shoal.run.inputs import is_stream

    return is_stream(file)


def _run_new(file: Path | None, command: str | None, sources: Sources, parallel: int,
             fmt: str, json_output: bool, hosts: str | None, listen: str | None,
             choices: "_Choices", parsed: "RunInput | None" = None) -> None:
    """Run a file of commands, stdin's lines, or a command over arguments; exit."""
    from shoal.cli.summary import print_summary
    from shoal.embedded import job_defaults
    from shoal.run.driver import RunSettings, parse_halt, run_input
    from shoal.run.inputs import from_arguments, from_stream

    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    ssh_hosts = _ssh_hosts(hosts)
    host_listen = None
    if listen is not None:
        if not ssh_hosts:
            raise InputError("--listen: for a runmaker file, or with --hosts")
        from shoal.runfile.listen import parse_listen

        host_listen = parse_listen(listen)
    settings = RunSettings(
        parallel=parallel, output=choices.output_settings(json_output),
        bar=not json_output, halt=parse_halt(choices.halt) if choices.halt else None,
        delay=choices.delay_seconds(), resume=choices.resume_mode(),
        joblog=_joblog_path(choices.joblog),
        joblog_plus=choices.joblog is not None and str(choices.joblog).startswith("+"),
        results=choices.results, hosts=ssh_hosts, listen=host_listen)
    if parsed is not None:
        run = parsed
    else:
        if file is None and not sources and sys.stdin.isatty():
            raise InputError("no input: give a FILE, - (or a pipe) for commands on stdin, "
                             "or a command and its arguments after :::")
        defaults = {**job_defaults(Path("stdin")), **choices.job_fields()}
        if choices.colsep is not None and not sources and not command:
            raise InputError(f"--colsep: {_NEEDS_ARGUMENTS}")
        _pipe_refusals(choices, command, sources, hosts)
        filling = choices.filling(command, parallel)
        if sources:
            defaults["group"] = "arguments"
            run = from_arguments(sources, defaults, filling)
        else:
            run = from_stream(file, fmt, defaults, filling)
    resume_collection()  # the set-up is done (see shoal.core.collection.hold_collection)
    if choices.dry_run:
        from shoal.run.driver import dry_run

        asyncio.run(dry_run(run, settings.resume))
        raise typer.Exit(0)
    if choices.nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, choices.nice)
        except OSError as error:
            raise InputError(f"--nice {choices.nice}: {error.strerror or error}") from None
    report = asyncio.run(run_input(run, settings))
    print_summary(report, json_output=json_output, to_stderr=True)
    if report.interrupted:
        raise typer.Exit(130)
    if report.input_error:
        raise typer.Exit(2)
    raise typer.Exit(0 if report.succeeded else 1)


def _ssh_hosts(text: str | None) -> "list[SshHost]":
    """`--hosts a,b,c`: each [ssh://][user@]host[:port], each once."""
    if text is None:
        return []
    from shoal.provision.hosts import parse_host, unique_hosts

    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputError("--hosts: no host in it")
    for item in items:  # GNU parallel's forms that shoal has no place for
        if item == ":":
            raise InputError("--hosts: ':' is this machine, where shoal run's jobs run "
                             "already; name the other hosts only")
        if re.match(r"^\d+/", item):
            raise InputError(f"--hosts: {item!r}: a host's worker takes the cores it has; "
                             f"give the host alone ({item.split('/', 1)[1]!r})")
    return unique_hosts([parse_host(item) for item in items])


def _runmaker_only(option: str, why: str = "") -> InputError:
    """A runmaker4 option given for another input (-n is also xargs' habit: point to -N)."""
    hint = "; xargs' -n (arguments a job) is -N here" if option == "-n" else ""
    return InputError(f"{option}: applies to runmaker files only{why}{hint}")


def _runfile_options(file: Path, runmaker: bool, parallel: int, *, retry: bool,
                     one_only: bool, logfile: Path | None, loglines: int | None, live: bool,
                     listen: str | None) -> "RunfileOptions | None":
    """The runner's options for a runmaker file; None for another format (where the
    runmaker-only options are refused)."""
    given = [name for name, value in (("-r", retry), ("-1", one_only), ("-l", logfile),
                                      ("-n", loglines is not None), ("--live", live),
                                      ("--listen", listen)) if value]
    if not runmaker:
        if given:
            raise _runmaker_only(given[0], f" ({file} is not one)")
        return None
    loglines = 3 if loglines is None else loglines
    if loglines < 0:
        raise InputError("-n: must be 0 or more")
    from shoal.runfile.driver import RunfileOptions

    settings = None
    if listen is not None:
        from shoal.runfile.listen import parse_listen

        settings = parse_listen(listen)

    def emit(line: str) -> None:
        print(line, flush=True)

    return RunfileOptions(parallel=parallel, retry_failed=retry, one_only=one_only,
                          log_path=logfile, log_lines=loglines, live=emit if live else None,
                          listen=settings)


def _run_runmaker(file: Path, options: "RunfileOptions", json_output: bool) -> None:
    from rich.console import Console

    from shoal.cli.summary import print_summary
    from shoal.embedded import job_defaults
    from shoal.runfile.driver import run_runmaker_file

    resume_collection()  # the set-up is done (see shoal.core.collection.hold_collection)
    console = Console(stderr=True)
    defaults = job_defaults(file)
    if console.is_terminal and not json_output and options.live is None:
        report, found = _with_bar(file, console, lambda progress: asyncio.run(
            run_runmaker_file(file, options, defaults, progress)))
    else:
        report, found = asyncio.run(run_runmaker_file(file, options, defaults))
    print_summary(report, json_output=json_output, to_stderr=True)  # stdout: --live, --json
    _file_notes(file, found)
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if report.succeeded else 1)


def _file_notes(file: Path, found: "FileRunReport") -> None:
    def lines(numbers: list[int]) -> str:
        shown = ", ".join(str(number) for number in numbers[:20])
        return shown + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")

    if found.recovered:
        print(f"{file}: lines {lines(found.recovered)} were held by a shoal runner that is "
              "gone; set back to '.' and run again", file=sys.stderr)
    if found.unjudgeable:
        print(f"{file}: lines {lines(found.unjudgeable)} were marked running by runmaker4 (or "
              "by a shoal runner that died while claiming them): left alone; "
              f"`shoal file check {file}` lists them", file=sys.stderr)
    if found.elsewhere:
        print(f"{file}: {found.elsewhere} lines are still running elsewhere; "
              f"`shoal file wait {file}` waits for them", file=sys.stderr)


def _with_bar(file: Path, console: "Console", run: Callable[[Callable[[int, int, int], None]], T]
              ) -> T:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(file.name, total=None, failed=0)

        def progress(done: int, failed: int, total: int) -> None:
            bar.update(task, completed=done + failed, total=total, failed=failed)

        return run(progress)

"""`shoal run FILE -j N`: the embedded default. Parse, run, show progress, summarise."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from shoal.core.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.embedded import RunReport
    from shoal.formats import ParsedJob
    from shoal.provision.hosts import SshHost
    from shoal.runfile.driver import FileRunReport, RunfileOptions
    from shoal.runfile.listen import ListenSettings

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
    file: Annotated[Path, typer.Argument(help="File of commands (lines, wr or runmaker format).")],
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="Commands at once (default: all cores).")
                    ] = 0,
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
    loglines: Annotated[int, typer.Option(
        "-n", "--loglines", metavar="N",
        help="runmaker file: with -l, the last N lines of each job's output.")] = 3,
    live: Annotated[bool, typer.Option(
        "--live", help="runmaker file: print runmaker4's lines (executing, status, stdout) "
                       "instead of a progress bar.")] = False,
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="[HOST:PORT]",
        help=f"runmaker file: let workers on other hosts take its lines (default "
             f"{DEFAULT_LISTEN}); prints their join line. Lines run here only with -j N.")
    ] = None,
    hosts: Annotated[str | None, typer.Option(
        "--hosts", metavar="HOST,...",
        help="Also run the jobs on these [user@]host[:port] over SSH (GNU parallel's "
             "--sshlogin): a worker is started on each for this run and stopped after it, "
             "joined to this run on --listen (default: every address, any free port). "
             "Commands run in the same directory there.")] = None,
) -> None:
    """Run every command of FILE on this machine, N at a time; no server to start.

    State is kept in .shoal/ beside FILE (or $SHOAL_HOME): run it again and what is done is
    skipped, what failed is retried. Exit 0 iff every command succeeded.
    """
    from rich.console import Console

    from shoal.cli.summary import print_summary
    from shoal.embedded import load, run_jobs

    parallel = jobs or len(os.sched_getaffinity(0))
    if parallel < 1:
        raise InputError("-j: must be at least 1")
    if format not in FORMATS:
        raise InputError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    ssh_hosts = _ssh_hosts(hosts)
    host_listen = None
    if ssh_hosts and listen is not None:  # where the hosts' workers join: not runmaker's
        from shoal.runfile.listen import parse_listen as parse_address

        host_listen, listen = parse_address(listen), None
    if listen is not None and not jobs:
        parallel = 0  # as runmaker4-server: only the workers that join run lines
    elif one_only and not jobs:
        parallel = 1  # runmaker4 -1: one job; with -j N, one per slot
    parsed = load(file, format, parallel or 2**31)
    options = _runfile_options(file, parsed, parallel, retry=retry, one_only=one_only,
                               logfile=logfile, loglines=loglines, live=live, listen=listen)
    if options is not None and ssh_hosts:
        raise InputError("--hosts: not for a runmaker file; give --listen and start workers "
                         "with `shoal up`")
    if options is not None:
        _run_runmaker(file, options, json_output)
    console = Console(stderr=True)
    if console.is_terminal and not json_output:
        report = _run_with_bar(file, parsed, parallel, console, ssh_hosts, host_listen)
    else:
        report = asyncio.run(run_jobs(file, parsed, parallel, hosts=ssh_hosts,
                                      listen=host_listen))
    print_summary(report, json_output=json_output)
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if report.succeeded else 1)


def _run_with_bar(file: Path, parsed: list[ParsedJob], parallel: int,
                  console: Console, hosts: list[SshHost] | None = None,
                  listen: ListenSettings | None = None) -> RunReport:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from shoal.embedded import run_jobs

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(file.name, total=None, failed=0)

        def progress(done: int, failed: int, total: int) -> None:
            bar.update(task, completed=done + failed, total=total, failed=failed)

        return asyncio.run(run_jobs(file, parsed, parallel, progress, hosts=hosts or (),
                                    listen=listen))


def _ssh_hosts(text: str | None) -> list[SshHost]:
    """`--hosts a,b,c`: each [ssh://][user@]host[:port], each once."""
    if text is None:
        return []
    from shoal.provision.hosts import parse_host, unique_hosts

    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise InputError("--hosts: no host in it")
    return unique_hosts([parse_host(item) for item in items])


def _runfile_options(file: Path, parsed: list[ParsedJob], parallel: int, *, retry: bool,
                     one_only: bool, logfile: Path | None, loglines: int, live: bool,
                     listen: str | None) -> RunfileOptions | None:
    """The runner's options for a runmaker file; None for another format (where the
    runmaker-only options are refused)."""
    from shoal.embedded import is_runmaker
    from shoal.runfile.driver import RunfileOptions

    given = [name for name, value in (("-r", retry), ("-1", one_only), ("-l", logfile),
                                      ("--live", live), ("--listen", listen)) if value]
    if not is_runmaker(parsed):
        if given:
            raise InputError(f"{given[0]}: applies to runmaker files only ({file} is not one)")
        return None
    if loglines < 0:
        raise InputError("-n: must be 0 or more")
    settings = None
    if listen is not None:
        from shoal.runfile.listen import parse_listen

        settings = parse_listen(listen)

    def emit(line: str) -> None:
        print(line, flush=True)

    return RunfileOptions(parallel=parallel, retry_failed=retry, one_only=one_only,
                          log_path=logfile, log_lines=loglines, live=emit if live else None,
                          listen=settings)


def _run_runmaker(file: Path, options: RunfileOptions, json_output: bool) -> None:
    from rich.console import Console

    from shoal.cli.summary import print_summary
    from shoal.embedded import job_defaults
    from shoal.runfile.driver import run_runmaker_file

    console = Console(stderr=True)
    defaults = job_defaults(file)
    if console.is_terminal and not json_output and options.live is None:
        report, found = _with_bar(file, console, lambda progress: asyncio.run(
            run_runmaker_file(file, options, defaults, progress)))
    else:
        report, found = asyncio.run(run_runmaker_file(file, options, defaults))
    print_summary(report, json_output=json_output)
    _file_notes(file, found)
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if report.succeeded else 1)


def _file_notes(file: Path, found: FileRunReport) -> None:
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


def _with_bar(file: Path, console: Console, run: Callable[[Callable[[int, int, int], None]], T]
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

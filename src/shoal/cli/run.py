"""`shoal run FILE -j N`: the embedded default. Parse, run, show progress, summarise."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.core.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.embedded import RunReport
    from shoal.formats import ParsedJob

FORMATS = ("auto", "lines", "wr", "runmaker")


def run_command(
    file: Annotated[Path, typer.Argument(help="File of commands (lines, wr or runmaker format).")],
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="Commands at once (default: all cores).")
                    ] = 0,
    format: Annotated[str, typer.Option("--format", help="auto, lines, wr or runmaker.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
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
    parsed = load(file, format, parallel)
    console = Console(stderr=True)
    if console.is_terminal and not json_output:
        report = _run_with_bar(file, parsed, parallel, console)
    else:
        report = asyncio.run(run_jobs(file, parsed, parallel))
    print_summary(report, json_output=json_output)
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if report.succeeded else 1)


def _run_with_bar(file: Path, parsed: list[ParsedJob], parallel: int,
                  console: Console) -> RunReport:
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

        return asyncio.run(run_jobs(file, parsed, parallel, progress))

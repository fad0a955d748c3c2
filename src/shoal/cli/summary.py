"""The end-of-run summary of `shoal run`: counts, slowest jobs, failures with their stderr."""

from __future__ import annotations

import contextlib
import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.embedded import RunReport


def print_summary(report: RunReport, *, json_output: bool, to_stderr: bool = False) -> None:
    """`to_stderr`: where jobs' own output goes to stdout (JSON goes to stdout anyway).

    What jobs wrote, and their commands and reasons, are untrusted: shown sanitized as
    everywhere else (see shoal.cli.render.sanitize), so no terminal control sequence reaches
    the screen."""
    if json_output:
        print(json.dumps({**asdict(report), "succeeded": report.succeeded}, indent=2))
        return
    from rich.console import Console  # here: rich costs 40 ms to import, JSON needs none of it
    from rich.markup import escape

    from shoal.cli.render import one_line, sanitize

    console = Console(highlight=False, stderr=to_stderr)
    console.soft_wrap = not console.is_terminal  # piped, a line stays whole for what reads it
    line = (f"{report.done} done, {report.failed} failed of {report.total} "
            f"in {report.wall_seconds:.1f}s")
    if report.skipped_done:
        line += f" ({report.skipped_done} already done, skipped)"
    if report.skipped_failed:
        line += f" ({report.skipped_failed} failed before, skipped: --resume)"
    if report.not_run:
        line += f"; {report.not_run} not run"
    if report.halted:
        line += f"; stopped by {report.halted}"
    if report.input_error:
        line += "; the input stopped at a bad line"
    if report.interrupted:  # a file's run resumes by itself; stdin's and arguments' start over
        line += ("; interrupted, run it again to finish" if report.rerun_resumes
                 else "; interrupted, run it again with --resume to finish")
    console.print(f"[bold]{line}[/bold]")
    if report.slowest and report.total:
        console.print("slowest:")
        for job in report.slowest:
            console.print(f"  {job['wall_seconds']:.2f}s  {_number(job, report.numbered_by)}  "
                          f"{escape(one_line(str(job['cmd']))[:100])}")
    for failure in report.failures:
        console.print(f"[red]failed[/red] {_number(failure, report.numbered_by)} "
                      f"({escape(one_line(str(failure['reason'])))}): "
                      f"{escape(one_line(str(failure['cmd']))[:200])}")
        tail = sanitize(str(failure["stderr_tail"])).rstrip().splitlines()[-5:]
        for text in tail:
            console.print(f"    {escape(text)}")
    if report.failures_more:
        console.print(f"{report.failures_more} more failed: shoal jobs --state failed")
    if report.input_error:
        console.print(f"[red]error[/red] {escape(one_line(report.input_error))}")
    if report.failures and report.state_dir is not None:
        console.print(f"a job's whole output: shoal logs ID [--stderr]"
                      f"{escape(_found_from(report))} "
                      "(ID is the #)")


def _found_from(report: RunReport) -> str:
    """` --state-dir DIR` unless `shoal logs` here reads this run: asked as it asks (a file
    in another directory keeps its state beside it; another run may have started since)."""
    from shoal.core.errors import InputError
    from shoal.run.state import default_state_dir, resolve

    assert report.state_dir is not None
    home = Path(report.state_dir)
    here = default_state_dir()
    with contextlib.suppress(InputError):  # no run there to read
        if here is not None and resolve(here).resolve() == home.resolve():
            return ""
    return f" --state-dir {shlex.quote(str(home))}"


def _number(job: dict[str, object], unit: str) -> str:
    """`line 7 (#5)`: where the job is in its input, and its id for `shoal logs`."""
    line = job.get("line")
    return f"#{job['id']}" if line is None else f"{unit} {line} (#{job['id']})"

"""The end-of-run summary of `shoal run`: counts, slowest jobs, failures with their stderr."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from shoal.embedded import RunReport


def _clean(text: str) -> str:
    """Job output is untrusted: no terminal control sequences reach the screen."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in text)


def print_summary(report: RunReport, *, json_output: bool) -> None:
    if json_output:
        print(json.dumps({**asdict(report), "succeeded": report.succeeded}, indent=2))
        return
    console = Console(highlight=False)
    line = f"{report.done} done, {report.failed} failed of {report.total}"
    if report.skipped_done:
        line += f" ({report.skipped_done} already done, skipped)"
    if report.interrupted:
        line += "; interrupted, run again to finish"
    console.print(f"[bold]{line}[/bold] in {report.wall_seconds:.1f}s")
    if report.slowest and report.total:
        console.print("slowest:")
        for job in report.slowest:
            console.print(f"  {job['wall_seconds']:.2f}s  #{job['id']}  "
                          f"{escape(_clean(str(job['cmd'])))[:100]}")
    for failure in report.failures:
        console.print(f"[red]failed[/red] #{failure['id']} ({escape(str(failure['reason']))}): "
                      f"{escape(_clean(str(failure['cmd'])))[:200]}")
        tail = _clean(str(failure["stderr_tail"])).rstrip().splitlines()[-5:]
        for text in tail:
            console.print(f"    {escape(text)}")

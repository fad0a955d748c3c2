"""`shoal report`: plots of a group or a whole queue, or of `shoal run`'s state, as one
self-contained HTML page or a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli import session_of
from shoal.core.errors import InputError


def report_command(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option("--group", "-g", help="Only this group.")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Write a self-contained HTML page (plots inlined).")
    ] = None,
    png: Annotated[Path | None, typer.Option(
        "--png", metavar="FILE", help="Write every plot into one PNG.")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", metavar="DIR",
        help="Report on what `shoal run` kept in DIR (its .shoal/), not on a server.")] = None,
) -> None:
    """Plot run times, peak memory, throughput, jobs per worker, failures by reason and
    ensemble starts."""
    if html is None and png is None:
        raise InputError("give --html FILE and/or --png FILE")
    import matplotlib

    matplotlib.use("Agg")
    from shoal import report

    data = (report.from_state_dir(state_dir, group) if state_dir is not None
            else report.from_server(session_of(ctx).client(), group))
    if not data.jobs:
        raise InputError(f"no jobs{f' in group {group}' if group else ''} to report on")
    for path, write in ((html, report.write_html), (png, report.write_png)):
        if path is not None:
            write(data, path)
            typer.echo(f"wrote {path} ({len(data.jobs)} jobs)", err=True)

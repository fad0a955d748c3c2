"""`shoal report`: plots of a group or a whole queue, or of `shoal run`'s state, as one
self-contained HTML page or a PNG."""

from __future__ import annotations

import os
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
    outputs = [(option, path) for option, path in (("--html", html), ("--png", png))
               if path is not None]
    for option, path in outputs:  # before anything is read: a bad path wastes no plotting
        check_output_path(path, option)
    import matplotlib

    matplotlib.use("Agg")
    from shoal import report

    data = (report.from_state_dir(state_dir, group) if state_dir is not None
            else report.from_server(session_of(ctx).client(), group))
    if not data.jobs:
        raise InputError(f"no jobs{f' in group {group}' if group else ''} to report on")
    writers = {"--html": report.write_html, "--png": report.write_png}
    for option, path in outputs:
        try:
            writers[option](data, path)
        except OSError as exc:  # made unwritable since it was checked, a full disk, ...
            raise InputError(f"{option}: {path}: cannot write: {exc.strerror or exc}") from None
        typer.echo(f"wrote {path} ({len(data.jobs)} jobs)", err=True)


def check_output_path(path: Path, option: str) -> None:
    """A file `option` may write: in an existing directory, not a directory itself."""
    if path.is_dir():
        raise InputError(f"{option}: {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option}: {path}: no such directory: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option}: {path}: cannot write there (permission denied)")

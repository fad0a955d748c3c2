"""The `workers` verb: who is connected, what they offer, what they are running."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from shoal.cli import render, session_of


def workers(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON.")
    ] = False,
) -> None:
    """List the workers the server knows, with their resources in use."""
    found = session_of(ctx).client().workers()
    if as_json:
        render.print_json({"workers": found})
    elif found:
        render.print_table(*render.workers_rows(found))
    else:
        print("no workers", file=sys.stderr)

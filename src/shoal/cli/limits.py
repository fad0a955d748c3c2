"""The limit verbs: `limit` shows or sets one named concurrency limit, `limits` lists them."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from shoal.cli import JsonOption, render, session_of
from shoal.core.errors import InputError

_NEGATIVE_NUMBER = re.compile(r"^-[0-9]+$")
NEGATIVE_CAP = "N: a cap is 0 or more (0 pauses the limit's jobs)"


class LimitCommand(TyperCommand):
    """`shoal limit NAME -1`: a negative number where the cap goes would be read as an
    unknown option; it is a cap, and a cap cannot be negative."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        positional = 0
        for word in args:
            if word == "--":
                break
            if _NEGATIVE_NUMBER.match(word) and positional == 1:
                raise InputError(NEGATIVE_CAP)
            if not word.startswith("-"):
                positional += 1
        return super().parse_args(ctx, args)


def limit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The limit's name.")],
    cap: Annotated[int | None, typer.Argument(
        metavar="[N]", show_default=False,
        help="How many of its jobs may run at once; 0 pauses them.")] = None,
    unset: Annotated[bool, typer.Option(
        "--unset", help="Remove the cap: its jobs run as resources allow.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Show a concurrency limit, or set its cap (0 pauses its jobs)."""
    if cap is not None and unset:
        raise InputError("give N or --unset, not both")
    if cap is not None and cap < 0:
        raise InputError(NEGATIVE_CAP)
    check_limit_name(name)
    client = session_of(ctx).client()
    if unset or cap is not None:
        answer = client.set_limit(name, cap)
    else:
        answer = find_limit(client.limits(), name)
    if as_json:
        render.print_json(answer)
    else:
        print(render.describe_limit(answer))


def check_limit_name(name: str) -> None:
    """Refuse here, in the user's terms, a name the server would refuse by its URL pattern."""
    from shoal.core.models import LIMIT_RE

    base, colon, cap = name.partition(":")
    if colon and LIMIT_RE.match(name):  # the add-time NAME:N form
        raise InputError(f"NAME: {name!r} has a cap in it; give it apart: "
                         f"shoal limit {base} {cap}")
    if not LIMIT_RE.match(name) or name in (".", ".."):
        raise InputError(f"NAME: {name!r} is not a limit name "
                         "(1-128 letters, digits and _.@+-)")


def find_limit(known: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The limit called `name`. One the server does not list has no cap and no jobs yet:
    a limit exists once a job names it or a cap is set, so this is not an error."""
    for entry in known:
        if entry.get("name") == name:
            return entry
    return {"name": name, "cap": None, "running": 0, "queued": 0}


def limits(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the concurrency limits: cap, running and queued jobs of each."""
    found = session_of(ctx).client().limits()
    if as_json:
        render.print_json({"limits": found})
    elif found:
        render.print_table(*render.limits_rows(found))
    else:
        print("no limits", file=sys.stderr)

"""`shoal token create|list|revoke` and `shoal whoami`: who may use the server, and as what."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.cli import JsonOption, render, session_of

token_app = typer.Typer(name="token", help="Create, list and revoke access tokens (admin).",
                        no_args_is_help=True, add_completion=False)


@token_app.command("create")
def create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(
        metavar="admin|user|worker|metrics",
        help="user: their own jobs; admin: everything; worker: the worker channel only; "
             "metrics: /metrics only (for Prometheus).")],
    name: Annotated[str, typer.Option(help="Who holds it; jobs belong to this name.")],
    as_json: JsonOption = False,
) -> None:
    """Make a token. It is shown once: the server keeps only its hash."""
    answer = session_of(ctx).client().create_token(role, name)
    if as_json:
        render.print_json(answer)
        return
    print(answer["token"])
    connection = answer.get("connection")
    if connection:
        typer.echo(_hint(answer["role"], answer["name"], connection), err=True)


def _hint(role: str, name: str, connection: str) -> str:
    """What to do with a new token elsewhere, in the safe form for its role: a worker's join
    string in a private file or the environment (never on a command line, where `ps` shows
    it), a metrics token in Prometheus' credentials file (it reads /metrics only)."""
    if role == "worker":
        return (f"\nOn the worker's host, copy this join string into a file only you can "
                f"read (chmod 600):\n  {connection}\nthen: shoal worker --join-file FILE "
                "(or put it in SHOAL_JOIN; not on the command line, which ps shows)")
    if role == "metrics":
        return ("\nThis token reads /metrics only: give it to Prometheus as its credentials "
                "file\n(authorization: credentials_file; see docs/dashboard.md, Metrics).")
    return f"\nOn another host, this is all {name} needs:\n  export SHOAL_SERVER='{connection}'"


@token_app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every token made, live or revoked (never the secret itself)."""
    listing = session_of(ctx).client().tokens()
    if as_json:
        render.print_json({"tokens": listing})
        return
    rows = [[t["name"], t["role"], render.format_time(t["created_at"]),
             render.format_time(t["revoked_at"]) if t["revoked_at"] else "-"] for t in listing]
    render.print_table(["NAME", "ROLE", "CREATED", "REVOKED"], rows)


@token_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a token now: its next request is refused, and a worker using it is cut off."""
    answer = session_of(ctx).client().revoke_token(name)
    if as_json:
        render.print_json(answer)
    else:
        print(f"revoked {answer['name']} ({answer['role']})")


def whoami(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the name and role of the token in use."""
    answer = session_of(ctx).client().whoami()
    if as_json:
        render.print_json(answer)
    else:
        print(f"{answer['name']} ({answer['role']})")

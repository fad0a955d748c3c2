"""The verbs that look after the server itself: `drain`, `backup`, and `server stop|info`.

A server that has exited is one that no longer answers, or one that answers with a later
`started_at`: a supervisor (systemd, a loop in a script) may have started the next one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from shoal.cli import JsonOption, render, session_of
from shoal.core.errors import ConnectError, InputError, ShoalError

if TYPE_CHECKING:
    from shoal.client import Client

DRAIN_POLL_SECONDS = 0.5
STOP_POLL_SECONDS = 0.2
STOP_WAIT_SECONDS = 15.0
MiB = 1024**2



# ---- drain ----------------------------------------------------------------------------


def drain(
    ctx: typer.Context,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Return at once; the server stops by itself later.")] = False,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", show_default=False,
        help="Give up waiting after this long (exit 1); the server keeps draining.")] = None,
) -> None:
    """Let running jobs finish, start no new one, then stop the server.

    Waits, showing how many jobs still run, until the server has stopped.
    """
    if no_wait and timeout is not None:
        raise InputError("give --no-wait or --timeout, not both")
    if timeout is not None and not timeout > 0:
        raise InputError("--timeout: must be more than 0 seconds")
    client = session_of(ctx).client()
    started_at = client.server_info().get("started_at")
    running = int(client.drain().get("running", 0))
    if no_wait:
        print(f"server draining: {render.plural(running, 'job')} running; "
              "it stops once they have ended")
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    display = DrainDisplay()
    display.update(running)
    try:
        stopped = wait_until_stopped(client, started_at, deadline, DRAIN_POLL_SECONDS,
                                     lambda info: display.update(int(info.get("running", 0))))
    finally:
        display.finish()
    if not stopped:
        raise ShoalError(f"the server is still draining after {render.format_duration(timeout)}"
                         f", {render.plural(display.running, 'job')} running; it stops once "
                         "they have ended")
    wait_for_local_exit(client, time.monotonic() + STOP_WAIT_SECONDS)
    print("server drained and stopped")


class DrainDisplay:
    """How many jobs still run: one line rewritten in place on a terminal; elsewhere a line
    when the count changes, at most every PLAIN_INTERVAL seconds."""

    PLAIN_INTERVAL = 5.0

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.running = 0
        self._shown: int | None = None
        self._shown_at = float("-inf")

    def update(self, running: int) -> None:
        self.running = running
        if running == self._shown:
            return
        line = f"draining: {render.plural(running, 'job')} running"
        if self.terminal:
            self.stream.write(f"\r\x1b[K{line}")
        elif time.monotonic() - self._shown_at >= self.PLAIN_INTERVAL:
            self.stream.write(line + "\n")
        else:
            return
        self.stream.flush()
        self._shown, self._shown_at = running, time.monotonic()

    def finish(self) -> None:
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()


def wait_until_stopped(client: Client, started_at: object, deadline: float | None,
                       interval: float,
                       on_answer: Callable[[dict[str, Any]], None] | None = None) -> bool:
    """Ask the server how it is every `interval` seconds until it has exited: True; or
    until `deadline` (a time.monotonic() value) passes: False."""
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            # Near the deadline, a server too busy to answer counts as gone.
            info = client.server_info(
                timeout=None if remaining is None else max(min(remaining, client.timeout), 0.1))
        except ConnectError:
            return True
        if info.get("started_at") != started_at:
            return True
        if on_answer is not None:
            on_answer(info)
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_local_exit(client: Client, deadline: float) -> None:
    """A server of this host's $SHOAL_HOME (its server.json names the client's address)
    stops answering before its process has sealed the database and exited: wait until it
    lets go of the home's lock, so that a server started next on the home finds it free."""
    import os

    from shoal.home import LOCK_FILE, read_connection_file, shoal_home, try_lock_home

    home = shoal_home()
    try:
        written = read_connection_file(home)
    except ShoalError:
        return
    if written is None or written.url != client.url or not (home / LOCK_FILE).exists():
        return
    while time.monotonic() < deadline:
        held = try_lock_home(home)
        if held is not None:
            os.close(held)
            return
        time.sleep(STOP_POLL_SECONDS)


# ---- backup ---------------------------------------------------------------------------


def backup(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(metavar="PATH", help="Where to write the copy.")],
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists.")] = False,
) -> None:
    """Copy the server's database to PATH while it keeps serving.

    A server started with that file as $SHOAL_HOME/shoal.db carries on from the copy.
    """
    from shoal.client import check_backup_path

    target = Path(path)
    if not force and target.exists() and not target.is_dir():
        raise InputError(f"{target}: already exists (--force replaces it)")
    check_backup_path(target, overwrite=force)  # before asking the server for anything
    client = session_of(ctx).client()
    jobs = int(client.server_info().get("jobs", 0))
    size = client.backup(target, overwrite=force)
    print(f"backup of {render.plural(jobs, 'job')} written to {render.one_line(path)} "
          f"({size / MiB:.1f} MiB)")


# ---- server stop, server info ---------------------------------------------------------


def stop_server(ctx: typer.Context) -> None:
    """Stop the server now. Workers keep running their jobs and report them to the next
    server started on the same $SHOAL_HOME."""
    client = session_of(ctx).client()
    started_at = client.server_info().get("started_at")
    client.stop_server()
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    if not wait_until_stopped(client, started_at, deadline, STOP_POLL_SECONDS):
        raise ShoalError(f"the server at {client.url} still answers "
                         f"{STOP_WAIT_SECONDS:g}s after being asked to stop")
    wait_for_local_exit(client, deadline)
    print("server stopped")


def server_info(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the server's version, state, uptime and counts."""
    client = session_of(ctx).client()
    info = client.server_info()
    if as_json:
        render.print_json(info)
        return
    color = render.use_color(sys.stdout)
    for label, text in server_fields(info, client.url):
        if label == "store" and info.get("store_error"):
            text = render.paint(text, "1;31", color=color)
        elif label == "state" and info.get("draining"):
            text = render.paint(text, "33", color=color)
        print(f"{label:<9} {text}")


def server_fields(info: dict[str, Any], url: str) -> list[tuple[str, str]]:
    started_at = info.get("started_at")
    started = render.format_time(started_at)
    if started_at is not None:
        started += f" ({render.format_ago(started_at)})"
    return [
        ("server", render.one_line(url)),
        ("version", render.text_cell(info.get("version"))),
        ("state", "draining" if info.get("draining") else "serving"),
        ("started", started),
        ("jobs", _job_counts(info)),
        ("workers", str(info.get("workers", 0))),
        *([("database", render.format_bytes(info["database_bytes"]))]
          if isinstance(info.get("database_bytes"), int) else []),
        ("store", render.one_line(info.get("store_error") or "ok")),
    ]


def _job_counts(info: dict[str, Any]) -> str:
    """All jobs; then, from a server that counts them apart, the live ones (held in memory
    but for the backlog) and the ended ones (on disk only)."""
    counts = f"{info.get('jobs', 0):,}"
    if not all(isinstance(info.get(key), int)
               for key in ("live_jobs", "history_jobs", "backlog_jobs")):
        return f"{counts}, {info.get('running', 0):,} running"
    return (f"{counts}: {info['live_jobs']:,} live ({info.get('running', 0):,} running, "
            f"{info['backlog_jobs']:,} in the backlog), {info['history_jobs']:,} ended")


# `shoal server stop` and `shoal server info`; any other `shoal server ...` runs a server
# (main.py tells them apart).
server_app = typer.Typer(add_completion=False)
server_app.command("stop")(stop_server)
server_app.command("info")(server_info)
SERVER_SUBCOMMANDS = ("stop", "info")

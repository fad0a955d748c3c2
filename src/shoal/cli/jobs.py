"""The job verbs: status, jobs, wait, logs, kill, retry, rm (add is in cli/add.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli import JsonOption, StateDirOption, render, session_of
from shoal.cli.errors import EXIT_JOB_FAILED, EXIT_OK
from shoal.core.errors import ConnectError, InputError, NotFound, StoreUnavailable

if TYPE_CHECKING:
    from shoal.client import Client

# `shoal wait` long-polls the server; `logs --follow` polls more often, because output can
# grow without any job changing state.
WAIT_POLL_SECONDS = 25.0
FOLLOW_POLL_SECONDS = 2.0
FOLLOW_LIVE_SECONDS = 0.5  # between reads of a running job's output
MIN_POLL_INTERVAL = 0.25
# How long `wait` rides out a server that is restarting before giving up.
RECONNECT_SECONDS = 60.0
RECONNECT_DELAY = 1.0
JOBS_PAGE_SIZE = 1_000  # the first page prints at once


GroupOption = Annotated[str | None, typer.Option("--group", "-g", help="Only this group.")]
IdsArgument = Annotated[list[int] | None, typer.Argument(metavar="[ID]...", show_default=False)]


# ---- looking -------------------------------------------------------------------------


def status(
    ctx: typer.Context,
    job_id: Annotated[int | None, typer.Argument(metavar="[ID]", show_default=False)] = None,
    group: GroupOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Counts of jobs per group and state; with ID, that job in detail."""
    client = session_of(ctx).reader(state_dir)
    if job_id is not None:
        if group is not None:
            raise InputError("give an ID or --group, not both")
        job = client.job(job_id)
        if as_json:
            render.print_json(job)
        else:
            render.print_job(job)
        return
    answer = client.status(group=group)
    if as_json:
        render.print_json(answer)
    elif not any(answer.get("totals", {}).values()):
        where = "" if group is None else f" in group {render.one_line(group)}"
        print(f"no jobs{where}", file=sys.stderr)
    else:
        render.print_table(*render.status_rows(answer))


def check_state(state: str | None) -> str | None:
    if state is not None and state not in render.STATES:
        raise typer.BadParameter(f"{state!r} is not one of {', '.join(render.STATES)}")
    return state


def check_states(values: list[str] | None) -> list[str] | None:
    """`--state` may be given several times, or as a comma list."""
    states = [part.strip() for value in values or [] for part in value.split(",")]
    for state in states:
        check_state(state)
    return states or None


def jobs(
    ctx: typer.Context,
    state: Annotated[list[str] | None, typer.Option(
        "--state", "-s", callback=check_states,
        help="Only jobs in these states (repeat, or a comma list).")] = None,
    group: GroupOption = None,
    name: Annotated[str | None, typer.Option(help="Only jobs of this name.")] = None,
    cmd: Annotated[str | None, typer.Option(
        "--cmd", help="Only jobs whose command contains this text.")] = None,
    worker: Annotated[str | None, typer.Option(help="Only jobs on this worker.")] = None,
    exit_code: Annotated[int | None, typer.Option(
        "--exit-code", help="Only jobs that ended with this exit code.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="The first N that match.")] = None,
    last: Annotated[int | None, typer.Option(
        "--last", min=1, help="The last N that match (the newest), oldest first.")] = None,
    why: Annotated[bool, typer.Option(
        "--why", help="Show why each waiting or queued job is not running.")] = False,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """List jobs, oldest first. The first page prints at once; the rest follow as they
    come, so a listing of millions starts at once and holds one page in memory."""
    if limit is not None and last is not None:
        raise InputError("--limit and --last: give one of them")
    filters: dict[str, Any] = {"state": state, "group": group, "name": name, "cmd": cmd,
               "worker": worker,
               "exit_code": exit_code}
    client = session_of(ctx).reader(state_dir)
    if last is not None:  # the newest N, shown oldest first: few enough to hold
        found = list(client.jobs(limit=last, newest_first=True, **filters))[::-1]
        pages: Iterable[list[dict[str, Any]]] = [found] if found else []
    else:
        pages = _pages(client.jobs(limit=limit, page_size=JOBS_PAGE_SIZE, **filters))
    if as_json:
        _print_json_stream(pages)
        return
    widths: list[int] = []
    for page in pages:
        widths = render.print_table(*render.jobs_rows(page, why=why), widths=widths,
                                    with_header=not widths)
    if not widths:
        print("no jobs", file=sys.stderr)


def _pages(jobs: Iterator[dict[str, Any]], size: int = JOBS_PAGE_SIZE
           ) -> Iterator[list[dict[str, Any]]]:
    page: list[dict[str, Any]] = []
    for job in jobs:
        page.append(job)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _print_json_stream(pages: Iterable[list[dict[str, Any]]]) -> None:
    """`{"jobs": [...], "total": N}`, written as the pages come."""
    out = sys.stdout
    out.write('{"jobs": [')
    total = 0
    for page in pages:
        for job in page:
            out.write((",\n" if total else "\n") + json.dumps(job, sort_keys=True))
            total += 1
        out.flush()
    out.write(f'\n], "total": {total}}}\n')


def wait(ctx: typer.Context, group: GroupOption = None) -> None:
    """Wait until every job (of a group) has ended.

    Exit 0 iff all are done, 1 if any failed or was cancelled.
    """
    client = session_of(ctx).client()
    answer = client.status(group=group)
    counts: dict[str, int] = answer.get("totals", {})
    if not any(counts.values()):
        if group is not None:
            raise NotFound(f"no jobs in group {group!r}")
        print("no jobs", file=sys.stderr)
        return
    display = render.WaitDisplay()
    try:
        while not all_ended(counts):
            display.update(counts)
            answer = next_status(client, group=group, since=answer["version"])
            counts = answer.get("totals", {})
    finally:
        display.finish(counts)
    unsuccessful = counts.get("failed", 0) + counts.get("cancelled", 0)
    raise typer.Exit(EXIT_JOB_FAILED if unsuccessful else EXIT_OK)


def all_ended(counts: dict[str, int]) -> bool:
    return all(state in render.FINAL_STATES for state, count in counts.items() if count)


def next_status(client: Client, *, group: str | None, since: int) -> dict[str, Any]:
    """The next status after version `since` (long poll), riding out a server restart."""
    started = time.monotonic()
    while True:
        try:
            answer = client.status(group=group, wait=WAIT_POLL_SECONDS, since=since)
        except (ConnectError, StoreUnavailable):
            if time.monotonic() - started > RECONNECT_SECONDS:
                raise
            time.sleep(RECONNECT_DELAY)
            continue
        # A busy server changes version every tick; the display needs no more than this.
        time.sleep(max(0.0, MIN_POLL_INTERVAL - (time.monotonic() - started)))
        return answer


def logs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(metavar="ID")],
    stderr: Annotated[bool, typer.Option("--stderr", help="Standard error, not output.")
    ] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", "-F",
        help="Print output as it is written, until the job ends.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Print a job's output: all of it once it has ended, what there is so far while it runs.

    When the output was too big to keep whole, its beginning and end are printed, with a
    note on stderr of how much is missing between them.
    """
    client = session_of(ctx).reader(state_dir)
    stream = "stderr" if stderr else "stdout"
    terminal = sys.stdout.isatty()
    line_open = False  # the last text printed did not end its line

    def show(piece: str | int) -> None:
        nonlocal line_open
        if isinstance(piece, int):
            if line_open:  # the kept head's last line is cut: not joined to the tail's first
                sys.stdout.write("\n")
                line_open = False
            sys.stdout.flush()
            print(render.omitted_marker(piece), file=sys.stderr, flush=True)
        elif piece:  # job output is untrusted: never raw onto a terminal
            sys.stdout.write(render.sanitize(piece) if terminal else piece)
            line_open = not piece.endswith("\n")

    position = 0  # bytes of the stream printed so far
    version = client.status()["version"] if follow else None
    while True:
        # A running job's output comes live from its worker, from where we are.
        log = client.logs(job_id, stream, offset=position)
        while log.get("live"):
            if log["data"]:
                show(log["data"])
                sys.stdout.flush()
            position = max(position, int(log["next_offset"]))
            if position >= int(log.get("total_bytes", 0)) or not log["data"]:
                break
            log = client.logs(job_id, stream, offset=position)
        if not log.get("live"):  # not running (any more): what was kept, from where we are
            pieces, position = render.unseen_output(log, position)
            for piece in pieces:
                show(piece)
        sys.stdout.flush()
        if version is None or log["state"] in render.FINAL_STATES:
            return
        if log.get("live"):
            time.sleep(FOLLOW_LIVE_SECONDS)
        else:  # waiting to start: wake when something changes
            version = client.status(wait=FOLLOW_POLL_SECONDS, since=version)["version"]


# ---- acting ---------------------------------------------------------------------------


def act(ctx: typer.Context, action: str, ids: list[int] | None, group: str | None,
        as_json: bool, outcome: str) -> None:
    """kill, retry or remove: by ids or by group."""
    if bool(ids) == (group is not None):
        raise InputError("give job IDs or --group (not both)")
    client = session_of(ctx).client()
    answer = getattr(client, action)(ids=ids or None, group=group)
    if as_json:
        render.print_json(answer)
    else:
        print(f"{render.plural(answer['affected'], 'job')} {outcome}")


def kill(ctx: typer.Context, ids: IdsArgument = None, group: GroupOption = None,
         as_json: JsonOption = False) -> None:
    """Cancel jobs: not yet running ones at once; running ones are killed."""
    act(ctx, "kill", ids, group, as_json, "killed")


def retry(ctx: typer.Context, ids: IdsArgument = None, group: GroupOption = None,
          as_json: JsonOption = False) -> None:
    """Queue failed and cancelled jobs again (others are left alone)."""
    act(ctx, "retry", ids, group, as_json, "queued again")


def remove(
    ctx: typer.Context, ids: IdsArgument = None, group: GroupOption = None,
    state: Annotated[list[str] | None, typer.Option(
        "--state", "-s", callback=check_states,
        help="Ended jobs in these states (done, failed, cancelled), in bulk.")] = None,
    before: Annotated[str | None, typer.Option(
        "--before", metavar="AGE", help="With --state: only those that ended more than AGE "
        "ago (e.g. 30d, 12h).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Remove jobs that are not running, with their history: by IDs, a group, or ended jobs
    in bulk (--state done --before 30d)."""
    if state is None:
        if before is not None:
            raise InputError("--before goes with --state (e.g. --state done --before 30d)")
        act(ctx, "remove", ids, group, as_json, "removed")
        return
    if ids:
        raise InputError("--state removes in bulk: give it without job IDs")
    from shoal.core.models import parse_duration

    try:
        ended_before = time.time() - parse_duration(before) if before is not None else None
    except ValueError as exc:
        raise InputError(f"--before: {exc}") from None
    answer = session_of(ctx).client().purge(state, ended_before=ended_before, group=group)
    if as_json:
        render.print_json(answer)
    else:
        print(f"{render.plural(answer['affected'], 'job')} removed")

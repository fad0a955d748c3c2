"""`shoal mod`: change jobs after adding them (wr's `mod`), all of them or none."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.cli import JsonOption, render, session_of
from shoal.cli.add import job_defaults
from shoal.cli.jobs import GroupOption, IdsArgument
from shoal.core.errors import InputError


def modify(
    ctx: typer.Context,
    ids: IdsArgument = None,
    group: GroupOption = None,
    new_group: Annotated[str | None, typer.Option(
        "--new-group", help="Move the jobs to this group.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    retries: Annotated[int | None, typer.Option(help="Retries after a failure.")] = None,
    cores: Annotated[int | None, typer.Option(help="Cores needed.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory needed, e.g. 4G.")] = None,
    gpus: Annotated[int | None, typer.Option(metavar="N", help="GPUs needed.")] = None,
    resource: Annotated[list[str] | None, typer.Option(
        metavar="NAME=N", help="Named resources needed (replaces them all).")] = None,
    run_time: Annotated[str | None, typer.Option(
        "--time", help="Expected run time, e.g. 30m.")] = None,
    time_limit: Annotated[str | None, typer.Option(
        "--time-limit", help="Kill it after this long.")] = None,
    after: Annotated[list[str] | None, typer.Option(
        metavar="ID|group:G", help="Wait for these (replaces the dependencies).")] = None,
    limit: Annotated[list[str] | None, typer.Option(
        metavar="NAME[:N]", help="Count against these limits (replaces them all).")] = None,
    env: Annotated[list[str] | None, typer.Option(
        metavar="K=V", help="The environment (replaces it all).")] = None,
    on: Annotated[str | None, typer.Option(metavar="WORKER", help="Run only there.")] = None,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Change jobs that are not running: by IDs (none may be running), or a group's members
    that are waiting, queued, delayed, failed or cancelled. All change, or none does."""
    if bool(ids) == (group is not None):
        raise InputError("give job IDs or --group (not both)")
    changes = job_defaults(
        group=new_group, priority=priority, retries=retries, cores=cores, memory=memory,
        run_time=run_time, time_limit=time_limit, gpus=gpus, resources=resource, after=after,
        limits=limit, env=env, on_worker=on, name=name)
    changes.pop("cwd")
    if not changes:
        raise InputError("nothing to change: give at least one option (see --help)")
    answer = session_of(ctx).client().modify(ids=ids or None, group=group, changes=changes)
    if as_json:
        render.print_json(answer)
    else:
        print(f"{render.plural(answer['affected'], 'job')} changed")

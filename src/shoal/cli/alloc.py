"""`shoal alloc`: allocation queues, through which the server starts workers on a cluster
engine as queued jobs need them (Slurm, or any engine with the user's own commands)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from shoal.cli import JsonOption, render, session_of
from shoal.core.errors import InputError
from shoal.core.models import parse_duration, parse_memory

alloc_app = typer.Typer(name="alloc", no_args_is_help=True, add_completion=False,
                        help="Start workers through a cluster engine as queued jobs need "
                             "them: allocation queues (Slurm, or your engine's commands).")
add_app = typer.Typer(name="add", no_args_is_help=True, add_completion=False,
                      help="Add an allocation queue.")
alloc_app.add_typer(add_app)

# Everything after `--` is the engine's: `shoal alloc add slurm ... -- --partition=p1`.
_ENGINE_ARGS = {"allow_interspersed_args": False}

MaxWorkers = Annotated[int, typer.Option(
    "--max-workers", metavar="N", help="Workers queued or running at most, all allocations "
                                       "together.")]
WorkersPerAlloc = Annotated[int, typer.Option(
    "--workers-per-alloc", metavar="K",
    help="Workers in one allocation at most (one a node); fewer when fewer are needed.")]
TimeLimit = Annotated[str, typer.Option(
    "--time-limit", metavar="DURATION",
    help="Each allocation's wall time, e.g. 1h. A job whose --time does not fit in it "
         "(less a minute for the worker to start) is never given to its workers.")]
IdleTimeout = Annotated[str, typer.Option(
    "--idle-timeout", metavar="DURATION",
    help="A worker with nothing to run for this long exits, ending its allocation.")]
Backlog = Annotated[int, typer.Option(
    "--backlog", metavar="B", help="Allocations waiting in the engine's queue at most.")]
Cores = Annotated[int | None, typer.Option(
    "--cores", metavar="C", help="Cores each worker offers (and, for Slurm, "
                                 "--cpus-per-task). Default: what its node has.")]
Memory = Annotated[str | None, typer.Option(
    "--memory", metavar="M", help="Memory each worker offers, e.g. 16G (Slurm: --mem).")]
Gpus = Annotated[int | None, typer.Option(
    "--gpus", metavar="G", help="GPUs each worker offers (Slurm: --gpus-per-node).")]
Name = Annotated[str | None, typer.Option(
    "--name", metavar="Q", help="The queue's name (default: PROVIDER-N).")]
EngineArgs = Annotated[list[str] | None, typer.Argument(
    metavar="[-- ENGINE ARGS...]", show_default=False,
    help="Passed to the engine untouched: sbatch's arguments, or your submit command's.")]


def _duration(option: str, text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None
    if not 0 < seconds <= 366 * 86400:
        raise InputError(f"{option}: must be more than 0 and at most a year")
    return seconds


def _settings(max_workers: int, workers_per_alloc: int, time_limit: str, idle_timeout: str,
              backlog: int, cores: int | None, memory: str | None, gpus: int | None,
              engine_args: list[str] | None) -> dict[str, Any]:
    if max_workers < 1:
        raise InputError("--max-workers: must be at least 1")
    if workers_per_alloc < 1:
        raise InputError("--workers-per-alloc: must be at least 1")
    if workers_per_alloc > max_workers:
        raise InputError("--workers-per-alloc: more than --max-workers")
    if backlog < 1:
        raise InputError("--backlog: must be at least 1")
    if cores is not None and cores < 1:
        raise InputError("--cores: must be at least 1")
    if gpus is not None and gpus < 0:
        raise InputError("--gpus: must be 0 or more")
    memory_bytes = None
    if memory is not None:
        try:
            memory_bytes = parse_memory(memory)
        except ValueError as exc:
            raise InputError(f"--memory: {exc}") from None
        if memory_bytes < 1 << 20:
            raise InputError("--memory: at least 1M")
    return {"max_workers": max_workers, "workers_per_alloc": workers_per_alloc,
            "time_limit_seconds": _duration("--time-limit", time_limit),
            "idle_timeout_seconds": _duration("--idle-timeout", idle_timeout),
            "backlog": backlog, "cores": cores, "memory_bytes": memory_bytes, "gpus": gpus,
            "engine_args": list(engine_args or [])}


def _add(ctx: typer.Context, provider: str, name: str | None, settings: dict[str, Any],
         as_json: bool) -> None:
    body = {"provider": provider, "name": name, **settings}
    answer = session_of(ctx).client()._request("POST", "/alloc", json=body)
    if as_json:
        render.print_json(answer)
    else:
        print(f"allocation queue {answer['name']} added "
              f"({answer['provider']}, at most {answer['max_workers']} workers)")


@add_app.command("slurm", context_settings=_ENGINE_ARGS)
def add_slurm(
    ctx: typer.Context,
    max_workers: MaxWorkers,
    time_limit: TimeLimit,
    engine_args: EngineArgs = None,
    workers_per_alloc: WorkersPerAlloc = 1,
    idle_timeout: IdleTimeout = "5m",
    backlog: Backlog = 1,
    cores: Cores = None,
    memory: Memory = None,
    gpus: Gpus = None,
    name: Name = None,
    as_json: JsonOption = False,
) -> None:
    """Start workers through Slurm: sbatch a worker per node as queued jobs need them.

    The server runs sbatch, squeue and scancel on its host; the allocations' files are in
    $SHOAL_HOME/alloc/QUEUE/N/ there, on a file system the nodes share.
    """
    _add(ctx, "slurm", name, _settings(max_workers, workers_per_alloc, time_limit,
                                       idle_timeout, backlog, cores, memory, gpus,
                                       engine_args), as_json)


@add_app.command("command", context_settings=_ENGINE_ARGS)
def add_command(
    ctx: typer.Context,
    submit: Annotated[str, typer.Option(
        "--submit", metavar="CMD",
        help="Submits an allocation; prints its id as its last line. Sees SHOAL_WORKERS, "
             "SHOAL_WORKER_COMMAND, SHOAL_ALLOC_DIR, ... (docs/deployment.md).")],
    status: Annotated[str, typer.Option(
        "--status", metavar="CMD",
        help="Given the id as $1: prints queued, running, finished or failed.")],
    cancel: Annotated[str, typer.Option(
        "--cancel", metavar="CMD", help="Given the id as $1: cancels the allocation.")],
    max_workers: MaxWorkers,
    time_limit: TimeLimit,
    engine_args: EngineArgs = None,
    workers_per_alloc: WorkersPerAlloc = 1,
    idle_timeout: IdleTimeout = "5m",
    backlog: Backlog = 1,
    cores: Cores = None,
    memory: Memory = None,
    gpus: Gpus = None,
    name: Name = None,
    as_json: JsonOption = False,
) -> None:
    """Start workers through any engine with your own submit, status and cancel commands
    (PBS, LSF, SGE, HTCondor, a cloud API). Each runs under bash on the server's host."""
    for option, value in (("--submit", submit), ("--status", status), ("--cancel", cancel)):
        if not value.strip():
            raise InputError(f"{option}: must not be empty")
    settings = _settings(max_workers, workers_per_alloc, time_limit, idle_timeout, backlog,
                         cores, memory, gpus, engine_args)
    settings["commands"] = {"submit": submit, "status": status, "cancel": cancel}
    _add(ctx, "command", name, settings, as_json)


QueueArg = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.")]


def _check_name(name: str) -> str:
    from shoal.server.autoscale import QUEUE_NAME_RE, QUEUE_NAME_RULE

    if not QUEUE_NAME_RE.match(name):
        raise InputError(f"QUEUE: {name!r} is not a queue name ({QUEUE_NAME_RULE})")
    return name


@alloc_app.command("list")
def list_queues(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the allocation queues."""
    queues = session_of(ctx).client()._request("GET", "/alloc")["queues"]
    if as_json:
        render.print_json({"queues": queues})
        return
    if not queues:
        print("no allocation queues", file=sys.stderr)
        return
    render.print_table(
        ["NAME", "PROVIDER", "STATE", "WORKERS", "QUEUED", "RUNNING", "ENDED", "TIME LIMIT",
         "ARGS"],
        [[render.one_line(q["name"]), q["provider"],
          q["state"], f"{q['workers']}/{q['max_workers']}", str(q["allocations"]["queued"]),
          str(q["allocations"]["running"]),
          str(q["allocations"]["finished"] + q["allocations"]["failed"]),
          render.format_duration(q["time_limit_seconds"]),
          render.one_line(" ".join(q["engine_args"]))] for q in queues])


@alloc_app.command("info")
def info(ctx: typer.Context, name: QueueArg, as_json: JsonOption = False) -> None:
    """Show a queue: its settings, its allocations and what happened to it."""
    from urllib.parse import quote

    answer = session_of(ctx).client()._request("GET", f"/alloc/{quote(_check_name(name))}")
    if as_json:
        render.print_json(answer)
        return
    state = answer["state"] + (f": {answer['paused_reason']}" if answer["paused_reason"]
                               else "")
    print(f"queue {render.one_line(answer['name'])} ({answer['provider']}), {state}")
    print(f"  workers: at most {answer['max_workers']}, {answer['workers_per_alloc']} per "
          f"allocation, backlog {answer['backlog']}; time limit "
          f"{render.format_duration(answer['time_limit_seconds'])}, idle timeout "
          f"{render.format_duration(answer['idle_timeout_seconds'])}")
    print(f"  files: {render.one_line(answer['directory'])}")
    if answer["history"]:
        print()
        render.print_table(
            ["ALLOC", "ENGINE ID", "STATE", "WORKERS", "JOINED", "SUBMITTED", "ENDED",
             "REASON"],
            [[str(a["id"]), render.one_line(a["engine_id"]), a["state"], str(a["workers"]),
              str(a["joined"]), render.format_time(a["submitted_at"]),
              render.format_time(a["ended_at"]), render.one_line(a["reason"] or "")]
             for a in answer["history"]])
    if answer["events"]:
        print()
        for event in answer["events"][-20:]:
            print(f"{render.format_time(event['at'])}  {render.one_line(event['message'])}")


@alloc_app.command("log")
def log(
    ctx: typer.Context,
    name: QueueArg,
    allocation: Annotated[int | None, typer.Argument(
        metavar="[ALLOC]", help="The allocation's number (default: the last).")] = None,
    stdout: Annotated[bool, typer.Option(
        "--stdout", help="Its standard output (default: its standard error, where the "
                         "workers log).")] = False,
) -> None:
    """Print the end of an allocation's output file."""
    from urllib.parse import quote

    if allocation is not None and allocation < 1:
        raise InputError("ALLOC: an allocation number is 1 or more")
    params: dict[str, Any] = {"stream": "stdout" if stdout else "stderr"}
    if allocation is not None:
        params["allocation"] = allocation
    answer = session_of(ctx).client()._request(
        "GET", f"/alloc/{quote(_check_name(name))}/log", params=params)
    print(f"==> {answer['path']} ({answer['total_bytes']} bytes) <==", file=sys.stderr)
    sys.stdout.write(render.sanitize(answer["data"]))


def _act(ctx: typer.Context, name: str, action: str, as_json: bool) -> None:
    from urllib.parse import quote

    answer = session_of(ctx).client()._request(
        "POST", f"/alloc/{quote(_check_name(name))}/{action}")
    if as_json:
        render.print_json(answer)
    else:
        print(f"queue {answer['name']}: {answer['state']}")


@alloc_app.command("pause")
def pause(ctx: typer.Context, name: QueueArg, as_json: JsonOption = False) -> None:
    """Submit no more allocations from this queue (those submitted go on)."""
    _act(ctx, name, "pause", as_json)


@alloc_app.command("resume")
def resume(ctx: typer.Context, name: QueueArg, as_json: JsonOption = False) -> None:
    """Submit again, after a pause or the failures that paused the queue."""
    _act(ctx, name, "resume", as_json)


@alloc_app.command("remove")
def remove(
    ctx: typer.Context,
    name: QueueArg,
    force: Annotated[bool, typer.Option(
        "--force", help="Also when allocations are running: their workers are stopped, "
                        "their jobs run again elsewhere.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Cancel the queue's allocations and remove it."""
    from urllib.parse import quote

    answer = session_of(ctx).client()._request(
        "DELETE", f"/alloc/{quote(_check_name(name))}",
        params={"force": "true" if force else "false"}, timeout=180.0)
    if as_json:
        render.print_json(answer)
    else:
        print(f"queue {answer['name']} removed; {answer['cancelled']} allocation(s) cancelled")

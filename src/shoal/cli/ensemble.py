"""`shoal ensemble`: run ensembles (TOML, NetJobs, remote_runner files), list their runs, show
one, attach to a component's live output, stop what a run left running.

Thin: parsing and printing. The run loop is `shoal.ensemble.driver`; which worker serves each
host (`localhost` among them) is `shoal.ensemble.hosts`. Ensembles whose hosts are all
`localhost` run in this process when no server is known.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli import Session, render, session_of
from shoal.cli.ensemble_output import (
    AttachedOutput,
    LogDirs,
    RunWatcher,
    captured_output,
    netjobs_log_path,
    note,
    print_outputs,
    print_results,
    write_log_dir,
)
from shoal.cli.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK
from shoal.core.errors import InputError, NotFound
from shoal.core.models import JobState
from shoal.ensemble.driver import (
    Interrupted,
    Outcome,
    RunOptions,
    next_snapshot,
    run_ensembles,
)
from shoal.ensemble.states import ComponentState, RunState

if TYPE_CHECKING:
    from shoal.client import Client
    from shoal.ensemble.driver import EnsembleBackend
    from shoal.ensemble.spec import Ensemble

# How often an attached component's output is read while it runs.
ATTACH_POLL_SECONDS = 0.2
PAST_RUN_POLL_SECONDS = 1.0
# Uploads smaller than this are over before a progress bar would say anything.
PROGRESS_MIN_BYTES = 8 << 20

ensemble_app = typer.Typer(name="ensemble", add_completion=False,
                           context_settings={"help_option_names": ["-h", "--help"]})


@ensemble_app.callback(invoke_without_command=True)
def ensemble_group(ctx: typer.Context) -> None:
    """Ensembles: commands pinned to named hosts, started in stages at the same instant."""
    if ctx.invoked_subcommand is None:  # as `shoal` alone: the help, and a usage exit code
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_BAD_INPUT)


@ensemble_app.command("run")
def run_command(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(
        help="The ensemble: TOML, a NetJobs config, or a remote_runner .py config.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", metavar="FILE", help="FILE, as remote_runner's -c gives it.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-s", help="Print the plan; start nothing, contact no host or server "
                                "(NetJobs' -s).")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print each run's final snapshot (or the plan) as JSON.")] = False,
    always_copy: Annotated[bool, typer.Option(
        "--always-copy", help="Copy every file, even where the host has it already.")] = False,
    no_kill: Annotated[bool, typer.Option(
        "--no-kill", help="Leave services (wait = false) running when the run ends, and leave "
                          "those of the ensemble's previous run alone.")] = False,
    attach: Annotated[str | None, typer.Option(
        "--attach", metavar="NAME", help="Stream this component's output as it runs.")] = None,
    muddler: Annotated[Path | None, typer.Option(
        "--muddler", "-m", metavar="FILE", help="A remote_runner muddler file.")] = None,
    extra_args: Annotated[str | None, typer.Option(
        "--extra-args", metavar="ARGS",
        help="remote_runner's extra arguments, parsed by --arg-parser into extra_options.")
    ] = None,
    arg_parser: Annotated[Path | None, typer.Option(
        "--arg-parser", "-a", metavar="FILE",
        help="A remote_runner arg parser: a file defining parse_args(extra_args, ssh_user).")
    ] = None,
    sequential: Annotated[bool, typer.Option(
        "--sequential", help="Start each component as soon as it is ready, not together.")
    ] = False,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", metavar="DIR",
        help="Where outputs go (default: shoal-runs/NAME-TIMESTAMP/).")] = None,
    netjobs_log: Annotated[bool, typer.Option(
        "--log-file", "-l",
        help="Also write each run's results and output to LABEL_TIMESTAMP.log beside FILE "
             "(NetJobs' -l).")] = False,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="T", help="End each run after T (90s, 30m, 1h); beats the file's.")
    ] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Print a line as each component changes state.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only the results, not each component's output.")] = False,
    ssh: Annotated[bool, typer.Option(
        "--ssh", help="Reach a host no connected worker answers to over SSH (as NetJobs and "
        "remote_runner do): a worker is started there for the run, and stopped after it.")
    ] = False,
) -> None:
    """Run the ensembles of FILE: send files, start stages together, collect results.

    A file with several ensembles (a NetJobs file's tests) runs them one after the other.
    Each run's results are printed, then each component's output (unless --quiet); all of it
    is kept in a directory (--log-dir). A run of services only, or with --no-kill, leaves its
    services running (see `shoal ensemble list`, `attach` and `stop`). Exit 0 iff every
    ensemble ended done (or detached after what it waited for went well), 1 otherwise, 130
    when interrupted (the run is cancelled first).
    """
    from shoal.ensemble.loaders import load_ensembles

    path = ensemble_file(file, config)
    run_timeout = parse_timeout(timeout)
    ensembles = load_ensembles(path, muddler=muddler, extra_args=extra_args,
                               arg_parser=arg_parser)
    if not ensembles:
        raise InputError(f"{path}: holds no ensemble")
    if run_timeout is not None:
        ensembles = [e.model_copy(update={"run_timeout_seconds": run_timeout}) for e in ensembles]
    if attach is not None:
        check_attach(attach, ensembles)
    root = path.resolve().parent
    if dry_run:
        from shoal.cli.ensemble_plan import plan_json, print_plan

        if json_output:
            render.print_json(plan_json(ensembles, root))
        else:
            print_plan(ensembles, root, "sequential" if sequential else "synchronized",
                       no_kill=no_kill)
        print("dry run: nothing was started", file=sys.stderr)
        raise typer.Exit(EXIT_OK)

    from shoal.ensemble.manifest import build_manifests

    manifests = [build_manifests(ensemble, root) for ensemble in ensembles]  # all, before any runs
    options = RunOptions(always_copy, no_kill, sequential,
                         poll_seconds=ATTACH_POLL_SECONDS if attach else 25.0)
    results = sys.stderr if json_output else sys.stdout  # stdout holds the JSON
    observer = CliObserver(verbose=verbose, attach=attach,
                           attach_out=sys.stderr if json_output else sys.stdout)
    log_dirs = LogDirs(log_dir, several=len(ensembles) > 1)

    def record(ensemble: Ensemble, outcome: Outcome) -> None:
        observer.end_of_run()
        outcome.log_dir = log_dirs.make(ensemble.name)
        write_log_dir(outcome.log_dir, outcome.snapshot, backend)
        print_results(outcome.snapshot, outcome.log_dir, results)
        if not quiet:
            print_outputs(outcome.snapshot, outcome.log_dir, results)
        if netjobs_log:
            write_netjobs_log(path, outcome)

    session = session_of(ctx)
    with run_backend(session, ensembles, path) as (backend, local):
        from shoal.ensemble.hosts import resolve_hosts

        options.detach = not local
        observer.start_attached(backend)
        placement = resolve_hosts(backend, ensembles, workdir=Path.cwd(),
                                  allow_temporary=not local, ssh=ssh)
        for line in placement.notes:
            note(line)
        outcomes: list[Outcome] = []
        try:
            outcomes = run_ensembles(backend, ensembles, manifests, options,
                                     placement=placement, observer=observer, on_result=record)
            exit_code = EXIT_OK if all(o.succeeded for o in outcomes) else EXIT_JOB_FAILED
        except Interrupted as interrupted:
            outcomes, exit_code = interrupted.outcomes, EXIT_INTERRUPTED
        finally:
            observer.end_of_run()
            placement.release(keep=any(o.snapshot["state"] == "detached" for o in outcomes))
    if json_output:
        render.print_json([{**o.snapshot, "log_dir": str(o.log_dir)} for o in outcomes])
    raise typer.Exit(exit_code)


def ensemble_file(file: Path | None, config: Path | None) -> Path:
    if file is not None and config is not None:
        raise InputError("give the ensemble file once: as FILE or as -c FILE")
    path = file or config
    if path is None:
        raise InputError("no ensemble file: give FILE (or -c FILE)")
    return path


def parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    from shoal.core.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InputError(f"--timeout: {exc}") from None
    if seconds <= 0:
        raise InputError(f"--timeout: must be more than 0: {text!r}")
    return seconds


def check_attach(name: str, ensembles: Sequence[Ensemble]) -> None:
    names = list(dict.fromkeys(c.name for e in ensembles for c in e.components))
    if name not in names:
        raise InputError(f"--attach: no component is named {name!r} "
                         f"(components: {', '.join(names)})")


@contextlib.contextmanager
def run_backend(session: Session, ensembles: Sequence[Ensemble], path: Path
                ) -> Iterator[tuple[EnsembleBackend, bool]]:
    """The server when one is known; this process (no server) for ensembles on localhost
    only when none is. The flag says which: True for this process."""
    if all(e.local_only for e in ensembles) and not server_known(session):
        from shoal.embedded import state_dir
        from shoal.ensemble.local import LocalEnsembles

        with LocalEnsembles(state_dir(path), workdir=Path.cwd()) as local:
            yield local, True
    else:
        yield session.client(), False


def server_known(session: Session) -> bool:
    """A server given (--server, SHOAL_SERVER), or one alive in $SHOAL_HOME."""
    if session.server or os.environ.get("SHOAL_SERVER"):
        return True
    from shoal.home import CONNECTION_FILE, shoal_home

    try:
        pid = int(json.loads((shoal_home() / CONNECTION_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, alive
        return True
    return True


def write_netjobs_log(config: Path, outcome: Outcome) -> None:
    import io

    text = io.StringIO()
    print_results(outcome.snapshot, outcome.log_dir, text)
    if outcome.log_dir is not None:
        print_outputs(outcome.snapshot, outcome.log_dir, text)
    target = netjobs_log_path(config, outcome.snapshot["name"])
    try:
        target.write_text(text.getvalue(), errors="replace")
    except OSError as exc:
        note(f"{target}: cannot write the log file: {exc.strerror or exc}")


class CliObserver:
    """The driver's observer on a terminal: a live table (and with -v a line per change),
    an attached component's output, an upload's progress."""

    def __init__(self, *, verbose: bool, attach: str | None, attach_out: Any):
        self.verbose = verbose
        self.attach = attach
        self.attach_out = attach_out
        self._watcher: RunWatcher | None = None
        self._attached: AttachedOutput | None = None
        self._run_id: int | None = None

    def note(self, text: str) -> None:
        note(text)

    def update(self, snapshot: Mapping[str, Any]) -> None:
        if snapshot["run_id"] != self._run_id:
            self.end_of_run()
            self._run_id = snapshot["run_id"]
            self._watcher = RunWatcher(live=self.attach is None, verbose=self.verbose)
            self._watcher.__enter__()
        assert self._watcher is not None
        self._watcher.update(snapshot)
        if self._attached is not None:
            self._attached.poll(snapshot)

    def start_attached(self, backend: EnsembleBackend) -> None:
        if self.attach is not None:
            self._attached = AttachedOutput(backend, self.attach, self.attach_out)

    def end_of_run(self) -> None:
        if self._watcher is not None:
            self._watcher.__exit__(None, None, None)
            self._watcher = None
        self._run_id = None

    @contextlib.contextmanager
    def uploading(self, files: int, total_bytes: int) -> Iterator[Callable[[int], None] | None]:
        if self.verbose:
            note(f"sending {render.plural(files, 'file')} ({render.format_bytes(total_bytes)})")
        if total_bytes < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
            yield None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("sending", total=total_bytes)
            yield lambda sent: bar.advance(task, sent)


# ---- runs kept by the server ------------------------------------------------------------


RunArgument = Annotated[str, typer.Argument(
    metavar="RUN", help="A run id, or an ensemble's name for its latest run.")]


@ensemble_app.command("list")
def list_command(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME", help="Only the runs of this ensemble.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="The runs as JSON.")] = False,
) -> None:
    """Ensemble runs the server knows: running, detached (services left running) and past."""
    runs = session_of(ctx).client().list_ensembles(name)
    if json_output:
        render.print_json(runs)
        return
    rows = [[str(run["run_id"]), render.one_line(run["name"]),
             render.one_line(run["state"] + (f" ({run['outcome']})"
                                             if run["state"] == "detached" and run.get("outcome")
                                             else "")),
             render.format_ago(run["started_at"]),
             str(run.get("component_count", "")), str(run.get("services_running", 0))]
            for run in runs]
    if not rows:
        print("no ensemble runs", file=sys.stderr)
        return
    render.print_table(["RUN", "NAME", "STATE", "STARTED", "COMPONENTS", "SERVICES UP"], rows)


@ensemble_app.command("show")
def show_command(
    ctx: typer.Context,
    run: RunArgument,
    json_output: Annotated[bool, typer.Option("--json", help="The run's snapshot as JSON.")
                           ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the results, not each component's output.")] = False,
) -> None:
    """One run: its outcome, each component's state, exit status, times and output."""
    client = session_of(ctx).client()
    snapshot = client.ensemble(run)
    if json_output:
        render.print_json(snapshot)
        return
    print_results(snapshot, None, sys.stdout)
    if not quiet:
        for component in snapshot.get("components", []):
            for stream in ("stdout", "stderr"):
                text = captured_output(client, component.get("job_id"), stream)
                if text:
                    print(f"--- {render.one_line(component['name'])} "
                          f"({render.one_line(component['host'])}) {stream}"
                          + (f", job {component['job_id']} (shoal logs "
                             f"{component['job_id']}{' --stderr' if stream == 'stderr' else ''})"
                             if component.get("job_id") else ""))
                    sys.stdout.write(render.sanitize(text) if sys.stdout.isatty() else text)
                    if not text.endswith("\n"):
                        sys.stdout.write("\n")


@ensemble_app.command("attach")
def attach_command(
    ctx: typer.Context,
    run: RunArgument,
    component: Annotated[str, typer.Argument(metavar="COMPONENT")],
) -> None:
    """Stream a component's output live, from its start, until it ends. Ctrl-C leaves it
    running."""
    client = session_of(ctx).client()
    run_id = client.ensemble_run_id(run)
    snapshot = client.ensemble(run_id)
    names = [c["name"] for c in snapshot.get("components", [])]
    if component not in names:
        raise InputError(f"run {run_id} has no component {component!r} "
                         f"(components: {', '.join(names)})")
    attached = AttachedOutput(client, component, sys.stdout)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            attached.poll(snapshot)
            part = next(c for c in snapshot["components"] if c["name"] == component)
            # A run of an earlier life of the server is over, but not a job it left running:
            # its output is followed to its end, and the kept snapshot never changes.
            run_over = RunState(snapshot["state"]).is_final
            if (ComponentState(part["state"]).is_final or run_over) \
                    and (part.get("job_id") is None or attached.ended >= {"stdout", "stderr"}):
                break
            if run_over:  # nothing to long-poll: the job's output is read once a second
                time.sleep(PAST_RUN_POLL_SECONDS)
            else:
                snapshot = next_snapshot(client, run_id, snapshot, ATTACH_POLL_SECONDS)
    part = next(c for c in snapshot["components"] if c["name"] == component)
    note(f"{component}: {part['state']}"
         + (f" (exit {part['exit_code']})" if part.get("exit_code") is not None else ""))


def _left_running(client: Client, snapshot: dict[str, Any]) -> list[str]:
    """Components of an ended run whose jobs still run (left by a server restart)."""
    left = []
    for part in snapshot.get("components", []):
        if part.get("job_id") is not None and not ComponentState(part["state"]).is_final:
            with contextlib.suppress(NotFound):
                if not JobState(client.job(part["job_id"])["state"]).is_final:
                    left.append(part["name"])
    return left


@ensemble_app.command("stop")
def stop_command(ctx: typer.Context, run: RunArgument) -> None:
    """Stop a run: what it left running (detached), or all of it if it still runs."""
    client = session_of(ctx).client()
    run_id = client.ensemble_run_id(run)
    snapshot = client.ensemble(run_id)
    if RunState(snapshot["state"]).is_final:
        left = _left_running(client, snapshot)
        if left:  # the server stopped during the run; the run's jobs did not
            client.cancel_ensemble(run_id)
        note(f"run {run_id} ({render.one_line(snapshot['name'])}) has already ended: "
             f"{snapshot['state']}" + (f"; stopped what it left running: {', '.join(left)}"
                                       if left else ""))
        return
    live = [c["name"] for c in snapshot.get("components", [])
            if ComponentState(c["state"]).is_live]
    client.cancel_ensemble(run_id)
    deadline = time.monotonic() + 60
    while not RunState(snapshot["state"]).is_final and time.monotonic() < deadline:
        snapshot = next_snapshot(client, run_id, snapshot, 5.0)
    note(f"run {run_id} ({render.one_line(snapshot['name'])}): stopped "
         f"{render.plural(len(live), 'component')}; it ended {snapshot['state']}")

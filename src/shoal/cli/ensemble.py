"""`shoal ensemble run FILE`: start commands pinned to hosts, stage by stage, each stage at one
instant; follow them; collect every result and every output into a run directory.

A file may hold several ensembles (a NetJobs file's tests): they run one after the other.
Ensembles whose hosts are all `localhost` run in this process, with no server.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TextIO

import typer

from shoal.cli import render, session_of
from shoal.cli.ensemble_output import (
    AttachedOutput,
    LogDirs,
    RunWatcher,
    note,
    print_results,
    write_log_dir,
)
from shoal.cli.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK
from shoal.cli.jobs import RECONNECT_DELAY, RECONNECT_SECONDS, WAIT_POLL_SECONDS
from shoal.core.errors import ConnectError, InputError, StoreUnavailable

if TYPE_CHECKING:
    from shoal.ensemble.manifest import Manifests
    from shoal.ensemble.spec import Ensemble

RUN_FINAL_STATES = frozenset({"done", "failed", "abandoned", "cancelled"})
COMPONENT_LIVE_STATES = frozenset({"preparing", "ready", "running"})
# How long, after a run has ended, its killed components are given to report their end.
SETTLE_SECONDS = 10.0
# How often an attached component's output is read while it runs.
ATTACH_POLL_SECONDS = 0.2
# Uploads smaller than this are over before a progress bar would say anything.
PROGRESS_MIN_BYTES = 8 << 20
HIDDEN = "(hidden)"


class EnsembleBackend(Protocol):
    """Where runs happen: a server's Client, or LocalEnsembles in this process."""

    def missing_blobs(self, sha256s: Iterable[str]) -> list[str]: ...

    def put_blob(self, sha256: str, path: str, progress: Callable[[int], None] | None = None
                 ) -> dict[str, Any]: ...

    def start_ensemble(self, request: Mapping[str, Any]) -> dict[str, Any]: ...

    def ensemble(self, run_id: int, wait: float | None = None, since: int | None = None
                 ) -> dict[str, Any]: ...

    def cancel_ensemble(self, run_id: int) -> dict[str, Any]: ...

    def logs(self, job_id: int, stream: str = "stdout", offset: int | None = None
             ) -> dict[str, Any]: ...


@dataclass
class RunOptions:
    always_copy: bool = False
    no_kill: bool = False
    sequential: bool = False
    attach: str | None = None
    log_dir: Path | None = None
    json_output: bool = False


@dataclass
class Outcome:
    """How one ensemble's run ended, and where its output went."""

    snapshot: dict[str, Any]
    log_dir: Path


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
    file: Annotated[Path, typer.Argument(
        help="The ensemble: TOML, a NetJobs config, or a remote_runner .py config.")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan; start nothing, contact no host or server.")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print each run's final snapshot (or the plan) as JSON.")] = False,
    always_copy: Annotated[bool, typer.Option(
        "--always-copy", help="Copy every file, even where the host has it already.")] = False,
    no_kill: Annotated[bool, typer.Option(
        "--no-kill", help="Leave services (wait = false) running when the run ends.")] = False,
    attach: Annotated[str | None, typer.Option(
        "--attach", metavar="NAME", help="Stream this component's output as it runs.")] = None,
    muddler: Annotated[Path | None, typer.Option(
        "--muddler", metavar="FILE", help="A remote_runner muddler file.")] = None,
    sequential: Annotated[bool, typer.Option(
        "--sequential", help="Start each component as soon as it is ready, not together.")
    ] = False,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", metavar="DIR",
        help="Where outputs go (default: shoal-runs/NAME-TIMESTAMP/).")] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="T", help="End each run after T (90s, 30m, 1h); beats the file's.")
    ] = None,
) -> None:
    """Run the ensembles of FILE: send files, start stages together, collect results.

    A file with several ensembles (a NetJobs file's tests) runs them one after the other.
    Each run's outputs go to a directory (--log-dir). Exit 0 iff every ensemble ended done,
    1 otherwise, 130 when interrupted (the run is cancelled first).
    """
    from shoal.ensemble.loaders import load_ensembles

    run_timeout = parse_timeout(timeout)
    ensembles = load_ensembles(file, muddler=muddler)
    if not ensembles:
        raise InputError(f"{file}: holds no ensemble")
    if run_timeout is not None:
        ensembles = [e.model_copy(update={"run_timeout_seconds": run_timeout}) for e in ensembles]
    if attach is not None:
        check_attach(attach, ensembles)
    root = file.resolve().parent
    start = "sequential" if sequential else "synchronized"
    if dry_run:
        if json_output:
            render.print_json(plan_json(ensembles, root))
        else:
            print_plan(ensembles, root, start)
        print("dry run: nothing was started", file=sys.stderr)
        raise typer.Exit(EXIT_OK)

    from shoal.ensemble.manifest import build_manifests

    manifests = [build_manifests(ensemble, root) for ensemble in ensembles]  # all, before any runs
    options = RunOptions(always_copy, no_kill, sequential, attach, log_dir, json_output)
    session = session_of(ctx)
    try:
        if all(e.local_only for e in ensembles) and session.server is None:
            from shoal.embedded import state_dir
            from shoal.ensemble.local import LocalEnsembles

            most = max(len(ensemble.components) for ensemble in ensembles)
            with LocalEnsembles(state_dir(file), min_cores=most) as local:
                outcomes = run_all(local, ensembles, manifests, options)
        else:
            outcomes = run_all(session.client(), ensembles, manifests, options)
    except Interrupted as interrupted:
        outcomes, exit_code = interrupted.outcomes, EXIT_INTERRUPTED
    else:
        succeeded = all(outcome.snapshot["state"] == "done" for outcome in outcomes)
        exit_code = EXIT_OK if succeeded else EXIT_JOB_FAILED
    if json_output:
        render.print_json([{**o.snapshot, "log_dir": str(o.log_dir)} for o in outcomes])
    raise typer.Exit(exit_code)


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


# ---- the plan (--dry-run) ---------------------------------------------------------------


def print_plan(ensembles: Sequence[Ensemble], root: Path, start: str,
               stream: TextIO | None = None) -> None:
    """Per ensemble: its stages in order, and each component's host, command, files,
    timeout and whether the run waits for it."""
    from shoal.ensemble.manifest import build_manifests, copy_entries, summarize_copy

    stream = stream or sys.stdout
    for number, ensemble in enumerate(ensembles, 1):
        build_manifests(ensemble, root, hash_contents=False)  # a missing file is an error here too
        if number > 1:
            stream.write("\n")
        if len(ensembles) > 1:
            stream.write(f"[{number}/{len(ensembles)}] ")
        hosts = {c.host for c in ensemble.components}
        stream.write(f"ensemble {render.one_line(ensemble.name)}: "
                     f"{render.plural(len(ensemble.components), 'component')} on "
                     f"{render.plural(len(hosts), 'host')}, start {start}\n")
        waited = sum(1 for c in ensemble.components if c.wait)
        must = (f"every waited-for component ({waited})" if ensemble.required == waited
                else f"{ensemble.required} of the {waited} waited-for components")
        stream.write(f"  must succeed: {must}; "
                     f"run timeout {timeout_text(ensemble.run_timeout_seconds)}\n")
        previous: int | None = None
        for stage in ensemble.stages:
            if previous is None:
                stream.write(f"  stage {stage}: first\n")
            else:
                after = ensemble.stage_starts_after.get(stage, "started")
                stream.write(f"  stage {stage}: once stage {previous} has {after}\n")
            previous = stage
            for component in (c for c in ensemble.components if c.stage == stage):
                timeout = component.timeout_seconds or ensemble.timeout_seconds
                role = "waited for" if component.wait else "service, killed when the run ends"
                stream.write(f"    {render.one_line(component.name)} on "
                             f"{render.one_line(component.host)}: timeout "
                             f"{timeout_text(timeout)}, {role}\n")
                stream.write(f"      $ {render.one_line(component.command)}\n")
                if component.base_dir:
                    stream.write(f"      in {render.one_line(component.base_dir)}\n")
                if component.env:  # names only: values may be secrets
                    stream.write(f"      env {', '.join(sorted(component.env))}\n")
                for copy in component.files:
                    entries = [entry for entry, _ in copy_entries(copy, root, component.name,
                                                                  None)]
                    files, size = summarize_copy(entries)
                    what = (f"{render.format_bytes(size)}, mode {entries[0].mode:o}"
                            if entries[0].kind == "file"
                            else f"{render.plural(files, 'file')}, {render.format_bytes(size)}")
                    stream.write(f"      {entries[0].kind} {render.one_line(copy.local)} -> "
                                 f"{render.one_line(entries[0].path)} ({what})\n")


def plan_json(ensembles: Sequence[Ensemble], root: Path) -> list[dict[str, Any]]:
    from shoal.ensemble.manifest import build_manifests

    plans = []
    for ensemble in ensembles:
        manifests = build_manifests(ensemble, root, hash_contents=False)
        plan = ensemble.model_dump(mode="json")
        for component in plan["components"]:  # values may be secrets; names are enough here
            component["env"] = dict.fromkeys(component["env"], HIDDEN)
        plans.append({"ensemble": plan, "manifests": manifests_json(manifests)})
    return plans


def timeout_text(seconds: float | None) -> str:
    return "none" if seconds is None else render.format_duration(seconds)


def manifests_json(manifests: Manifests) -> dict[str, list[dict[str, Any]]]:
    return {name: [entry.model_dump(mode="json") for entry in entries]
            for name, entries in manifests.entries.items()}


# ---- running ----------------------------------------------------------------------------


def run_all(backend: EnsembleBackend, ensembles: Sequence[Ensemble],
            manifests: Sequence[Manifests], options: RunOptions) -> list[Outcome]:
    """Run each ensemble in turn, until one is interrupted."""
    from shoal.ensemble.manifest import without_files

    outcomes: list[Outcome] = []
    log_dirs = LogDirs(options.log_dir, several=len(ensembles) > 1)
    results = sys.stderr if options.json_output else sys.stdout  # stdout holds the JSON
    for number, (ensemble, manifest) in enumerate(zip(ensembles, manifests, strict=True), 1):
        if len(ensembles) > 1:
            note(f"[{number}/{len(ensembles)}] ensemble {render.one_line(ensemble.name)}")
        try:
            upload_missing(backend, manifest)
        except KeyboardInterrupt:
            note("interrupted while sending files; nothing of this run was started")
            raise Interrupted(outcomes) from None
        snapshot = backend.start_ensemble({
            "ensemble": without_files(ensemble).model_dump(mode="json"),
            "manifests": manifests_json(manifest),
            "always_copy": options.always_copy,
            "no_kill": options.no_kill,
            "start": "sequential" if options.sequential else "synchronized",
        })
        try:  # made once the run is accepted: a refused one leaves no empty directory
            directory = log_dirs.make(ensemble.name)
        except InputError:
            backend.cancel_ensemble(snapshot["run_id"])
            raise
        snapshot, interrupted = follow_run(backend, snapshot, options)
        write_log_dir(directory, snapshot, backend)
        print_results(snapshot, directory, results)
        outcomes.append(Outcome(snapshot, directory))
        if interrupted:
            raise Interrupted(outcomes)
    return outcomes


class Interrupted(Exception):
    """Ctrl-C: the runs that ended so far (the last one cancelled)."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__("interrupted")
        self.outcomes = outcomes


def upload_missing(backend: EnsembleBackend, manifests: Manifests) -> None:
    """Send the contents the other side does not have yet, with a bar by bytes on a terminal
    when there is much to send."""
    if not manifests.blobs:
        return
    missing = [manifests.blobs[sha] for sha in backend.missing_blobs(list(manifests.blobs))
               if sha in manifests.blobs]
    total = sum(blob.size for blob in missing)
    if not missing:
        return
    note(f"sending {render.plural(len(missing), 'file')} ({render.format_bytes(total)})")
    with upload_progress(total) as advance:
        for blob in missing:
            try:
                backend.put_blob(blob.sha256, str(blob.path), advance)
            except InputError as exc:  # most likely, the file changed since it was hashed
                raise InputError(f"{blob.path}: {exc}") from None


@contextlib.contextmanager
def upload_progress(total: int) -> Iterator[Callable[[int], None] | None]:
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
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
        task = bar.add_task("sending", total=total)
        yield lambda sent: bar.advance(task, sent)


def follow_run(backend: EnsembleBackend, snapshot: dict[str, Any],
               options: RunOptions) -> tuple[dict[str, Any], bool]:
    """Follow a run to its end: the final snapshot, and whether Ctrl-C cancelled it."""
    run_id = snapshot["run_id"]
    attached = None
    if options.attach is not None:
        out = sys.stderr if options.json_output else sys.stdout
        attached = AttachedOutput(backend, options.attach, out)
    wait = ATTACH_POLL_SECONDS if attached is not None else WAIT_POLL_SECONDS
    with RunWatcher(live=attached is None) as watcher:
        watcher.update(snapshot)
        try:
            while snapshot["state"] not in RUN_FINAL_STATES:
                snapshot = next_snapshot(backend, run_id, snapshot, wait)
                watcher.update(snapshot)
                if attached is not None:
                    attached.poll(snapshot)
            snapshot = settle(backend, snapshot, watcher, keep_services=options.no_kill)
            if attached is not None:
                attached.poll(snapshot)  # what it wrote last
            return snapshot, False
        except KeyboardInterrupt:
            watcher.line(f"interrupted: cancelling run {run_id}")
            backend.cancel_ensemble(run_id)
            while snapshot["state"] not in RUN_FINAL_STATES:
                snapshot = next_snapshot(backend, run_id, snapshot, WAIT_POLL_SECONDS)
                watcher.update(snapshot)
            return settle(backend, snapshot, watcher, keep_services=options.no_kill), True


def settle(backend: EnsembleBackend, snapshot: dict[str, Any], watcher: RunWatcher, *,
           keep_services: bool) -> dict[str, Any]:
    """The snapshot once the components the run's end killed have ended too (for a while at
    most), so that results and saved outputs are final."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while still_running(snapshot, keep_services) and time.monotonic() < deadline:
        remaining = max(0.1, deadline - time.monotonic())
        snapshot = next_snapshot(backend, snapshot["run_id"], snapshot, remaining)
        watcher.update(snapshot)
    return snapshot


def still_running(snapshot: Mapping[str, Any], keep_services: bool) -> bool:
    return any(component.get("job_id") is not None
               and component["state"] in COMPONENT_LIVE_STATES
               and (component.get("wait", True) or not keep_services)
               for component in snapshot.get("components", []))


def next_snapshot(backend: EnsembleBackend, run_id: int, snapshot: Mapping[str, Any],
                  wait: float) -> dict[str, Any]:
    """The run's next version (long poll), riding out a server restart."""
    started = time.monotonic()
    while True:
        try:
            return backend.ensemble(run_id, wait=wait, since=snapshot["version"])
        except (ConnectError, StoreUnavailable):
            if time.monotonic() - started > RECONNECT_SECONDS:
                raise
            time.sleep(RECONNECT_DELAY)

"""Running ensembles from this side: send the files, start each run, follow it to its end.

The same loop serves `shoal ensemble run` and `Client.run_ensemble`: the backend is a
server's Client or `LocalEnsembles` (a server and worker in this process), and whoever
watches (the command line's tables and lines, or nobody) is an Observer. A file may hold
several ensembles (a NetJobs file's tests): they run one after the other.

A run is followed until it is over: ended, or `detached` (its waited-for part is over and it
leaves services running). A backend that cannot keep services once this process ends (no
server) is followed past that, until the services end or Ctrl-C stops them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shoal.core.errors import ConnectError, InputError, StoreUnavailable
from shoal.ensemble.hosts import Placement
from shoal.ensemble.manifest import Manifests, without_files
from shoal.ensemble.spec import Ensemble
from shoal.ensemble.states import ComponentState, RunState

# How long, after a run has ended, its killed components are given to report their end.
SETTLE_SECONDS = 10.0
# A long poll's longest wait; shorter when someone reads output as it comes (--attach).
POLL_SECONDS = 25.0
RECONNECT_SECONDS = 60.0  # riding out a server restart while following a run
RECONNECT_DELAY = 1.0


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

    def workers(self) -> list[dict[str, Any]]: ...


class Observer(Protocol):
    """Whoever watches a run: told each new snapshot and each note worth a line."""

    def note(self, text: str) -> None: ...

    def update(self, snapshot: Mapping[str, Any]) -> None: ...

    def uploading(self, files: int, total_bytes: int
                  ) -> AbstractContextManager[Callable[[int], None] | None]: ...


class Silent:
    """An Observer that keeps everything to itself (the Python API's)."""

    def note(self, text: str) -> None:
        pass

    def update(self, snapshot: Mapping[str, Any]) -> None:
        pass

    @contextlib.contextmanager
    def uploading(self, files: int, total_bytes: int) -> Iterator[None]:
        yield None


@dataclass
class RunOptions:
    always_copy: bool = False
    no_kill: bool = False
    sequential: bool = False
    poll_seconds: float = POLL_SECONDS
    # False where nothing outlives this process (no server): a detached run is followed on.
    detach: bool = True


@dataclass
class Outcome:
    """How one ensemble's run ended (or detached), and where its output went."""

    snapshot: dict[str, Any]
    log_dir: Path | None = None

    @property
    def succeeded(self) -> bool:
        return succeeded(self.snapshot)


def succeeded(snapshot: Mapping[str, Any]) -> bool:
    """A run ended done, or detached after what it waited for went well."""
    state = snapshot["state"]
    return state == "done" or (state == "detached" and snapshot.get("outcome") == "done")


def is_over(snapshot: Mapping[str, Any], *, detach: bool = True) -> bool:
    state = RunState(snapshot["state"])
    return state.is_final or (detach and state is RunState.DETACHED)


class Interrupted(Exception):
    """Ctrl-C: the runs that ended so far (the last one cancelled)."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__("interrupted")
        self.outcomes = outcomes


def run_ensembles(backend: EnsembleBackend, ensembles: Sequence[Ensemble],
                  manifests: Sequence[Manifests], options: RunOptions, *,
                  placement: Placement | None = None, observer: Observer | None = None,
                  on_result: Callable[[Ensemble, Outcome], None] | None = None,
                  ) -> list[Outcome]:
    """Run each ensemble in turn, until one is interrupted (Interrupted carries the
    outcomes so far). `on_result` is called as each run is over, before the next starts."""
    observer = observer or Silent()
    placement = placement or Placement()
    outcomes: list[Outcome] = []
    for number, (ensemble, manifest) in enumerate(zip(ensembles, manifests, strict=True), 1):
        if len(ensembles) > 1:
            observer.note(f"[{number}/{len(ensembles)}] ensemble {ensemble.name}")
        try:
            upload_missing(backend, manifest, observer)
        except KeyboardInterrupt:
            observer.note("interrupted while sending files; nothing of this run was started")
            raise Interrupted(outcomes) from None
        try:
            snapshot = backend.start_ensemble(start_request(ensemble, manifest, options,
                                                            placement))
        except InputError as exc:  # refused as planned (more than a worker has): which one
            raise InputError(f"ensemble {ensemble.name}: {exc}") from None
        snapshot, interrupted = follow_run(backend, snapshot, options, observer)
        outcome = Outcome(snapshot)
        if on_result is not None:
            on_result(ensemble, outcome)
        outcomes.append(outcome)
        if interrupted:
            raise Interrupted(outcomes)
    return outcomes


def start_request(ensemble: Ensemble, manifests: Manifests, options: RunOptions,
                  placement: Placement) -> dict[str, Any]:
    hosts = {c.host for c in ensemble.components}
    return {
        "ensemble": without_files(ensemble).model_dump(mode="json"),
        "manifests": manifests_json(manifests),
        "always_copy": options.always_copy,
        "no_kill": options.no_kill,
        "start": "sequential" if options.sequential else "synchronized",
        "placement": {host: name for host, name in placement.workers.items() if host in hosts},
    }


def manifests_json(manifests: Manifests) -> dict[str, list[dict[str, Any]]]:
    return {name: [entry.model_dump(mode="json") for entry in entries]
            for name, entries in manifests.entries.items()}


def upload_missing(backend: EnsembleBackend, manifests: Manifests, observer: Observer) -> None:
    """Send the contents the other side does not have yet."""
    if not manifests.blobs:
        return
    missing = [manifests.blobs[sha] for sha in backend.missing_blobs(list(manifests.blobs))
               if sha in manifests.blobs]
    if not missing:
        return
    with observer.uploading(len(missing), sum(blob.size for blob in missing)) as advance:
        for blob in missing:
            try:
                backend.put_blob(blob.sha256, str(blob.path), advance)
            except InputError as exc:  # most likely, the file changed since it was hashed
                raise InputError(f"{blob.path}: {exc}") from None


def follow_run(backend: EnsembleBackend, snapshot: dict[str, Any], options: RunOptions,
               observer: Observer) -> tuple[dict[str, Any], bool]:
    """Follow a run until it is over: the last snapshot, and whether Ctrl-C cancelled it."""
    run_id = snapshot["run_id"]
    observer.update(snapshot)
    told = False
    try:
        while not is_over(snapshot, detach=options.detach):
            if snapshot["state"] == RunState.DETACHED and not told:
                observer.note("no server: the services this run leaves running stop with "
                              "this command; Ctrl-C stops them (with `shoal server` running, "
                              "they would be left running)")
                told = True
            snapshot = next_snapshot(backend, run_id, snapshot, options.poll_seconds)
            observer.update(snapshot)
        return settle(backend, snapshot, observer), False
    except KeyboardInterrupt:
        stopping = snapshot["state"] == RunState.DETACHED  # not an interruption: a stop
        observer.note(f"{'stopping' if stopping else 'interrupted: cancelling'} run {run_id}")
        backend.cancel_ensemble(run_id)
        while not RunState(snapshot["state"]).is_final:
            snapshot = next_snapshot(backend, run_id, snapshot, POLL_SECONDS)
            observer.update(snapshot)
        return settle(backend, snapshot, observer), not stopping


def settle(backend: EnsembleBackend, snapshot: dict[str, Any], observer: Observer
           ) -> dict[str, Any]:
    """The snapshot once the components the run's end killed have ended too (for a while at
    most), so that results and saved outputs are final."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while still_ending(snapshot) and time.monotonic() < deadline:
        remaining = max(0.1, deadline - time.monotonic())
        snapshot = next_snapshot(backend, snapshot["run_id"], snapshot, remaining)
        observer.update(snapshot)
    return snapshot


def still_ending(snapshot: Mapping[str, Any]) -> bool:
    """Components still live that the run's end stops (a detached run's services go on)."""
    detached = snapshot["state"] == RunState.DETACHED
    return any(component.get("job_id") is not None
               and ComponentState(component["state"]).is_live
               and (component.get("wait", True) or not detached)
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


def find_run(runs: Sequence[Mapping[str, Any]], which: str) -> int:
    """RUN as users give it: a run id, or an ensemble's name for its latest run."""
    if which.isdigit():
        return int(which)
    named = [run for run in runs if run["name"] == which]
    if not named:
        names = sorted({str(run["name"]) for run in runs})
        raise InputError(f"no ensemble run is named {which!r}"
                         + (f" (ensembles: {', '.join(names[:10])})" if names else ""))
    return int(max(named, key=lambda run: int(run["run_id"]))["run_id"])


def run_file(backend: EnsembleBackend, path: Path, *, no_kill: bool = False,
             always_copy: bool = False, sequential: bool = False,
             muddler: Path | None = None, extra_args: str | None = None,
             arg_parser: Path | None = None, workdir: Path | None = None,
             observer: Observer | None = None, ssh: bool = False) -> list[dict[str, Any]]:
    """Load a file's ensembles and run them on `backend` (the Python API's way): their last
    snapshots. Temporary workers started for `localhost` are stopped afterwards, unless a
    run left services running on them."""
    from shoal.ensemble.hosts import resolve_hosts
    from shoal.ensemble.loaders import load_ensembles
    from shoal.ensemble.manifest import build_manifests

    ensembles = load_ensembles(path, muddler=muddler, extra_args=extra_args,
                               arg_parser=arg_parser)
    root = path.resolve().parent
    manifests = [build_manifests(ensemble, root) for ensemble in ensembles]
    placement = resolve_hosts(backend, ensembles, workdir=workdir or Path.cwd(), ssh=ssh)
    outcomes: list[Outcome] = []
    try:
        outcomes = run_ensembles(backend, ensembles, manifests,
                                 RunOptions(always_copy, no_kill, sequential),
                                 placement=placement, observer=observer)
    except Interrupted as interrupted:
        outcomes = interrupted.outcomes
        raise KeyboardInterrupt from None
    finally:
        placement.release(keep=any(o.snapshot["state"] == RunState.DETACHED for o in outcomes))
    return [outcome.snapshot for outcome in outcomes]

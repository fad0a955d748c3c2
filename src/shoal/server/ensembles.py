"""Running ensembles: components pinned to workers, prepared, then released at one instant.

Each component is a job (group `ensemble.NAME`) pinned to its worker and marked with a gate:
the worker puts its files in place, spawns it held at a start line, and reports Ready. When
every component of a stage is ready, the server picks an instant a little ahead, converts it
into each worker's own clock (offsets estimated by NTP-style probes just before), and sends
Release. Components report the instant they really passed the line, so skew is measured,
not assumed. Outcomes come from the ordinary job machinery: leases, results, logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.core.errors import InputError, NotFound
from shoal.core.models import FINAL_STATES, JobSpec, JobState
from shoal.core.protocol import FileEntry, ReadyItem, Release, StartedItem, TimeProbe, TimeReply
from shoal.core.states import Transition
from shoal.ensemble.clock import Estimate, Sample, estimate, sample
from shoal.ensemble.loaders.common import safe_name
from shoal.ensemble.spec import LOCALHOST, Component, Ensemble
from shoal.server.service import Service
from shoal.server.workers import WorkerState

log = logging.getLogger("shoal.server")

PROBES = 8
PROBE_GAP_SECONDS = 0.01
PREPARE_TIMEOUT_SECONDS = 300.0
MIN_LEAD_SECONDS = 0.05  # how far ahead of "now" a release is set, at least


class EnsembleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ensemble: Ensemble
    manifests: dict[str, list[FileEntry]] = Field(default_factory=dict)
    always_copy: bool = False
    no_kill: bool = False
    start: Literal["synchronized", "sequential"] = "synchronized"


@dataclass
class ComponentRun:
    spec: Component
    worker: WorkerState
    run_id: int = 0  # set once its run exists
    job_id: int | None = None
    lease_id: int | None = None
    state: str = "pending"
    ready_at: float | None = None
    started_at: float | None = None  # in the server's clock
    ended_at: float | None = None
    exit_code: int | None = None
    fail_reason: str | None = None
    copied_files: int = 0
    skipped_files: int = 0
    copied_bytes: int = 0
    start_skew_seconds: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        duration = (self.ended_at - self.started_at
                    if self.ended_at is not None and self.started_at is not None else None)
        return {"name": self.spec.name, "host": self.spec.host, "worker": self.worker.name,
                "job_id": self.job_id, "stage": self.spec.stage, "wait": self.spec.wait,
                "state": self.state, "exit_code": self.exit_code, "ready_at": self.ready_at,
                "started_at": self.started_at, "start_skew_seconds": self.start_skew_seconds,
                "ended_at": self.ended_at, "duration_seconds": duration,
                "copied_files": self.copied_files, "skipped_files": self.skipped_files,
                "copied_bytes": self.copied_bytes, "fail_reason": self.fail_reason}


@dataclass
class Run:
    run_id: int
    request: EnsembleRequest
    components: list[ComponentRun]
    state: str = "preparing"
    stage: int | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    version: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    owner: str = ""  # who started it: its components are their jobs

    @property
    def name(self) -> str:
        return self.request.ensemble.name

    def note(self, message: str) -> None:
        self.log.append({"at": time.time(), "message": message})
        log.info("ensemble %s #%d: %s", self.name, self.run_id, message)
        self.touch()

    def touch(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "state": self.state,
                "version": self.version, "stage": self.stage, "started_at": self.started_at,
                "ended_at": self.ended_at,
                "components": [c.to_dict() for c in self.components],
                "stages": list(self.stages), "log": list(self.log)}


def group_name(ensemble_name: str) -> str:
    """The group of an ensemble's components; a NetJobs label may hold spaces and such."""
    return f"ensemble.{safe_name(ensemble_name)}"


def resolve_worker(component: Component, workers: list[WorkerState]) -> WorkerState:
    """A host names a worker by its name, its host name or its address."""
    connected = [w for w in workers if w.connected and w.accepting]
    for matches in (lambda w: w.name == component.host, lambda w: w.host == component.host,
                    lambda w: w.address == component.host):
        found = [w for w in connected if matches(w)]
        if found:
            return found[0]
    if component.host == LOCALHOST and len(connected) == 1 and connected[0].name == LOCALHOST:
        return connected[0]
    names = ", ".join(sorted(w.name for w in connected)) or "none"
    raise InputError(f"component {component.name}: host {component.host} matches no "
                     f"connected worker (connected: {names})")


class EnsembleRunner:
    def __init__(self, service: Service):
        self.service = service
        self.runs: dict[int, Run] = {}
        self._by_job: dict[int, ComponentRun] = {}
        self._clock_samples: dict[int, list[Sample]] = {}
        self._probe_id = 0
        service.listeners.append(self._on_transitions)
        service.ensemble_messages = self._on_message

    # ---- public ------------------------------------------------------------------------------

    def start(self, request: EnsembleRequest, owner: str = "") -> int:
        workers = list(self.service.reactor.workers.values())
        components = [ComponentRun(spec, resolve_worker(spec, workers))
                      for spec in request.ensemble.components]
        unknown = set(request.manifests) - {c.name for c in request.ensemble.components}
        if unknown:
            raise InputError(f"files for unknown components: {', '.join(sorted(unknown))}")
        run = Run(max(self.runs, default=0) + 1, request, components, owner=owner)
        self.runs[run.run_id] = run
        for component in components:
            component.run_id = run.run_id
        run.task = asyncio.create_task(self._drive(run), name=f"ensemble-{run.run_id}")
        return run.run_id

    def snapshot(self, run_id: int, owner: str | None = None) -> dict[str, Any]:
        return self._run(run_id, owner).snapshot()

    def list_runs(self, name: str | None = None,
                  owner: str | None = None) -> list[dict[str, Any]]:
        return [{"run_id": r.run_id, "name": r.name, "state": r.state,
                 "started_at": r.started_at, "ended_at": r.ended_at}
                for r in self.runs.values()
                if (name is None or r.name == name) and (owner is None or r.owner == owner)]

    async def wait_for_change(self, run_id: int, since: int, timeout: float,
                              owner: str | None = None) -> None:
        run = self._run(run_id, owner)
        if run.version != since:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.changed.wait(), timeout)

    def cancel(self, run_id: int, owner: str | None = None) -> None:
        run = self._run(run_id, owner)
        if run.task is not None and not run.task.done():
            run.task.cancel()

    def _run(self, run_id: int, owner: str | None = None) -> Run:
        """The run; with `owner`, only if they started it."""
        run = self.runs.get(run_id)
        if run is None or (owner is not None and run.owner != owner):
            raise NotFound(f"ensemble run {run_id} does not exist")
        return run

    # ---- driving a run -----------------------------------------------------------------------

    async def _drive(self, run: Run) -> None:
        ensemble = run.request.ensemble
        try:
            if not run.request.no_kill:
                self._kill_previous(run)
            run.note(f"{len(run.components)} components in {len(ensemble.stages)} stages")
            deadline = (time.monotonic() + ensemble.run_timeout_seconds
                        if ensemble.run_timeout_seconds else None)
            async with asyncio.timeout_at(_loop_time(deadline)):
                for stage in ensemble.stages:
                    if not await self._run_stage(run, stage):
                        break
                await self._wait_for_outcome(run)
        except TimeoutError:
            run.note("the run's timeout passed: stopping everything")
            run.state = "failed"
        except asyncio.CancelledError:
            run.note("cancelled: stopping everything")
            run.state = "cancelled"
        except Exception as exc:  # a bug must not leave components running
            log.exception("ensemble run failed")
            run.note(f"internal error: {exc}")
            run.state = "failed"
        finally:
            reason = {"cancelled": "the ensemble run was cancelled",
                      "abandoned": "the ensemble run was abandoned (min_hosts)",
                      "failed": "the ensemble run failed or timed out"}.get(
                run.state, "the ensemble run ended")
            self._kill_all(run, reason)
            await self._wait_for_ends(run)
            if run.state in ("preparing", "running"):
                run.state = "done" if self._succeeded(run) >= ensemble.required else "failed"
            run.ended_at = time.time()
            run.note(f"ended: {run.state}")

    def _kill_previous(self, run: Run) -> None:
        for other in self.runs.values():
            if other is not run and other.name == run.name and other.owner == run.owner \
                    and other.task is not None and not other.task.done():
                run.note(f"stopping the components still running from run {other.run_id}")
                other.task.cancel()
        # Another user's run of that name is theirs: only the owner's components go.
        self.service.act("kill", None, group_name(run.name), f"replaced by run {run.run_id}",
                         owner=run.owner)

    async def _run_stage(self, run: Run, stage: int) -> bool:
        ensemble = run.request.ensemble
        members = [c for c in run.components if c.spec.stage == stage]
        run.stage = stage
        run.state = "preparing"
        run.note(f"stage {stage}: preparing {len(members)} components")
        await self._probe_clocks({c.worker.id for c in members})
        self._add_jobs(run, members)
        await asyncio.gather(*(c.ready.wait() for c in members))
        ready = [c for c in members if c.state == "ready"]
        if len(ready) < len(members):
            run.note(f"stage {stage}: {len(members) - len(ready)} components failed to prepare")
        if self._hopeless(run):
            run.state = "abandoned"
            run.note("too few components can succeed (min_hosts): abandoning the run")
            return False
        run.state = "running"
        if run.request.start == "sequential":
            await self._release_in_turn(run, ready)
        else:
            await self._release_together(run, stage, ready)
        await asyncio.gather(*(c.started.wait() for c in ready))
        started = [c.started_at for c in ready if c.started_at is not None]
        spread = max(started) - min(started) if started else None
        release = run.stages[-1]["release_at"] if run.stages and run.stages[-1]["stage"] == stage \
            else None
        for component in ready:
            if component.started_at is not None and release is not None:
                component.start_skew_seconds = component.started_at - release
        if run.stages and run.stages[-1]["stage"] == stage:
            run.stages[-1]["spread_seconds"] = spread
        else:
            run.stages.append({"stage": stage, "release_at": None, "spread_seconds": spread})
        run.note(f"stage {stage}: {len(started)} started"
                 + (f", spread {spread * 1000:.3f} ms" if spread is not None else ""))
        next_stages = [s for s in ensemble.stages if s > stage]
        if next_stages and ensemble.stage_starts_after.get(next_stages[0]) == "finished":
            await asyncio.gather(*(c.ended.wait() for c in members))
        return True

    def _add_jobs(self, run: Run, members: list[ComponentRun]) -> None:
        ensemble = run.request.ensemble
        specs = []
        for component in members:
            spec = component.spec
            timeout = spec.timeout_seconds or ensemble.timeout_seconds
            files = [entry.model_dump() for entry in run.request.manifests.get(spec.name, [])]
            specs.append(JobSpec(
                cmd=spec.command, cwd=spec.base_dir or "", env=dict(spec.env),
                name=f"{ensemble.name}/{spec.name}",
                group=group_name(ensemble.name),
                on_worker=component.worker.name, time_limit_seconds=timeout, gate=True,
                files=files, always_copy=run.request.always_copy,
            ))
        answer = self.service.add(specs, owner=run.owner)
        for component, job_id in zip(members, answer["ids"], strict=True):
            component.job_id = job_id
            component.state = "preparing"
            self._by_job[job_id] = component
        run.touch()

    async def _probe_clocks(self, worker_ids: set[int]) -> None:
        for worker_id in worker_ids:
            self._clock_samples[worker_id] = []
        for _ in range(PROBES):
            for worker_id in worker_ids:
                self._probe_id += 1
                self.service.send_to_worker(worker_id, TimeProbe(
                    probe_id=self._probe_id, server_sent_at=time.time()))
            await asyncio.sleep(PROBE_GAP_SECONDS)
        await asyncio.sleep(PROBE_GAP_SECONDS)

    def clock(self, worker_id: int) -> Estimate:
        return estimate(self._clock_samples.get(worker_id, []))

    async def _release_together(self, run: Run, stage: int, ready: list[ComponentRun]) -> None:
        if not ready:
            return
        estimates = {c.worker.id: self.clock(c.worker.id) for c in ready}
        lead = max(MIN_LEAD_SECONDS, 4 * max(e.delay for e in estimates.values()))
        release_at = time.time() + lead
        by_worker: dict[int, list[int]] = {}
        for component in ready:
            assert component.lease_id is not None
            by_worker.setdefault(component.worker.id, []).append(component.lease_id)
        for worker_id, leases in by_worker.items():
            self.service.send_to_worker(worker_id, Release(
                lease_ids=leases, at=release_at + estimates[worker_id].offset))
        run.stages.append({"stage": stage, "release_at": release_at, "spread_seconds": None})
        run.note(f"stage {stage}: release at +{lead * 1000:.0f} ms on {len(by_worker)} workers")

    async def _release_in_turn(self, run: Run, ready: list[ComponentRun]) -> None:
        """NetJobs' way, for comparison: tell each one to start, one after another."""
        for component in ready:
            assert component.lease_id is not None
            self.service.send_to_worker(component.worker.id,
                                        Release(lease_ids=[component.lease_id], at=0.0))
            await component.started.wait()

    async def _wait_for_outcome(self, run: Run) -> None:
        waited = [c for c in run.components if c.spec.wait and c.job_id is not None]
        pending = {asyncio.ensure_future(c.ended.wait()) for c in waited}
        try:
            while pending:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if self._hopeless(run):
                    run.state = "abandoned"
                    run.note("too few components can succeed (min_hosts): abandoning the run")
                    return
        finally:
            for waiter in pending:
                waiter.cancel()

    def _succeeded(self, run: Run) -> int:
        return sum(1 for c in run.components if c.spec.wait and c.state == "done")

    def _hopeless(self, run: Run) -> bool:
        failed = sum(1 for c in run.components
                     if c.spec.wait and c.state in ("failed", "killed", "timed_out"))
        waited = sum(1 for c in run.components if c.spec.wait)
        return waited - failed < run.request.ensemble.required

    def _live_jobs(self, run: Run) -> list[int]:
        jobs = self.service.reactor.jobs
        return [c.job_id for c in run.components if c.job_id is not None
                and c.job_id in jobs and not jobs[c.job_id].state.is_final]

    def _kill_all(self, run: Run, reason: str) -> None:
        live = self._live_jobs(run)
        if live:
            with contextlib.suppress(Exception):
                self.service.act("kill", live, None, reason)
        for component in run.components:
            component.ready.set()
            component.started.set()

    async def _wait_for_ends(self, run: Run, timeout: float = 15.0) -> None:
        """The run ends once what it killed has really ended, so its results are final."""
        waiters = [c.ended.wait() for c in run.components if c.job_id is not None]
        if waiters:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*waiters), timeout)

    # ---- events from the service -------------------------------------------------------------

    def _on_message(self, worker_id: int, message: object) -> None:
        if isinstance(message, StartedItem):
            self.started(message.job_id, message.started_at)
        elif isinstance(message, TimeReply):
            received = time.time()
            self._clock_samples.setdefault(worker_id, []).append(sample(
                message.server_sent_at, message.worker_received_at, message.worker_replied_at,
                received))
        elif isinstance(message, ReadyItem):
            component = self._by_job.get(message.job_id)
            if component is not None and component.state == "preparing":
                component.lease_id = message.lease_id
                component.state = "ready"
                component.ready_at = time.time()
                component.copied_files = message.copied_files
                component.skipped_files = message.skipped_files
                component.copied_bytes = message.copied_bytes
                component.ready.set()
                self._touch(component)

    def _on_transitions(self, transitions: list[Transition]) -> None:
        for entry in transitions:
            component = self._by_job.get(entry.job_id)
            if component is None:
                continue
            job = self.service.reactor.jobs.get(entry.job_id)
            if job is None:
                continue
            if entry.to_state in FINAL_STATES:
                self._ended(component, entry.to_state, job.exit_code, entry.reason)

    def started(self, job_id: int, worker_started_at: float) -> None:
        component = self._by_job.get(job_id)
        if component is None or component.started.is_set():
            return
        offset = self.clock(component.worker.id).offset
        component.started_at = worker_started_at - offset
        component.state = "running"
        component.started.set()
        self._touch(component)

    def _ended(self, component: ComponentRun, state: JobState, exit_code: int | None,
               reason: str | None) -> None:
        component.exit_code = exit_code
        component.ended_at = time.time()
        if state is JobState.DONE:
            component.state = "done"
        elif reason == "time limit":
            component.state = "timed_out"
        elif state is JobState.CANCELLED:
            component.state = "killed"
        else:
            component.state = "failed"
        component.fail_reason = reason
        for event in (component.ready, component.started, component.ended):
            event.set()
        self._touch(component)

    def _touch(self, component: ComponentRun) -> None:
        run = self.runs.get(component.run_id)
        if run is not None:
            run.touch()


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())

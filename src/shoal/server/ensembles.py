"""Running ensembles: components pinned to workers, prepared, then released at one instant.

Each component is a job (group `ensemble.NAME`) pinned to its worker and marked with a gate:
the worker puts its files in place, spawns it held at a start line, and reports Ready. A
component takes no cores unless it asks for some, so every component of a stage is placed at
once, however many its host has. When every component of a stage is ready, the server picks
an instant a little ahead, converts it into each worker's own clock (offsets estimated by
NTP-style probes just before), and sends Release. Components report the instant they really
passed the line, so skew is measured, not assumed. Outcomes come from the ordinary job
machinery: leases, results, logs.

A component's timeout counts from the moment its preparation begins; the run's timeout from
the run's start. When the waited-for components are over, services (wait = false) are killed,
unless the run leaves them running (a run of services only, or --no-kill): it is then
`detached` until they end or `stop` (a cancel) ends them. Every component that did not succeed
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from shoal.core.errors import InputError, NotFound, StoreUnavailable
from shoal.core.models import FINAL_STATES, TIME_LIMIT_REASON, JobSpec, JobState
from shoal.core.protocol import ReadyItem, Release, StartedItem, TimeProbe, TimeReply
from shoal.core.states import Transition
from shoal.ensemble.clock import Estimate, Sample, estimate, sample
from shoal.ensemble.loaders.common import safe_name
from shoal.ensemble.spec import LOCALHOST, Component
from shoal.ensemble.states import COMPONENT_FAILURES, ComponentState, RunState
from shoal.server.ensemble_runs import (
    ComponentRun,
    EnsembleRequest,
    Run,
    seconds_text,
)
from shoal.server.events import EnsembleStageStarted
from shoal.server.service import Service
from shoal.server.workers import WorkerState
from shoal.store.ensemble_runs import (
    last_run_id,
    run_snapshot,
    run_summaries,
    runs_in,
    save_run,
)

log = logging.getLogger("shoal.server")
C, R = ComponentState, RunState

PROBES = 8
PROBE_GAP_SECONDS = 0.01
MIN_LEAD_SECONDS = 0.05  # how far ahead of "now" a release is set, at least
ENDS_WAIT_SECONDS = 15.0  # how long a run's end waits for what it killed to report its end

__all__ = ["EnsembleRequest", "EnsembleRunner", "group_name", "resolve_worker"]


def group_name(ensemble_name: str) -> str:
    """The group of an ensemble's components; a NetJobs label may hold spaces and such."""
    return f"ensemble.{safe_name(ensemble_name)}"


def resolve_worker(component: Component, workers: list[WorkerState],
                   placement: dict[str, str] | None = None) -> WorkerState:
    """A host names a worker by its name, its host name or its address; `placement` maps the
    hosts the client resolved itself (localhost) to a worker's name."""
    connected = [w for w in workers if w.connected and w.accepting]
    wanted = (placement or {}).get(component.host)
    if wanted is not None:
        found = [w for w in connected if w.name == wanted]
        if found:
            return found[0]
        raise InputError(f"component {component.name}: host {component.host} is worker "
                         f"{wanted}, which is not connected")
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


def check_resources(components: list[ComponentRun],
                    starts_after: Mapping[int, str] | None = None) -> None:
    """Refuse, at once, components that ask for more than their worker has while they could
    be running together: those of one stage, with every earlier stage's but those that must
    have ended (a stage that starts once the one before has "finished" waits for all of it)."""
    stages = sorted({c.spec.stage for c in components})
    following = dict(pairwise(stages))
    starts_after = starts_after or {}

    def ended_by(stage: int, now: int) -> bool:
        nxt = following.get(stage)
        return nxt is not None and nxt <= now and starts_after.get(nxt) == "finished"

    for now in stages:
        cores: dict[str, int] = defaultdict(int)
        memory: dict[str, int] = defaultdict(int)
        workers: dict[str, WorkerState] = {}
        for component in components:
            stage = component.spec.stage
            if stage > now or ended_by(stage, now):
                continue
            workers[component.worker.name] = component.worker
            cores[component.worker.name] += component.spec.cores or 0
            memory[component.worker.name] += component.spec.memory_bytes or 0
        for name, worker in workers.items():
            if cores[name] > worker.cores:
                raise InputError(f"components on worker {name} ask for {cores[name]} "
                                 f"cores together; it offers {worker.cores}")
            if worker.memory_bytes and memory[name] > worker.memory_bytes:
                raise InputError(f"components on worker {name} ask for "
                                 f"{memory[name] >> 20} MiB of memory together; it offers "
                                 f"{worker.memory_bytes >> 20} MiB")


class EnsembleRunner:
    def __init__(self, service: Service):
        self.service = service
        self.runs: dict[int, Run] = {}
        self._by_job: dict[int, ComponentRun] = {}
        self._clock_samples: dict[int, list[Sample]] = {}
        self._probe_id = 0
        service.listeners.append(self._on_transitions)
        service.ensemble_messages = self._on_message
        # Runs going when the server last stopped: they ended with it.
        live = [state.value for state in R if not state.is_final]
        for run_id, owner, summary, snapshot in runs_in(service.store, live):
            # Their jobs live on (a server restart kills none): `stop` still reaches them.
            ended = {"state": R.ABANDONED.value, "services_running": 0,
                     "reason": "the server stopped during the run; `shoal ensemble stop` "
                               "stops what it left running"}
            self._keep(run_id, owner, {**summary, **ended}, {**snapshot, **ended})
        self._last_id = last_run_id(service.store)

    # ---- public ------------------------------------------------------------------------------

    def start(self, request: EnsembleRequest, owner: str = "") -> int:
        ensemble = request.ensemble
        workers = list(self.service.reactor.workers.values())
        components = [ComponentRun(spec, resolve_worker(spec, workers, request.placement),
                                   timeout_seconds=spec.timeout_seconds
                                   or ensemble.timeout_seconds)
                      for spec in ensemble.components]
        unknown = set(request.manifests) - {c.name for c in ensemble.components}
        if unknown:
            raise InputError(f"files for unknown components: {', '.join(sorted(unknown))}")
        check_resources(components, ensemble.stage_starts_after)
        self._last_id += 1
        run = Run(self._last_id, request, components, owner=owner, saver=self._save)
        self.runs[run.run_id] = run
        self._save(run)
        for component in components:
            component.run_id = run.run_id
        run.task = asyncio.create_task(self._drive(run), name=f"ensemble-{run.run_id}")
        return run.run_id

    def snapshot(self, run_id: int, owner: str | None = None) -> dict[str, object]:
        kept = self._past(run_id, owner)
        return kept if kept is not None else self._run(run_id, owner).snapshot()

    def list_runs(self, name: str | None = None,
                  owner: str | None = None) -> list[dict[str, object]]:
        """Earlier runs as kept, then this server's as they are now."""
        past = [summary for summary in run_summaries(self.service.store, name, owner)
                if summary["run_id"] not in self.runs]
        return past + [r.summary() for r in self.runs.values()
                       if (name is None or r.name == name) and owner in (None, r.owner)]

    async def wait_for_change(self, run_id: int, since: int, timeout: float,
                              owner: str | None = None) -> None:
        if self._past(run_id, owner) is not None:
            return  # it ended before this server started: it will not change
        run = self._run(run_id, owner)
        if run.version != since:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.changed.wait(), timeout)

    def cancel(self, run_id: int, owner: str | None = None) -> None:
        """Stop a run: one still going is cancelled; a detached one's services are stopped;
        the jobs that one of an earlier life of the server left running are killed."""
        past = self._past(run_id, owner)
        if past is not None:
            held = self.service.reactor.jobs  # every live job is held; ended ones need nothing
            ids = [c["job_id"] for c in past.get("components", []) if c.get("job_id") in held]
            if ids:
                self.service.act("kill", ids, None, f"run {run_id} stopped "
                                 "(shoal ensemble stop)", owner=owner)
            return
        run = self._run(run_id, owner)
        if run.task is not None and not run.task.done():
            if run.stop_reason is None:
                run.stop_reason = ("stopped (shoal ensemble stop)" if run.state is R.DETACHED
                                   else "cancelled")
            run.task.cancel()

    def _past(self, run_id: int, owner: str | None) -> dict[str, Any] | None:
        """A run of an earlier life of the server, as kept (None: none, or one of this one)."""
        if run_id in self.runs:
            return None
        return run_snapshot(self.service.store, run_id, owner)

    def _save(self, run: Run) -> None:
        self._keep(run.run_id, run.owner, run.summary(), run.snapshot())

    def _keep(self, run_id: int, owner: str, summary: dict[str, Any],
              snapshot: dict[str, Any]) -> None:
        try:
            save_run(self.service.store, run_id, owner, summary, snapshot)
        except StoreUnavailable as exc:  # the run goes on; only its record after a restart is late
            log.warning("ensemble run %d not saved: %s", run_id, exc)

    def _run(self, run_id: int, owner: str | None = None) -> Run:
        """The run; with `owner`, only if they started it."""
        run = self.runs.get(run_id)
        if run is None or (owner is not None and run.owner != owner):
            raise NotFound(f"ensemble run {run_id} does not exist")
        return run

    # ---- driving a run -----------------------------------------------------------------------

    async def _drive(self, run: Run) -> None:
        ensemble = run.request.ensemble
        timeouts = asyncio.create_task(self._enforce_timeouts(run))
        final = R.FAILED
        try:
            if not run.request.no_kill:
                self._kill_previous(run)
            run.note(f"{len(run.components)} components in {len(ensemble.stages)} stages")
            try:
                await self._stages_and_outcome(run)
            except TimeoutError:
                assert ensemble.run_timeout_seconds is not None
                run.reason = (f"the run's timeout ({seconds_text(ensemble.run_timeout_seconds)})"
                              f" passed {self._where(run)}")
                run.note(run.reason)
            else:
                final = self._outcome(run)
                services = run.live_services()
                waits = any(c.spec.wait for c in run.components)
                if services and (run.request.no_kill or not waits):
                    run.outcome = final
                    run.move(R.DETACHED)
                    run.note(f"{len(services)} services left running: stop them with "
                             f"`shoal ensemble stop {run.run_id}`")
                    await asyncio.gather(*(c.ended.wait() for c in services))
                    run.note("every service left running has ended")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            run.reason = run.stop_reason or "cancelled"
            run.note(run.reason)
            final = run.outcome if run.state is R.DETACHED and run.outcome else R.CANCELLED
        except Exception as exc:  # a bug must not leave components running
            log.exception("ensemble run failed")
            run.reason = f"internal error: {exc}"
            run.note(run.reason)
            final = R.FAILED
        finally:
            timeouts.cancel()
            self._end_components(run, final)
            await self._wait_for_ends(run)
            run.ended_at = time.time()
            run.note(f"ended: {final.value}" + (f" ({run.reason})" if run.reason else ""))
            run.move(final)  # last: whoever follows the run sees everything with it

    async def _stages_and_outcome(self, run: Run) -> None:
        ensemble = run.request.ensemble
        deadline = (time.monotonic() + ensemble.run_timeout_seconds
                    if ensemble.run_timeout_seconds else None)
        async with asyncio.timeout_at(_loop_time(deadline)):
            for stage in ensemble.stages:
                if not await self._run_stage(run, stage):
                    return
            await self._wait_for_outcome(run)

    def _outcome(self, run: Run) -> RunState:
        """How the run ended for what it waited for (its state once nothing more is to run)."""
        if run.outcome is R.ABANDONED:
            return R.ABANDONED
        ensemble = run.request.ensemble
        succeeded = sum(1 for c in run.components if c.spec.wait and c.state is C.DONE)
        if succeeded < ensemble.required:
            failed = [c for c in run.components if c.spec.wait and c.state is not C.DONE]
            run.reason = (f"{succeeded} of the {ensemble.required} components that must succeed "
                          f"did ({_names(failed)} did not)")
            return R.FAILED
        unstarted = [c for c in run.components if not c.spec.wait
                     and c.state in COMPONENT_FAILURES and c.started_at is None]
        if unstarted:
            run.reason = f"services could not start: {_names(unstarted)}"
            return R.FAILED
        return R.DONE

    def _where(self, run: Run) -> str:
        """Where a run stood, for the reason it was cut short."""
        if run.stage is None:
            return "before its first stage"
        members = [c for c in run.components if c.spec.stage == run.stage]
        if run.state is R.PREPARING:
            ready = sum(1 for c in members if c.state is C.READY)
            return f"while stage {run.stage} was preparing ({ready} of {len(members)} ready)"
        return f"during stage {run.stage}"

    def _kill_previous(self, run: Run) -> None:
        for other in self.runs.values():
            if other is not run and other.name == run.name and other.owner == run.owner \
                    and other.task is not None and not other.task.done():
                run.note(f"stopping what is still running from run {other.run_id}")
                other.stop_reason = f"replaced by run {run.run_id}"
                other.task.cancel()
        # Another user's run of that name is theirs: only the owner's components go.
        self.service.act("kill", None, group_name(run.name), f"replaced by run {run.run_id}",
                         owner=run.owner)

    async def _run_stage(self, run: Run, stage: int) -> bool:
        ensemble = run.request.ensemble
        members = [c for c in run.components if c.spec.stage == stage]
        run.stage = stage
        run.move(R.PREPARING)
        run.note(f"stage {stage}: preparing {len(members)} components")
        await self._probe_clocks({c.worker.id for c in members})
        self._add_jobs(run, members)
        await asyncio.gather(*(c.ready.wait() for c in members))
        ready = [c for c in members if c.state is C.READY]
        if len(ready) < len(members):
            run.note(f"stage {stage}: {len(members) - len(ready)} components failed to prepare")
        if self._abandon_if_hopeless(run):
            return False
        run.move(R.RUNNING)
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
        self.service.events.emit(EnsembleStageStarted(run.run_id, run.name, stage, len(started),
                                                      spread, time.time()))
        run.note(f"stage {stage}: {len(started)} started"
                 + (f", spread {spread * 1000:.3f} ms" if spread is not None else ""))
        next_stages = [s for s in ensemble.stages if s > stage]
        if next_stages and ensemble.stage_starts_after.get(next_stages[0]) == "finished":
            await asyncio.gather(*(c.ended.wait() for c in members))
            if self._abandon_if_hopeless(run):
                return False
        return True

    def _add_jobs(self, run: Run, members: list[ComponentRun]) -> None:
        ensemble = run.request.ensemble
        specs = []
        for component in members:
            spec = component.spec
            files = [entry.model_dump() for entry in run.request.manifests.get(spec.name, [])]
            specs.append(JobSpec(
                cmd=spec.command, cwd=spec.base_dir or "", env=dict(spec.env),
                name=f"{ensemble.name}/{spec.name}",
                group=group_name(ensemble.name),
                cores=spec.cores or 0, memory_bytes=spec.memory_bytes or 0,
                on_worker=component.worker.name,
                # The worker's limit counts from the start; the run's (below) from preparing.
                time_limit_seconds=component.timeout_seconds, gate=True,
                files=files, always_copy=run.request.always_copy,
            ))
        answer = self.service.add(specs, owner=run.owner)
        now, clock = time.time(), time.monotonic()
        for component, job_id in zip(members, answer["ids"], strict=True):
            component.job_id = job_id
            component.preparing_at = now
            if component.timeout_seconds is not None:
                component.deadline = clock + component.timeout_seconds
            self._by_job[job_id] = component
            if component.state is C.PENDING:  # it may have ended already, as its job was added
                component.move(C.PREPARING)
        run.touch()

    async def _enforce_timeouts(self, run: Run) -> None:
        """Kill each component whose timeout has passed since its preparation began."""
        while True:
            changed = run.changed
            clock = time.monotonic()
            expired = [c for c in run.components if c.deadline is not None
                       and c.deadline <= clock and c.state.is_live and c.timed_out is None]
            for component in expired:
                assert component.timeout_seconds is not None and component.job_id is not None
                component.timed_out = (f"timed out after {seconds_text(component.timeout_seconds)}"
                                       f"{self._timeout_detail(component)}")
                self.service.act("kill", [component.job_id], None, component.timed_out)
            upcoming = [c.deadline for c in run.components if c.deadline is not None
                        and c.deadline > clock and c.state.is_live]
            wait = min(upcoming) - clock if upcoming else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    def _timeout_detail(self, component: ComponentRun) -> str:
        """Where a component stood when its time ran out, if it had not started."""
        job = self.service.reactor.jobs.get(component.job_id or 0)
        if component.state is C.PREPARING and job is not None and job.state is JobState.QUEUED:
            why = self.service.reactor.pending_reason(job) or "waiting for its worker"
            return f", preparing: not yet placed on worker {component.worker.name} ({why})"
        if component.state is C.PREPARING:
            return (f", preparing on worker {component.worker.name}: its files were still "
                    "being put in place")
        if component.state is C.READY:
            return (f", held at the start line: the rest of stage {component.spec.stage} was "
                    "not ready")
        return ""

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
                if self._abandon_if_hopeless(run):
                    return
        finally:
            for waiter in pending:
                waiter.cancel()

    def _abandon_if_hopeless(self, run: Run) -> bool:
        """Abandon the run once too few waited-for components can still succeed."""
        ensemble = run.request.ensemble
        waited = [c for c in run.components if c.spec.wait]
        failed = [c for c in waited if c.state in COMPONENT_FAILURES]
        if len(waited) - len(failed) >= ensemble.required:
            return False
        run.reason = (f"min_hosts is {ensemble.min_hosts}, but {_names(failed)} "
                      f"{'has' if len(failed) == 1 else 'have'} not succeeded: at most "
                      f"{len(waited) - len(failed)} of the {ensemble.required} needed still can")
        run.note(f"abandoning the run: {run.reason}")
        run.outcome = R.ABANDONED
        return True

    def _end_components(self, run: Run, final: RunState) -> None:
        """Kill what the run leaves behind, each with the reason; the stages that never came
        are skipped."""
        if run.stop_reason is not None:  # a stop, a newer run of it, a cancel
            reason = run.stop_reason
        elif final is R.DONE:
            reason = "a service, stopped as the run ended"
        elif final is R.ABANDONED:
            reason = f"stopped: the run was abandoned ({run.reason})"
        else:
            reason = f"stopped: {run.reason or 'the run ' + final.value}"
        by_reason: dict[str, list[int]] = defaultdict(list)
        jobs = self.service.reactor.jobs
        for component in run.components:
            if component.state is C.PENDING:
                component.move(C.SKIPPED, f"its stage never came: {run.reason or 'the run ended'}")
                run.touch()
            elif component.job_id is not None and component.job_id in jobs \
                    and not jobs[component.job_id].state.is_final:
                by_reason[reason].append(component.job_id)
        for why, ids in by_reason.items():
            with contextlib.suppress(Exception):
                self.service.act("kill", ids, None, why)

    async def _wait_for_ends(self, run: Run) -> None:
        """The run ends once what it killed has really ended, so its results are final."""
        waiters = [c.ended.wait() for c in run.components if c.job_id is not None]
        if waiters:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*waiters), ENDS_WAIT_SECONDS)

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
            self._ready(message)

    def _ready(self, message: ReadyItem) -> None:
        component = self._by_job.get(message.job_id)
        if component is None or component.state is not C.PREPARING:
            return
        component.lease_id = message.lease_id
        component.cwd = message.cwd
        component.ready_at = time.time()
        component.copied_files = message.copied_files
        component.skipped_files = message.skipped_files
        component.copied_bytes = message.copied_bytes
        component.move(C.READY)
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
        if component is None or component.state not in (C.PREPARING, C.READY):
            return
        offset = self.clock(component.worker.id).offset
        component.started_at = worker_started_at - offset
        component.move(C.RUNNING)
        self._touch(component)

    def _ended(self, component: ComponentRun, state: JobState, exit_code: int | None,
               reason: str | None) -> None:
        if component.state.is_final:
            return
        if component.state is C.PENDING:  # its job ended before its run saw it added
            component.move(C.PREPARING)
        component.exit_code = exit_code
        component.ended_at = time.time()
        if state is JobState.DONE:
            component.move(C.DONE)
        elif component.timed_out is not None:
            component.move(C.TIMED_OUT, component.timed_out)
        elif reason == TIME_LIMIT_REASON:
            timeout = seconds_text(component.timeout_seconds or 0)
            component.move(C.TIMED_OUT, f"timed out after {timeout}")
        elif state is JobState.CANCELLED:
            component.move(C.KILLED, reason)
        else:
            component.move(C.FAILED, reason)
        self._touch(component)

    def _touch(self, component: ComponentRun) -> None:
        run = self.runs.get(component.run_id)
        if run is not None:
            run.touch()


def _names(components: list[ComponentRun], most: int = 5) -> str:
    names = [c.name for c in components[:most]]
    more = len(components) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "none"


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())

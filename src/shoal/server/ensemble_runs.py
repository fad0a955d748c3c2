"""What the server keeps of an ensemble run while it goes and after: the request, each
component's progress, the run's log, and the snapshot clients read. No driving here (see
`server.ensembles`); every change of state goes through `shoal.ensemble.states.advance`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.core.protocol import FileEntry
from shoal.ensemble.spec import MAX_COMPONENTS, Component, Ensemble
from shoal.ensemble.states import ComponentState, RunState, advance
from shoal.server.workers import WorkerState

log = logging.getLogger("shoal.server")


class EnsembleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ensemble: Ensemble
    manifests: dict[str, list[FileEntry]] = Field(default_factory=dict)
    always_copy: bool = False
    no_kill: bool = False
    start: Literal["synchronized", "sequential"] = "synchronized"
    # Hosts the client has resolved to a worker itself (localhost: a worker on its machine).
    placement: dict[str, str] = Field(default_factory=dict, max_length=MAX_COMPONENTS)


@dataclass
class ComponentRun:
    spec: Component
    worker: WorkerState
    timeout_seconds: float | None = None  # its own, else the ensemble's
    run_id: int = 0  # set once its run exists
    job_id: int | None = None
    lease_id: int | None = None
    state: ComponentState = ComponentState.PENDING
    preparing_at: float | None = None  # when its job was added: its timeout counts from here
    deadline: float | None = None  # monotonic; its timeout, preparation included
    timed_out: str | None = None  # why, once the run killed it for its timeout
    cwd: str | None = None  # where it runs, as its worker said
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

    @property
    def name(self) -> str:
        return self.spec.name

    def move(self, to: ComponentState, reason: str | None = None) -> None:
        self.state = advance(f"component {self.name}", self.state, to)
        if reason is not None:
            self.fail_reason = reason
        if to.is_final:
            for event in (self.ready, self.started, self.ended):
                event.set()
        elif to is ComponentState.READY:
            self.ready.set()
        elif to is ComponentState.RUNNING:
            self.ready.set()
            self.started.set()

    def to_dict(self) -> dict[str, Any]:
        duration = (self.ended_at - self.started_at
                    if self.ended_at is not None and self.started_at is not None else None)
        return {"name": self.spec.name, "host": self.spec.host, "worker": self.worker.name,
                "job_id": self.job_id, "stage": self.spec.stage, "wait": self.spec.wait,
                "state": self.state.value, "exit_code": self.exit_code, "cwd": self.cwd,
                "timeout_seconds": self.timeout_seconds, "preparing_at": self.preparing_at,
                "ready_at": self.ready_at,
                "started_at": self.started_at, "start_skew_seconds": self.start_skew_seconds,
                "ended_at": self.ended_at, "duration_seconds": duration,
                "copied_files": self.copied_files, "skipped_files": self.skipped_files,
                "copied_bytes": self.copied_bytes, "fail_reason": self.fail_reason}


@dataclass
class Run:
    run_id: int
    request: EnsembleRequest
    components: list[ComponentRun]
    state: RunState = RunState.PREPARING
    # While detached: how it ended for what it waited for (its final state, once its services end).
    outcome: RunState | None = None
    reason: str | None = None  # why it failed, was abandoned, cancelled or stopped
    stop_reason: str | None = None  # set by whoever cancels its task: a stop, a newer run
    stage: int | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    version: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    owner: str = ""  # who started it: its components are their jobs
    saver: Callable[[Run], None] | None = None  # keeps its snapshot when its state changes

    @property
    def name(self) -> str:
        return self.request.ensemble.name

    def move(self, to: RunState) -> None:
        if to is not self.state:
            self.state = advance(f"ensemble run {self.run_id}", self.state, to)
            self.touch()
            if self.saver is not None:
                self.saver(self)

    def note(self, message: str) -> None:
        self.log.append({"at": time.time(), "message": message})
        log.info("ensemble %s #%d: %s", self.name, self.run_id, message)
        self.touch()

    def touch(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def live_services(self) -> list[ComponentRun]:
        return [c for c in self.components if not c.spec.wait and c.state.is_live]

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "state": self.state.value,
                "outcome": self.outcome.value if self.outcome else None, "reason": self.reason,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "component_count": len(self.components),
                "services_running": len(self.live_services())}

    def snapshot(self) -> dict[str, Any]:
        return {**self.summary(), "version": self.version, "stage": self.stage,
                "components": [c.to_dict() for c in self.components],
                "stages": list(self.stages), "log": list(self.log)}


def seconds_text(seconds: float) -> str:
    """90 -> '1m30s', 2.5 -> '2.5s': durations in messages."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{rest}s" if rest else "")

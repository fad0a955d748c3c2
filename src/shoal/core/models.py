"""The records shoal keeps: job specs (what users add) and jobs (what the server tracks)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CMD_BYTES = 128 * 1024
MAX_ENV_ITEMS = 512
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
DEPENDENCY_RE = re.compile(r"^(\d+|group:[A-Za-z0-9_.:@+-]{1,128})$")
LIMIT_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}(:\d{1,9})?$")
RESERVED_RESOURCES = frozenset({"cores", "memory", "gpus"})
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class JobState(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    DELAYED = "delayed"
    RUNNING = "running"
    LOST = "lost"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


def parse_memory(text: str | int) -> int:
    """'8G' -> bytes. Bare numbers are megabytes, as in wr and Slurm."""
    if isinstance(text, int):
        return text * 1024**2
    match = _MEMORY_RE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (examples: 512M, 8G)")
    number, unit = match.groups()
    multiplier = _MEMORY_UNITS[unit.lower()] if unit else 1024**2
    return int(float(number) * multiplier)


def parse_duration(text: str | float) -> float:
    """'1h', '30m', '90s', '90', or wr's '1h30m' -> seconds. Bare numbers are seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION_RE.match(text)
    if match:
        number, unit = match.groups()
        return float(number) * _DURATION_UNITS[unit.lower() if unit else None]
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s|d)", text.strip().lower())
    if parts and "".join(n + u for n, u in parts) == text.strip().lower():
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 1h30m)")


class JobSpec(BaseModel):
    """One job as a user asks for it. Unknown fields are refused, so typos surface."""

    model_config = ConfigDict(extra="forbid")

    cmd: str = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    group: str = "default"
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    retries: int = Field(default=0, ge=0, le=1000)
    cores: int = Field(default=1, ge=1, le=100_000)
    memory_bytes: int = Field(default=0, ge=0)
    time_seconds: float | None = Field(default=None, gt=0)
    time_limit_seconds: float | None = Field(default=None, gt=0)
    gpus: int = Field(default=0, ge=0, le=1024)
    resources: dict[str, int] = Field(default_factory=dict)
    req_group: str | None = None
    grow_memory: bool = False
    after: list[str] = Field(default_factory=list)
    after_any: list[str] = Field(default_factory=list)
    limits: list[str] = Field(default_factory=list)
    on_worker: str | None = None
    # Ensemble components: prepared, held at a start line, released by the orchestrator.
    gate: bool = False
    files: list[dict[str, Any]] = Field(default_factory=list)  # FileEntry objects
    always_copy: bool = False

    @field_validator("cmd")
    @classmethod
    def _cmd_size(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command is empty")
        if len(value.encode()) > MAX_CMD_BYTES:
            raise ValueError(f"command is longer than {MAX_CMD_BYTES} bytes")
        if "\x00" in value:
            raise ValueError("command contains a NUL byte")
        return value

    @field_validator("group")
    @classmethod
    def _group_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("group names are 1-128 characters of letters, digits and _.:@+-")
        return value

    @field_validator("env")
    @classmethod
    def _env_shape(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_ITEMS:
            raise ValueError(f"more than {MAX_ENV_ITEMS} environment variables")
        for key in value:
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"bad environment variable name {key!r}")
        return value

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name, amount in value.items():
            if not _NAME_RE.match(name) or name in RESERVED_RESOURCES:
                raise ValueError(f"bad resource name {name!r}")
            if amount < 1:
                raise ValueError(f"resource {name}: amount must be at least 1")
        return value

    @field_validator("after", "after_any")
    @classmethod
    def _dependency_shape(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not DEPENDENCY_RE.match(entry):
                raise ValueError(f"{entry!r} is neither a job id nor group:NAME")
        return value

    @field_validator("limits")
    @classmethod
    def _limit_shape(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not LIMIT_RE.match(entry):
                raise ValueError(f"{entry!r} is not a limit name (NAME, or NAME:N to set its cap)")
        return value

    @property
    def key(self) -> tuple[str, str]:
        """Two adds of the same (cmd, cwd) are the same job."""
        return (self.cmd, self.cwd or "")


@dataclass(slots=True)
class Job:
    """A job as the server tracks it. Changed only through core.states.transition."""

    id: int
    cmd: str
    cwd: str
    env: dict[str, str]
    group: str
    priority: int
    retries: int
    cores: int
    memory_bytes: int
    time_limit_seconds: float | None
    time_seconds: float | None = None
    req_group: str | None = None
    name: str | None = None
    gpus: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    grow_memory: bool = False
    requirements_source: str | None = None
    dependencies: list[str] = field(default_factory=list)
    dependencies_any: list[str] = field(default_factory=list)
    gate: bool = False
    files: list[dict[str, Any]] = field(default_factory=list)
    always_copy: bool = False
    limits: list[str] = field(default_factory=list)
    on_worker: str | None = None
    owner: str = ""  # the name of the token that added it; users see only their own
    state: JobState = JobState.QUEUED
    fail_reason: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    lost_attempts: int = 0
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    lease_id: int | None = None
    added_at: float = 0.0
    queued_at: float | None = None
    retry_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        if self.gate:  # every ensemble run starts its components anew: never a duplicate
            return (self.cmd, f"\0component {self.id}")
        return (self.cmd, self.cwd)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape of a job (see docs/api.md). Env values are never exposed."""
        return {
            "id": self.id,
            "name": self.name,
            "cmd": self.cmd,
            "cwd": self.cwd,
            "env": sorted(self.env),
            "group": self.group,
            "priority": self.priority,
            "retries": self.retries,
            "resources": {"cores": self.cores, "memory_bytes": self.memory_bytes,
                          "gpus": self.gpus, "custom": dict(self.resources)},
            "time_seconds": self.time_seconds,
            "time_limit_seconds": self.time_limit_seconds,
            "req_group": self.req_group,
            "requirements_source": self.requirements_source,
            "grow_memory": self.grow_memory,
            "dependencies": list(self.dependencies),
            "dependencies_any": list(self.dependencies_any),
            "limits": list(self.limits),
            "gate": self.gate,
            "on_worker": self.on_worker,
            "state": self.state.value,
            "fail_reason": self.fail_reason,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "lost_attempts": self.lost_attempts,
            "worker": self.worker,
            "host": self.host,
            "pid": self.pid,
            "added_at": self.added_at,
            "queued_at": self.queued_at,
            "retry_at": self.retry_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
        }

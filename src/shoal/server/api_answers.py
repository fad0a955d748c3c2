"""The documented shapes of the API's answers and errors, for its OpenAPI spec.

Kept apart from the routes (api.py), which they only describe.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.core.models import JobState

# ---- errors, as the spec documents them ------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable, machine-readable word: invalid, unauthorized, "
                                  "forbidden, not_found, conflict, too_large, rate_limited, "
                                  "unavailable, ...")
    message: str = Field(description="One line for a person")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


_WHY: dict[int, str] = {
    400: "The request is invalid: a parameter or a body field (named in the message)",
    401: "No valid token: send `Authorization: Bearer TOKEN`",
    403: "The token's role may not do this",
    404: "No such thing, or not one the caller may see",
    408: "The request stalled (its head, or its body between chunks)",
    409: "Valid, but it does not fit the current state",
    413: "The request body is too large",
    429: "Too many requests from this client; retry after `Retry-After` seconds",
    431: "The request head is too large",
    503: "The server cannot write its database (full disk, read-only file)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route, by status code."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        documented[code] = {"model": ErrorBody, "description": _WHY[code]}
    if 429 in documented:
        documented[429]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before the next request",
            "required": True, "schema": {"type": "integer", "minimum": 1}}}
    return documented


# ---- answers, as the spec documents them -----------------------------------------------------
# The handlers below return the service's dicts as they are: validating every job of a
# 100,000-job page through a model would cost more than the page. These models only document
# those dicts (`responses={200: {"model": ...}}` with `response_model=None`); the schema test
# (tests/integration/test_api_schema.py) checks the real answers against them. `extra="allow"`:
# a field may be added without breaking a client, never removed or renamed.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobResources(_Open):
    cores: int
    memory_bytes: int
    gpus: int
    custom: dict[str, int]


class JobRecord(_Open):
    """The job object (docs/api.md, "The job object")."""

    id: int
    name: str | None
    cmd: str
    cwd: str
    env: list[str] = Field(description="The names of the variables set; never their values")
    owner: str
    group: str
    priority: int
    retries: int
    resources: JobResources
    time_seconds: float | None
    time_limit_seconds: float | None
    req_group: str | None
    requirements_source: str | None
    grow_memory: bool
    dependencies: list[str]
    dependencies_any: list[str]
    limits: list[str]
    gate: bool
    on_worker: str | None
    state: JobState
    pending_reason: str | None
    gpu_ids: list[str]
    fail_reason: str | None
    exit_code: int | None
    attempts: int
    lost_attempts: int
    worker: str | None
    host: str | None
    pid: int | None
    added_at: float
    queued_at: float | None
    retry_at: float | None
    started_at: float | None
    ended_at: float | None
    wall_seconds: float | None
    cpu_seconds: float | None
    peak_rss_bytes: int | None


class CapturedOutput(_Open):
    head: str
    tail: str
    total_bytes: int


class Attempt(_Open):
    attempt: int
    lease_id: int
    worker: str | None
    host: str | None
    pid: int | None
    started_at: float | None
    ended_at: float | None
    outcome: Literal["exited", "killed", "time_limit", "memory_limit", "spawn_error"] | None
    exit_code: int | None
    wall_seconds: float | None
    cpu_seconds: float | None
    reason: str | None = Field(default=None, description="why this attempt ended or was lost")
    peak_rss_bytes: int | None


class JobDetail(JobRecord):
    stdout: CapturedOutput
    stderr: CapturedOutput
    attempt_history: list[Attempt]


class JobPage(_Open):
    jobs: list[JobRecord]
    total: int | None = Field(description="Every job that matches, not just this page (null "
                                          "when a filter other than state and group is given)")
    next_after_id: int | None = Field(description="Pass as after_id for the next page; null "
                                                  "on the last one")


class KeptLogs(_Open):
    """The head and tail the server kept."""

    job_id: int
    stream: Literal["stdout", "stderr"]
    state: JobState
    head: str
    tail: str
    total_bytes: int
    live: Literal[False]


class LiveLogs(_Open):
    """A running job's output from `offset`, as its worker has it now."""

    job_id: int
    stream: Literal["stdout", "stderr"]
    state: Literal["running"]
    live: Literal[True]
    offset: int
    data: str
    next_offset: int
    total_bytes: int | None


class StatusCounts(_Open):
    version: int = Field(description="Changes whenever any job changes state")
    totals: dict[str, int]
    groups: dict[str, dict[str, int]]


class LimitInfo(_Open):
    name: str
    cap: int | None
    running: int
    queued: int


class LimitList(_Open):
    limits: list[LimitInfo]


class ServerInfo(_Open):
    version: str
    draining: bool
    started_at: float
    jobs: int
    live_jobs: int = Field(description="Waiting, queued, delayed, running or lost")
    history_jobs: int = Field(description="Done, failed or cancelled: kept on disk only")
    backlog_jobs: int = Field(description="Queued behind the next jobs to run (the queue "
                              "window), kept on disk until the window drains")
    database_bytes: int
    running: int
    workers: int
    store_error: str | None


class Draining(_Open):
    draining: bool
    running: int


class Stopping(_Open):
    stopping: bool


class MissingBlobs(_Open):
    missing: list[str]


class StoredBlob(_Open):
    sha256: str
    size: int


class WorkerResources(_Open):
    cores: int
    memory_bytes: int
    gpus: list[str]
    custom: dict[str, int]


class WorkerUse(_Open):
    cores: int
    memory_bytes: int
    gpus: int
    custom: dict[str, int]


class WorkerInfo(_Open):
    id: int
    name: str
    host: str
    address: str | None
    connected: bool
    accepting: bool
    labels: dict[str, str]
    resources: WorkerResources
    used: WorkerUse
    running: int
    connected_at: float
    last_seen: float
    containment: str | None  # how its jobs are kept: cgroup-v1, cgroup-v2 or process-group
    provider: str | None = None  # how it was started: "ssh", "slurm:<alloc>"; null: by hand
    deadline: float | None = None  # when it stops (its allocation's end); null: no limit


class WorkerList(_Open):
    workers: list[WorkerInfo]


class ComponentInfo(_Open):
    name: str
    host: str
    worker: str
    job_id: int | None
    stage: int
    wait: bool
    state: str
    exit_code: int | None
    ready_at: float | None
    started_at: float | None
    start_skew_seconds: float | None
    ended_at: float | None
    duration_seconds: float | None
    copied_files: int
    skipped_files: int
    copied_bytes: int
    fail_reason: str | None = Field(description="Why it did not succeed, when it did not")
    cwd: str | None = Field(default=None, description="Where it runs, as its worker said")
    timeout_seconds: float | None = Field(
        default=None, description="Its timeout, counted from when its preparation began")
    preparing_at: float | None = None


_RUN_STATE = ("preparing, running, detached (its waited-for components are over; services it "
              "left running are up), done, failed, abandoned or cancelled")


class EnsembleRun(_Open):
    run_id: int
    name: str
    state: str = Field(description=_RUN_STATE)
    outcome: str | None = Field(
        default=None, description="While detached (and after): how what it waited for ended")
    reason: str | None = Field(default=None, description="Why it failed, was abandoned, "
                                                         "cancelled or stopped")
    services_running: int = 0
    version: int
    stage: int | None
    started_at: float
    ended_at: float | None
    components: list[ComponentInfo]
    stages: list[dict[str, Any]]
    log: list[dict[str, Any]]


class EnsembleRunSummary(_Open):
    run_id: int
    name: str
    state: str = Field(description=_RUN_STATE)
    outcome: str | None = None
    reason: str | None = None
    started_at: float
    ended_at: float | None
    component_count: int = 0
    services_running: int = Field(default=0, description="Services it left running, still up")


class EnsembleRunList(_Open):
    runs: list[EnsembleRunSummary]


class Cancelled(_Open):
    cancelled: bool


class AllocCounts(_Open):
    queued: int
    running: int
    finished: int
    failed: int


class AllocQueueSummary(_Open):
    """An allocation queue (docs/deployment.md, "Slurm")."""

    name: str
    provider: str  # slurm or command
    state: Literal["active", "paused"]
    paused_reason: str | None
    max_workers: int
    workers_per_alloc: int
    backlog: int
    time_limit_seconds: float
    idle_timeout_seconds: float
    cores: int | None
    memory_bytes: int | None
    gpus: int | None
    engine_args: list[str]
    allocations: AllocCounts  # by state
    workers: int  # workers of its allocations queued or running
    created_at: float


class AllocQueueList(_Open):
    queues: list[AllocQueueSummary]


class AllocationInfo(_Open):
    id: int
    queue: str
    engine_id: str  # the engine's id: a Slurm job id, or what the submit command printed
    state: str  # queued, running, finished, failed
    workers: int
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    reason: str | None
    work_dir: str | None  # its script, job id and output files
    joined: int  # its workers that joined the server


class AllocEvent(_Open):
    at: float
    message: str


class AllocQueueInfo(AllocQueueSummary):
    submit_failures: int
    start_failures: int
    last_error: str | None
    directory: str
    history: list[AllocationInfo]  # every allocation it has submitted, oldest first
    events: list[AllocEvent]


class AllocLog(_Open):
    queue: str
    allocation: int
    stream: str
    path: str
    total_bytes: int
    data: str  # the file's end


class AllocRemoved(_Open):
    name: str
    removed: bool
    cancelled: int


def answers(model: Any, *codes: int, status: int = 200) -> dict[str, Any]:
    """A route whose answer `model` documents (see above), and its error codes."""
    return {"response_model": None,
            "responses": {status: {"model": model}, **errors(*codes)}}

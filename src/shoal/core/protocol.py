"""Messages between server and worker, typed by direction. No raw dicts past the codec."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shoal.core.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Message):
    """What a worker offers. GPUs are offered as items (their ids), named resources by amount."""

    cores: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    gpus: list[str] = Field(default_factory=list, max_length=1024)
    custom: dict[str, int] = Field(default_factory=dict)


# ---- worker -> server -------------------------------------------------------------------


class RunningAttempt(_Message):
    """An attempt a (re)connecting worker is still running."""

    job_id: int
    lease_id: int
    pid: int | None = None
    started_at: float
    gpus: list[str] = Field(default_factory=list)


class Register(_Message):
    type: Literal["register"] = "register"
    protocol_version: int
    name: str = Field(min_length=1, max_length=128)
    host: str = Field(max_length=255)
    resources: Resources
    labels: dict[str, str] = Field(default_factory=dict)
    running: list[RunningAttempt] = Field(default_factory=list)


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"


class Stopping(_Message):
    """The worker is stopping: assign it nothing more."""

    type: Literal["stopping"] = "stopping"


class StartedItem(_Message):
    job_id: int
    lease_id: int
    pid: int
    started_at: float  # for a gated attempt: the instant the process itself passed the line


class Started(_Message):
    type: Literal["started"] = "started"
    items: list[StartedItem]


class Captured(_Message):
    """Head and tail of one output stream; `total_bytes` is what the job wrote in all."""

    head: str = ""
    tail: str = ""
    total_bytes: int = 0


Outcome = Literal["exited", "killed", "time_limit", "memory_limit", "spawn_error"]


class AttemptResult(_Message):
    job_id: int
    lease_id: int
    outcome: Outcome
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    started_at: float
    ended_at: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stdout: Captured = Captured()
    stderr: Captured = Captured()
    error: str | None = None


class Finished(_Message):
    type: Literal["finished"] = "finished"
    items: list[AttemptResult]


class ReadyItem(_Message):
    job_id: int
    lease_id: int
    pid: int
    cwd: str  # where it will run (the fresh directory, if one was made)
    copied_files: int = 0
    copied_bytes: int = 0
    skipped_files: int = 0  # already there with the same size and SHA-256


class Ready(_Message):
    """Gated attempts prepared: files in place, process spawned and held at the start line."""

    type: Literal["ready"] = "ready"
    items: list[ReadyItem]


class TimeReply(_Message):
    """Answer to a TimeProbe: when it arrived and when this reply left, in the worker's clock."""

    type: Literal["time_reply"] = "time_reply"
    probe_id: int
    server_sent_at: float
    worker_received_at: float
    worker_replied_at: float


class OutputChunk(_Message):
    """Live output of a running attempt, answering a Peek."""

    type: Literal["output"] = "output"
    request_id: int
    lease_id: int
    stream: Literal["stdout", "stderr"]
    offset: int
    data: str
    total_bytes: int
    next_offset: int | None = None  # offset + bytes read (data may hold replacement characters)
    found: bool = True


FromWorker = Annotated[Register | Heartbeat | Stopping | Started | Finished | Ready | TimeReply
                       | OutputChunk, Field(discriminator="type")]

# ---- server -> worker -------------------------------------------------------------------


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    protocol_version: int = PROTOCOL_VERSION
    worker_id: int
    heartbeat_seconds: float
    # How long after the worker's last message the server keeps its attempts for it
    # (lease timeout + lost grace). A worker cut off for longer must assume they are gone.
    hold_seconds: float = 90.0


class Refused(_Message):
    type: Literal["refused"] = "refused"
    reason: str


class FileEntry(_Message):
    """One file or directory to put in place before a component starts. A relative `path` is
    under the component's base directory. Files are fetched by content from the server
    (GET /api/v1/blobs/SHA256) unless the worker already has that exact content there."""

    path: str = Field(min_length=1, max_length=4096)
    kind: Literal["file", "dir"] = "file"
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    size: int = Field(default=0, ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Assignment(_Message):
    job_id: int
    lease_id: int
    cmd: str
    cwd: str
    env: dict[str, str]
    cores: int
    memory_bytes: int
    gpus: list[str] = Field(default_factory=list)  # exactly these: CUDA_VISIBLE_DEVICES
    time_limit_seconds: float | None = None
    # Ensemble components: stage `files`, spawn the command held at a start line, report
    # Ready, and start only on Release. `cwd` empty with a gate: a fresh directory.
    gate: bool = False
    files: list[FileEntry] = Field(default_factory=list)
    always_copy: bool = False

    def __repr__(self) -> str:  # env values are secrets: never in a repr or log
        return f"Assignment(job_id={self.job_id}, lease_id={self.lease_id})"

    __str__ = __repr__


class Assign(_Message):
    type: Literal["assign"] = "assign"
    items: list[Assignment]


class KillOrder(_Message):
    job_id: int
    lease_id: int
    reason: str


class Kill(_Message):
    type: Literal["kill"] = "kill"
    items: list[KillOrder]


class Ack(_Message):
    """The server has durably recorded these finished attempts; the worker may forget them."""

    type: Literal["ack"] = "ack"
    lease_ids: list[int]


class Release(_Message):
    """Open the start line of these gated attempts at `at`, in the worker's own clock."""

    type: Literal["release"] = "release"
    lease_ids: list[int]
    at: float


class TimeProbe(_Message):
    type: Literal["time_probe"] = "time_probe"
    probe_id: int
    server_sent_at: float


class Peek(_Message):
    """Ask for up to `limit` bytes of a running attempt's output from `offset`."""

    type: Literal["peek"] = "peek"
    request_id: int
    lease_id: int
    stream: Literal["stdout", "stderr"]
    offset: int = Field(ge=0)
    limit: int = Field(default=65536, ge=1, le=1 << 20)


ToWorker = Annotated[Welcome | Refused | Assign | Kill | Ack | Release | TimeProbe | Peek,
                     Field(discriminator="type")]

_from_worker: TypeAdapter[FromWorker] = TypeAdapter(FromWorker)
_to_worker: TypeAdapter[ToWorker] = TypeAdapter(ToWorker)


def encode(message: _Message) -> str:
    return message.model_dump_json()


def decode_from_worker(data: str | bytes) -> FromWorker:
    try:
        return _from_worker.validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(f"bad message from worker: {_first_error(exc)}") from None


def decode_to_worker(data: str | bytes) -> ToWorker:
    try:
        return _to_worker.validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(f"bad message from server: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"

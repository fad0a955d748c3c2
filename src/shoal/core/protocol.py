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
    started_at: float


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


FromWorker = Annotated[Register | Heartbeat | Stopping | Started | Finished,
                      Field(discriminator="type")]

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


ToWorker = Annotated[Welcome | Refused | Assign | Kill | Ack, Field(discriminator="type")]

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

"""Messages between server and worker, typed by direction. No raw dicts past the codec."""

from __future__ import annotations

import functools
from collections.abc import KeysView
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shoal.core.errors import ProtocolError
from shoal.core.models import MAX_INT64, MAX_PATH_CHARS, check_path

PROTOCOL_VERSION = 2
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # UTF-8 bytes of one message, either way
MAX_PROTOCOL_ERROR_CHARS = 200  # of a message's text quoted in a ProtocolError
# A worker waits at most this long (times up to 1.5 for jitter) between two connection
# attempts, and less when the server's lost grace is short: it must be back within it.
MAX_RECONNECT_DELAY_SECONDS = 10.0
MAX_HELD_ATTEMPTS = 65_536  # attempts a reconnecting worker may list as still its own

# Numbers a peer sends are bounded: ids and sizes end up in SQLite's 64-bit INTEGER columns,
# times in arithmetic where NaN or infinity would poison every comparison.
Id = Annotated[int, Field(ge=0, le=MAX_INT64)]
Size = Annotated[int, Field(ge=0, le=MAX_INT64)]
Pid = Annotated[int, Field(ge=0, le=2**31 - 1)]
Time = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Label = Annotated[str, Field(max_length=256)]


class _Message(BaseModel):
    # hide_input_in_errors: an Assignment's env values are secrets, never in an error's text.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              defer_build=True)

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """A message from values that were checked already, every field given: what
        `model_construct` makes, without its walk over each field's default and alias: 0.6 µs
        against 3.2 µs, for every job that starts. A message's `type` tag is its own."""
        names, tag = _fields_and_tag(cls)
        if tag is not None and "type" not in values:
            values = {"type": tag, **values}
        if values.keys() != names:
            raise TypeError(f"{cls.__name__}.trusted needs exactly its fields")
        message = cls.__new__(cls)
        object.__setattr__(message, "__dict__", values)
        object.__setattr__(message, "__pydantic_fields_set__", set(values))
        object.__setattr__(message, "__pydantic_extra__", None)
        object.__setattr__(message, "__pydantic_private__", None)
        return message


@functools.cache
def _fields_and_tag(cls: type[_Message]) -> tuple[KeysView[str], str | None]:
    """A message class's field names and its `type` tag, if it has one: read once a class,
    since `model_fields` is a property that pydantic computes at each use."""
    tag = cls.model_fields.get("type")
    return cls.model_fields.keys(), None if tag is None else tag.default


class Resources(_Message):
    """What a worker offers. GPUs are offered as items (their ids), named resources by amount."""

    cores: int = Field(ge=0, le=1_000_000)
    memory_bytes: Size
    gpus: list[Label] = Field(default_factory=list, max_length=1024)
    custom: dict[Label, Size] = Field(default_factory=dict, max_length=1024)


# ---- worker -> server -------------------------------------------------------------------


class RunningAttempt(_Message):
    """An attempt a (re)connecting worker is still running."""

    job_id: Id
    lease_id: Id
    pid: Pid | None = None
    started_at: Time
    gpus: list[Label] = Field(default_factory=list, max_length=1024)


MAX_WORKER_NAME_CHARS = 128


class Register(_Message):
    type: Literal["register"] = "register"
    protocol_version: Id
    name: str = Field(min_length=1, max_length=MAX_WORKER_NAME_CHARS)
    host: str = Field(max_length=255)
    resources: Resources
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=1024)
    # How the worker holds a job's processes together: "cgroup-v1", "cgroup-v2" or
    # "process-group" (setsid children escape it); None from a worker that does not say.
    containment: str | None = Field(default=None, max_length=32)
    # How the worker was started, when not by hand: "ssh", "slurm:<allocation>", ...
    provider: str | None = Field(default=None, max_length=128)
    # Seconds this worker has left before it stops (an allocation's time limit); the server
    # gives it no job whose --time is longer. None: no limit.
    time_left_seconds: Seconds | None = None
    # Drawn at random once per worker process and sent only to the server: with the token it
    # proves, after a reconnect, that this is the process its attempts were given to.
    instance_secret: str = Field(min_length=32, max_length=128, pattern=r"^[0-9a-f]+$",
                                 repr=False)
    running: list[RunningAttempt] = Field(default_factory=list, max_length=MAX_HELD_ATTEMPTS)


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"


class Stopping(_Message):
    """The worker is stopping: assign it nothing more."""

    type: Literal["stopping"] = "stopping"


class StartedItem(_Message):
    job_id: Id
    lease_id: Id
    pid: Pid
    started_at: Time  # for a gated attempt: the instant the process itself passed the line


class Started(_Message):
    type: Literal["started"] = "started"
    items: list[StartedItem]


class Captured(_Message):
    """Head and tail of one output stream; `total_bytes` is what the job wrote in all."""

    head: str = ""
    tail: str = ""
    total_bytes: Size = 0


Outcome = Literal["exited", "killed", "time_limit", "memory_limit", "spawn_error"]


class AttemptResult(_Message):
    job_id: Id
    lease_id: Id
    outcome: Outcome
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    signal: Annotated[int, Field(ge=0, le=1024)] | None = None
    pid: Pid | None = None
    started_at: Time
    ended_at: Time
    wall_seconds: Seconds
    cpu_seconds: Seconds
    peak_rss_bytes: Size
    stdout: Captured = Field(default_factory=Captured)
    stderr: Captured = Field(default_factory=Captured)
    error: str | None = None

    @property
    def never_started(self) -> bool:
        """Killed while the worker still held it (its backlog, or staging files): no process
        ever ran, so it was no attempt."""
        return self.outcome == "killed" and self.pid is None


class Finished(_Message):
    type: Literal["finished"] = "finished"
    items: list[AttemptResult]


class ReadyItem(_Message):
    job_id: Id
    lease_id: Id
    pid: Pid
    cwd: str  # where it will run (the fresh directory, if one was made)
    copied_files: Size = 0
    copied_bytes: Size = 0
    skipped_files: Size = 0  # already there with the same size and SHA-256


class Ready(_Message):
    """Gated attempts prepared: files in place, process spawned and held at the start line."""

    type: Literal["ready"] = "ready"
    items: list[ReadyItem]


class TimeReply(_Message):
    """Answer to a TimeProbe: when it arrived and when this reply left, in the worker's clock."""

    type: Literal["time_reply"] = "time_reply"
    probe_id: Id
    server_sent_at: Time
    worker_received_at: Time
    worker_replied_at: Time


class OutputChunk(_Message):
    """Live output of a running attempt, answering a Peek."""

    type: Literal["output"] = "output"
    request_id: Id
    lease_id: Id
    stream: Literal["stdout", "stderr"]
    offset: Size
    data: str
    total_bytes: Size
    next_offset: Size | None = None  # offset + bytes read (data may hold replacement characters)
    found: bool = True


FromWorker = Annotated[Register | Heartbeat | Stopping | Started | Finished | Ready | TimeReply
                       | OutputChunk, Field(discriminator="type")]

# ---- server -> worker -------------------------------------------------------------------


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    protocol_version: Id = PROTOCOL_VERSION
    worker_id: Id
    heartbeat_seconds: float = Field(gt=0, allow_inf_nan=False)
    # How long after the worker's last message the server keeps its attempts for it
    # (lease timeout + lost grace). A worker cut off for longer must assume they are gone.
    hold_seconds: Seconds = 90.0
    # How long the server waits for a worker that disconnected to come back for its attempts:
    # the worker keeps its reconnect delay well below it.
    lost_grace_seconds: Seconds = 60.0


class Refused(_Message):
    type: Literal["refused"] = "refused"
    reason: str
    # Why a name was refused: "connected", another process has it and answers; "held",
    # another process's jobs wait for it under that name. The worker may try again later.
    name_clash: Literal["connected", "held"] | None = None


class FileEntry(_Message):
    """One file or directory to put in place before a component starts. A relative `path` is
    under the component's base directory. Files are fetched by content from the server
    (GET /api/v1/blobs/SHA256) unless the worker already has that exact content there."""

    path: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS),
                    AfterValidator(lambda path: check_path(path, "the path"))]
    kind: Literal["file", "dir"] = "file"
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    size: Size = 0
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Assignment(_Message):
    job_id: Id
    lease_id: Id
    cmd: str
    cwd: str
    env: dict[str, str]
    cores: int = Field(ge=0, le=1_000_000)
    memory_bytes: Size
    gpus: list[Label] = Field(default_factory=list)  # exactly these: CUDA_VISIBLE_DEVICES
    time_limit_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
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
    job_id: Id
    lease_id: Id
    reason: str


class Kill(_Message):
    type: Literal["kill"] = "kill"
    items: list[KillOrder]


class Ack(_Message):
    """The server has durably recorded these finished attempts; the worker may forget them."""

    type: Literal["ack"] = "ack"
    lease_ids: list[Id]


class Release(_Message):
    """Open the start line of these gated attempts at `at`, in the worker's own clock."""

    type: Literal["release"] = "release"
    lease_ids: list[Id]
    at: Time


class TimeProbe(_Message):
    type: Literal["time_probe"] = "time_probe"
    probe_id: Id
    server_sent_at: Time


class Peek(_Message):
    """Ask for up to `limit` bytes of a running attempt's output from `offset`."""

    type: Literal["peek"] = "peek"
    request_id: Id
    lease_id: Id
    stream: Literal["stdout", "stderr"]
    offset: Size
    limit: int = Field(default=65536, ge=1, le=1 << 20)


ToWorker = Annotated[Welcome | Refused | Assign | Kill | Ack | Release | TimeProbe | Peek,
                     Field(discriminator="type")]


# Built on first use, like the messages themselves (`defer_build`): a `shoal run`, whose worker
# is in the same process, never decodes a message, and building them all costs 50 ms at start.
@functools.cache
def _from_worker() -> TypeAdapter[FromWorker]:
    return TypeAdapter(FromWorker)


@functools.cache
def _to_worker() -> TypeAdapter[ToWorker]:
    return TypeAdapter(ToWorker)


def encode(message: _Message) -> str:
    # A refusal's optional `name_clash` is left out when unset: workers of this protocol
    # version from before it was added refuse unknown fields, and must still read the reason.
    if isinstance(message, Refused) and message.name_clash is None:
        return message.model_dump_json(exclude={"name_clash"})
    return message.model_dump_json()


def decode_from_worker(data: str | bytes) -> FromWorker:
    """A message a worker sent, or ProtocolError: whatever the bytes, nothing else is raised."""
    try:
        return _from_worker().validate_json(_checked(data, "worker"))
    except ValidationError as exc:
        raise ProtocolError(f"bad message from worker: {_first_error(exc)}") from None


def decode_to_worker(data: str | bytes) -> ToWorker:
    """A message the server sent, or ProtocolError."""
    try:
        return _to_worker().validate_json(_checked(data, "server"))
    except ValidationError as exc:
        raise ProtocolError(f"bad message from server: {_first_error(exc)}") from None


def _checked(data: str | bytes, sender: str) -> bytes:
    """The message as UTF-8 bytes, within MAX_MESSAGE_BYTES."""
    if isinstance(data, str):
        if len(data) > MAX_MESSAGE_BYTES:  # cheap: never fewer bytes than characters
            raise ProtocolError(f"bad message from {sender}: larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            data = data.encode()
        except UnicodeEncodeError:
            raise ProtocolError(f"bad message from {sender}: not valid Unicode") from None
    elif not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"bad message from {sender}: not text but {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"bad message from {sender}: larger than {MAX_MESSAGE_BYTES} bytes")
    return bytes(data)


def _first_error(exc: ValidationError) -> str:
    """One line, and short: the message may quote what the peer sent, which is anything."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    text = f"{where}: {err.get('msg', 'invalid')}"
    if len(text) > MAX_PROTOCOL_ERROR_CHARS:
        text = text[:MAX_PROTOCOL_ERROR_CHARS] + "..."
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)

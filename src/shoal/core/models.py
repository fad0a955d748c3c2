"""The records shoal keeps: job specs (what users add) and jobs (what the server tracks)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --- limits on what a client can submit (docs cite these names) ---------------------------
# A command and each env entry reach execve as one string each, which Linux caps at 128 KiB
# (MAX_ARG_STRLEN), and all of them together at about 2 MiB (ARG_MAX, which the worker's own
# environment shares): these limits stay well inside both.
MAX_COMMAND_BYTES = 64 * 1024  # UTF-8 bytes
MAX_ENV_ENTRIES = 1024
MAX_ENV_NAME_CHARS = 256
MAX_ENV_VALUE_BYTES = 64 * 1024  # UTF-8 bytes, each value
MAX_ENV_BYTES = 1024 * 1024  # UTF-8 bytes, all names and values together
MAX_PATH_CHARS = 4096  # cwd and file paths (Linux's PATH_MAX)
MAX_NAME_CHARS = 256  # a job's name, req_group and on_worker
MAX_GROUP_CHARS = 128  # group, dependency group, limit and resource names
MAX_DEPENDENCIES = 10_000  # each of after and after_any; group:NAME covers more
MAX_LIMITS = 64
MAX_RESOURCES = 64
MAX_FILES = 100_000  # files and directories laid out for one job
MAX_INT64 = 2**63 - 1  # what the store's INTEGER columns hold
MAX_LINE_BYTES = 2 * 1024 * 1024  # one line of an input file: room for a wr line with a full env

_GROUP_CHARS = r"[A-Za-z0-9_.:@+-]"
_NAME_RE = re.compile(rf"^{_GROUP_CHARS}{{1,{MAX_GROUP_CHARS}}}$")
_ENV_NAME_RE = re.compile(rf"^[!-<>-~]{{1,{MAX_ENV_NAME_CHARS}}}$")  # printable ASCII but '='
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
GROUP_PREFIX = "group:"  # a dependency on a whole group: group:NAME
DEPENDENCY_RE = re.compile(rf"^(\d{{1,18}}|{GROUP_PREFIX}{_GROUP_CHARS}{{1,{MAX_GROUP_CHARS}}})$")
LIMIT_RE = re.compile(rf"^[A-Za-z0-9_.@+-]{{1,{MAX_GROUP_CHARS}}}(:\d{{1,9}})?$")
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
# An attempt that may still be alive on a worker.
HOLDING_STATES = frozenset({JobState.RUNNING, JobState.LOST})
# A job's fail_reason when shoal itself ended it for going past a limit.
TIME_LIMIT_REASON = "time limit"
MEMORY_LIMIT_REASON = "memory limit"


def parse_memory(text: str | int) -> int:
    """'8G' -> bytes. Bare numbers are megabytes, as in wr and Slurm."""
    if isinstance(text, int):
        return text * 1024**2
    match = _MEMORY_RE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {shown(text)} (examples: 512M, 8G)")
    number, unit = match.groups()
    multiplier = _MEMORY_UNITS[unit.lower()] if unit else 1024**2
    size = float(number) * multiplier
    if size == float("inf"):  # hundreds of digits: int() would raise OverflowError
        raise ValueError(f"memory size {shown(text)} is too large")
    return int(size)


_UNIT_ORDER = ("d", "h", "m", "s", "ms")


def parse_duration(text: str | float) -> float:
    """'1h', '30m', '90s', '90', or wr's '1h30m' -> seconds. Bare numbers are seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION_RE.match(text)
    if match:
        number, unit = match.groups()
        return float(number) * _DURATION_UNITS[unit.lower() if unit else None]
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s|d)", text.strip().lower())
    order = [_UNIT_ORDER.index(unit) for _, unit in parts]
    if parts and "".join(n + u for n, u in parts) == text.strip().lower() \
            and order == sorted(set(order)):  # each unit once, the largest first: 1h30m
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"not a duration: {shown(text)} (examples: 90s, 30m, 1h30m)")


# --- checks shared by every model that takes a command, an env or a name ------------------
# They raise PydanticCustomError so that the message is exactly what the user sees, without
# pydantic's "Value error, " prefix. None of them quotes an env value: those hold secrets.


def invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("value_error", message)


def shown(text: str, limit: int = 40) -> str:
    """`text` quoted for a one-line message, cut to `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def utf8_size(text: str, what: str) -> int:
    """The UTF-8 size of `text`, refusing what no process or file can hold: NUL, lone surrogates."""
    if "\x00" in text:
        raise invalid(f"{what} contains a NUL byte")
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise invalid(f"{what} is not valid Unicode (a lone surrogate)") from None


def check_command(value: str) -> str:
    if not value.strip():
        raise invalid("command is empty")
    if utf8_size(value, "command") > MAX_COMMAND_BYTES:
        raise invalid(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    return value


def check_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_ENTRIES:
        raise invalid(f"more than {MAX_ENV_ENTRIES} environment variables")
    total = 0
    for name, value in env.items():
        if not _ENV_NAME_RE.match(name):
            raise invalid(f"bad environment variable name {shown(name)}: 1-{MAX_ENV_NAME_CHARS} "
                          "printable ASCII characters, no '=' or space")
        size = utf8_size(value, f"the value of {name}")
        if size > MAX_ENV_VALUE_BYTES:
            raise invalid(f"the value of {name} is longer than {MAX_ENV_VALUE_BYTES} bytes")
        total += len(name) + size
    if total > MAX_ENV_BYTES:
        raise invalid(f"the environment is larger than {MAX_ENV_BYTES} bytes in all")
    return env


def check_path(value: str, what: str) -> str:
    utf8_size(value, what)
    if len(value) > MAX_PATH_CHARS:
        raise invalid(f"{what} is longer than {MAX_PATH_CHARS} characters")
    return value


def check_label(value: str, what: str, limit: int = MAX_NAME_CHARS) -> str:
    """A free-form name shown in listings: bounded and printable, so it cannot forge lines."""
    utf8_size(value, what)
    if len(value) > limit:
        raise invalid(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise invalid(f"{what} must be printable: no control characters such as TAB or newline")
    return value


def check_count(items: Any, limit: int, noun: str) -> None:
    if len(items) > limit:
        raise invalid(f"more than {limit} {noun}")


_LABELS = {"name": "the name", "req_group": "the requirements group", "on_worker": "the worker"}


class JobSpec(BaseModel):
    """One job as a user asks for it. Unknown fields are refused, so typos surface."""

    # Inputs stay out of str(ValidationError): an env value there would leak a secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)

    cmd: str = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    name: str | None = None
    group: str = "default"
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    retries: int = Field(default=0, ge=0, le=1000)
    cores: int = Field(default=1, ge=0, le=100_000)  # 0: ensemble components only
    memory_bytes: int = Field(default=0, ge=0, le=MAX_INT64)
    time_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    time_limit_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
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
        return check_command(value)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return value if value is None else check_path(value, "the directory")

    @field_validator("name", "req_group", "on_worker")
    @classmethod
    def _label(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_label(value, _LABELS[info.field_name or ""])
        return value

    @field_validator("group")
    @classmethod
    def _group_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise invalid(f"group names are 1-{MAX_GROUP_CHARS} characters of letters, digits "
                          "and _.:@+-")
        return value

    @field_validator("env")
    @classmethod
    def _env_shape(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, int]) -> dict[str, int]:
        check_count(value, MAX_RESOURCES, "resources")
        for name, amount in value.items():
            if not _NAME_RE.match(name) or name in RESERVED_RESOURCES:
                raise invalid(f"bad resource name {shown(name)}")
            if amount < 1:
                raise invalid(f"resource {name}: amount must be at least 1")
            if amount > MAX_INT64:
                raise invalid(f"resource {name}: amount must be at most {MAX_INT64}")
        return value

    @field_validator("after", "after_any")
    @classmethod
    def _dependency_shape(cls, value: list[str]) -> list[str]:
        check_count(value, MAX_DEPENDENCIES, "dependencies")
        for entry in value:
            if not DEPENDENCY_RE.match(entry):
                raise invalid(f"{shown(entry)} is neither a job id nor group:NAME")
        return value

    @field_validator("limits")
    @classmethod
    def _limit_shape(cls, value: list[str]) -> list[str]:
        check_count(value, MAX_LIMITS, "limits")
        for entry in value:
            if not LIMIT_RE.match(entry):
                raise invalid(f"{shown(entry)} is not a limit name (NAME, or NAME:N to set its "
                              "cap)")
        return value

    @field_validator("files")
    @classmethod
    def _file_entries(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Checked here, where the client can be told, rather than when it reaches a worker.
        from shoal.core.protocol import FileEntry

        check_count(value, MAX_FILES, "files")
        entries = []
        for index, entry in enumerate(value):
            try:
                entries.append(FileEntry.model_validate(entry).model_dump())
            except ValidationError as error:
                first = error.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                message = str(first["msg"]).removeprefix("Value error, ")
                raise invalid(f"entry {index}{'.' + where if where else ''}: {message}") from None
        return entries

    @model_validator(mode="after")
    def _cores_for_gated_only(self) -> JobSpec:
        # An ensemble component runs beside whatever else its host runs; a queued job needs a core.
        if self.cores == 0 and not self.gate:
            raise ValidationError.from_exception_data(type(self).__name__, [{
                "type": "greater_than_equal", "loc": ("cores",), "input": 0, "ctx": {"ge": 1}}])
        return self

    @property
    def key(self) -> tuple[str, str]:
        """Two adds of the same (cmd, cwd) are the same job."""
        return (self.cmd, self.cwd or "")


class JobDefaults(JobSpec):
    """Every field of a JobSpec but its command: what jobs alike but for their commands share
    (an add's chunk of `shared` and `cmds`)."""

    cmd: str = Field(default="true", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _no_command(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cmd" in data:
            raise invalid("holds no cmd: each job's command is one of cmds")
        return data


class JobChanges(BaseModel):
    """What `shoal mod` changes of jobs that are not running: only the fields given (a null
    clears one that may be empty). The command and its directory are the job itself: fixed."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)

    name: str | None = None
    group: str | None = None
    priority: int | None = None
    retries: int | None = None
    cores: int | None = None
    memory_bytes: int | None = None
    time_seconds: float | None = None
    time_limit_seconds: float | None = None
    gpus: int | None = None
    resources: dict[str, int] | None = None
    env: dict[str, str] | None = None
    after: list[str] | None = None
    after_any: list[str] | None = None
    limits: list[str] | None = None
    on_worker: str | None = None

    @model_validator(mode="after")
    def _as_an_add_would(self) -> JobChanges:
        # The same checks as a job added with these values: one rule for each field.
        JobSpec.model_validate({"cmd": "true", "cwd": "/", **self.given()})
        if not self.given():
            raise invalid("no change given")
        return self

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _refuse(*_: object, **__: object) -> Any:
    raise TypeError("a shared empty value is never changed in place: assign a new one")


class _EmptyList(list):
    """The one empty list every job without dependencies, limits or files shares."""

    __slots__ = ()
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


class _EmptyDict(dict):
    """The one empty dict every job without env or resources shares."""

    __slots__ = ()
    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse
    __ior__ = _refuse


# Most jobs have no env, resources, dependencies, limits or files: at a million queued jobs,
# an empty container each would cost hundreds of megabytes. They share these, which refuse
# to change (a change in place would reach every job), so a job's collections are replaced.
EMPTY_LIST: list[Any] = _EmptyList()
EMPTY_DICT: dict[Any, Any] = _EmptyDict()
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def with_shared_empties(spec: JobSpec) -> JobSpec:
    """`spec` with each empty collection the shared one that refuses changes in place: what
    specs copied from one spec may share without one's change reaching another."""
    return spec.model_copy(update={
        name: EMPTY_DICT if isinstance(value, dict) else EMPTY_LIST
        for name, value in spec if isinstance(value, dict | list) and not value})


def own_list(values: Collection[T]) -> list[T]:
    """A job's own copy of `values`, or the shared empty list."""
    return list(values) if values else EMPTY_LIST


def own_dict(values: Mapping[K, V]) -> dict[K, V]:
    """A job's own copy of `values`, or the shared empty dict."""
    return dict(values) if values else EMPTY_DICT


OptionalText = TypeVar("OptionalText", bound=str | None)
_TEXTS: dict[str, str] = {}
_TEXTS_MAX, _TEXT_MAX_CHARS = 65536, 1024


def shared_text(value: OptionalText) -> OptionalText:
    """One string object for each of the few values a field repeats over many jobs (their
    directory, group, owner): a million jobs in one directory hold one copy of its path."""
    if value is None or len(value) > _TEXT_MAX_CHARS or (
            len(_TEXTS) >= _TEXTS_MAX and value not in _TEXTS):
        return value
    return cast(OptionalText, _TEXTS.setdefault(value, value))


def _no_list() -> list[Any]:
    return EMPTY_LIST


def _no_dict() -> dict[Any, Any]:
    return EMPTY_DICT


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
    resources: dict[str, int] = field(default_factory=_no_dict)
    grow_memory: bool = False
    requirements_source: str | None = None
    dependencies: list[str] = field(default_factory=_no_list)
    dependencies_any: list[str] = field(default_factory=_no_list)
    gate: bool = False
    files: list[dict[str, Any]] = field(default_factory=_no_list)
    always_copy: bool = False
    limits: list[str] = field(default_factory=_no_list)
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
    # A digest of the token and process secret of the worker its current attempt was given
    # to: only that worker may claim the attempt after a reconnect. Never shown.
    holder: str | None = field(default=None, repr=False)
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
            "owner": self.owner,
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

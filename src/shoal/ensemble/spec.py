"""The ensemble model every loader produces (TOML, NetJobs, remote_runner). Pure: no I/O."""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shoal.core.models import (
    MAX_FILES,
    MAX_GROUP_CHARS,
    check_command,
    check_env,
    check_label,
    check_path,
    invalid,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
LOCALHOST = "localhost"
MAX_HOST_CHARS = 255  # a DNS name's limit; also a worker's name
# Its components' jobs are in group "ensemble.NAME" and named "NAME/COMPONENT": both must fit.
MAX_ENSEMBLE_NAME_CHARS = MAX_GROUP_CHARS - len("ensemble.")
MAX_COMPONENTS = 10_000
MAX_STAGE = 1000


class FileCopy(BaseModel):
    """One local file or directory (copied recursively, permissions kept) to a remote path.
    A relative remote path is taken under the component's base_dir."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local: str = Field(min_length=1)
    remote: str = Field(min_length=1)

    @field_validator("local", "remote")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value, "the path")


class Component(BaseModel):
    # Inputs stay out of str(ValidationError): an env value there would leak a secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str
    host: str = Field(min_length=1)  # a worker's name, host name or address, or "localhost"
    command: str = Field(min_length=1)  # run with bash -c; loaders build it from executable+args
    env: dict[str, str] = Field(default_factory=dict)
    base_dir: str | None = None  # default: a fresh directory on that host
    files: list[FileCopy] = Field(default_factory=list, max_length=MAX_FILES)
    stage: int = Field(default=0, ge=0, le=MAX_STAGE)
    # None: the ensemble's timeout
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    wait: bool = True  # False: a service, killed when the run ends
    # What it takes from its worker. None: nothing, so that it starts with the others whatever
    # else the host runs; set, it waits until its worker has that much free.
    cores: int | None = Field(default=None, ge=1, le=100_000)
    memory_bytes: int | None = Field(default=None, ge=1, le=2**63 - 1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise invalid("names are 1-128 characters of letters, digits and _.:@+-")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_label(value, "the host", MAX_HOST_CHARS)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return check_command(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("base_dir")
    @classmethod
    def _base_dir(cls, value: str | None) -> str | None:
        return value if value is None else check_path(value, "the directory")


class Ensemble(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(min_length=1)
    # Per component, unless it sets its own; the run timeout is for the whole run.
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    run_timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    min_hosts: int | Literal["all"] = "all"  # components that must succeed; fewer: abandon
    # Stage k starts when every component of stage k-1 has "started" (default) or "finished".
    stage_starts_after: dict[int, Literal["started", "finished"]] = Field(
        default_factory=dict, max_length=MAX_STAGE + 1)
    components: list[Component] = Field(min_length=1, max_length=MAX_COMPONENTS)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_label(value, "the name", MAX_ENSEMBLE_NAME_CHARS)

    @model_validator(mode="after")
    def _consistent(self) -> Ensemble:
        counts = Counter(c.name for c in self.components)  # linear: there may be thousands
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise invalid(f"component names must be unique: {', '.join(duplicates)}")
        if isinstance(self.min_hosts, int) and not 0 <= self.min_hosts <= len(self.components):
            raise invalid(f"min_hosts {self.min_hosts} is not between 0 and the "
                          f"{len(self.components)} components")
        return self

    @property
    def required(self) -> int:
        """How many components must succeed for the run to go on."""
        waited = sum(1 for c in self.components if c.wait)
        return waited if self.min_hosts == "all" else min(self.min_hosts, waited)

    @property
    def stages(self) -> list[int]:
        return sorted({c.stage for c in self.components})

    @property
    def local_only(self) -> bool:
        return all(c.host == LOCALHOST for c in self.components)

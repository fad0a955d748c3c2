"""The ensemble model every loader produces (TOML, NetJobs, remote_runner). Pure: no I/O."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
LOCALHOST = "localhost"


class FileCopy(BaseModel):
    """One local file or directory (copied recursively, permissions kept) to a remote path.
    A relative remote path is taken under the component's base_dir."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local: str = Field(min_length=1)
    remote: str = Field(min_length=1)


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    host: str = Field(min_length=1)  # a worker's name, host name or address, or "localhost"
    command: str = Field(min_length=1)  # run with bash -c; loaders build it from executable+args
    env: dict[str, str] = Field(default_factory=dict)
    base_dir: str | None = None  # default: a fresh directory on that host
    files: list[FileCopy] = Field(default_factory=list)
    stage: int = Field(default=0, ge=0, le=1000)
    timeout_seconds: float | None = Field(default=None, gt=0)  # default: the ensemble's
    wait: bool = True  # False: a service, killed when the run ends

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("names are 1-128 characters of letters, digits and _.:@+-")
        return value


class Ensemble(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    timeout_seconds: float | None = Field(default=None, gt=0)  # per component, unless it says
    run_timeout_seconds: float | None = Field(default=None, gt=0)  # the whole run
    min_hosts: int | Literal["all"] = "all"  # components that must succeed; fewer: abandon
    # Stage k starts when every component of stage k-1 has "started" (default) or "finished".
    stage_starts_after: dict[int, Literal["started", "finished"]] = Field(default_factory=dict)
    components: list[Component] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Ensemble:
        names = [c.name for c in self.components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"component names must be unique: {', '.join(duplicates)}")
        if isinstance(self.min_hosts, int) and not 0 <= self.min_hosts <= len(self.components):
            raise ValueError(f"min_hosts {self.min_hosts} is more than the "
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

"""shoal runs many shell commands across many machines.

The public Python API:

    import shoal

    with shoal.Client() as client:
        client.add([shoal.JobSpec(cmd="make test", group="ci")])

`Client`, `JobSpec` and `JobState` are loaded on first use, so that `import shoal` (and the
command line, which imports it) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shoal.core.errors import (
    AuthError,
    Conflict,
    ConnectError,
    InputError,
    NotFound,
    ServerError,
    ShoalError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from shoal.client import AddResult, Client, CommandOf
    from shoal.core.models import JobSpec, JobState

__all__ = [
    "AddResult",
    "ArrayResult",
    "AuthError",
    "Client",
    "CommandOf",
    "Conflict",
    "ConnectError",
    "InputError",
    "JobSpec",
    "JobState",
    "NotFound",
    "ServerError",
    "ShoalError",
    "StoreUnavailable",
    "__version__",
]

_LAZY_ATTRIBUTES = {
    "AddResult": "shoal.client",
    "ArrayResult": "shoal.client",
    "Client": "shoal.client",
    "CommandOf": "shoal.client",
    "JobSpec": "shoal.core.models",
    "JobState": "shoal.core.models",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _installed_version()
    elif name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shoal")
    except PackageNotFoundError:
        return "0.0.0"

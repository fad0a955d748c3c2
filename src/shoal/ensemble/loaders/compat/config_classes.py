"""remote_runner's config_classes: Component and Config, with the same rules.

A Component accepts only its known attributes, so a misspelt one fails where it is set;
Config.add_component stores a deep copy, so one template component can be changed and
added again and again.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from typing import Any

LEGAL_ATTRS = frozenset(
    {"name", "executable", "args", "base_dir", "files", "host", "start_index", "wait"})


class Component:
    """An executable, its arguments, its host, its files, and when it starts.

    remote_runner takes no constructor arguments; shoal also accepts them as keywords,
    e.g. Component(name="server", host="web1", ...).
    """

    LEGAL_ATTRS = LEGAL_ATTRS
    # Declared, not assigned: an attribute the configuration never sets stays missing.
    name: Any
    host: Any
    executable: Any
    start_index: Any
    wait: Any
    base_dir: Any
    files: Any
    args: Any

    def __init__(self, **attributes: Any) -> None:
        self.base_dir = None
        self.files = {}
        self.args = []
        for name, value in attributes.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in LEGAL_ATTRS:
            raise AttributeError(f"Component has no attribute {name!r}; the attributes are "
                                 f"{', '.join(sorted(LEGAL_ATTRS))}")
        object.__setattr__(self, name, value)

    def missing_attributes(self) -> list[str]:
        return sorted(name for name in LEGAL_ATTRS if not hasattr(self, name))

    def __repr__(self) -> str:
        return f"Component(name={getattr(self, 'name', '?')!r})"


class Config:
    """The `config` object a configuration fills with config.add_component(...)."""

    LOCAL_HOST = "localhost"

    def __init__(self) -> None:
        self._components: list[Component] = []
        self._added_at: dict[int, tuple[str, int]] = {}  # id(copy) -> (file, line)

    def add_component(self, component: Component) -> None:
        stored = copy.deepcopy(component)
        caller = sys._getframe(1)  # where it was added, for error messages
        self._added_at[id(stored)] = (caller.f_code.co_filename, caller.f_lineno)
        self._components.append(stored)

    def added_at(self, component: Component) -> tuple[str, int] | None:
        return self._added_at.get(id(component))

    def clear_components(self) -> None:
        self._components = []

    def all_components(self) -> Iterator[Component]:
        return iter(list(self._components))

    def all_remote_components(self) -> Iterator[Component]:
        return (c for c in list(self._components) if getattr(c, "host", None) != self.LOCAL_HOST)

    def all_local_components(self) -> Iterator[Component]:
        return (c for c in list(self._components) if getattr(c, "host", None) == self.LOCAL_HOST)

    def all_hosts(self) -> set[str]:
        return {c.host for c in self._components if hasattr(c, "host")}

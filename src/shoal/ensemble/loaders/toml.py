"""shoal's own ensemble format: TOML, documented in docs/ensembles.md."""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from shoal.core.errors import InputError
from shoal.core.models import parse_duration, parse_memory
from shoal.ensemble.loaders.common import (
    build_component,
    build_ensemble,
    build_file_copy,
    check_line_lengths,
    command_from,
    local_path,
    missing_local,
    quoted,
    remote_path,
    safe_name,
)
from shoal.ensemble.loaders.toml_lines import KeyLines
from shoal.ensemble.spec import LOCALHOST, MAX_STAGE, Component, Ensemble, FileCopy

TOP_LEVEL_KEYS = ("name", "timeout", "run_timeout", "min_hosts", "base_dir", "stages",
                  "component")
COMPONENT_KEYS = ("name", "host", "command", "executable", "args", "env", "base_dir", "files",
                  "stage", "timeout", "wait", "cores", "memory")
_SYNTAX_POSITION = re.compile(r"^(?P<message>.*?) \(at (?:line (?P<line>\d+), column "
                              r"(?P<column>\d+)|end of document)\)$", re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_toml(text: str, *, source: str, base_dir: Path, default_name: str) -> Ensemble:
    """One ensemble from TOML text. Relative local paths are taken from `base_dir`."""
    check_line_lengths(text, source)
    document = _decode(text, source)
    return _Reader(text, source, base_dir).ensemble(document, default_name)


def _decode(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = _SYNTAX_POSITION.match(str(error))
        if match is None:
            raise InputError(f"TOML: {error}", source=source) from None
        line = match["line"]
        where = int(line) if line else len(text.rstrip("\n").split("\n"))
        column = f" (column {match['column']})" if match["column"] else " (at the end)"
        raise InputError(f"TOML: {match['message']}{column}", source=source,
                         line=where) from None
    except ValueError as error:  # tomllib lets int()'s digit limit through as it is
        raise InputError(f"TOML: {error}", source=source) from None
    except RecursionError:
        raise InputError("TOML: nested too deeply", source=source) from None


def _kind(value: Any) -> str:
    """How a TOML value is called in messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _unknown(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    return f"unknown key {quoted(key)}{hint}"


class _Reader:
    """Turns a parsed document into the model, naming the line of whatever it refuses."""

    def __init__(self, text: str, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.lines = KeyLines(text)
        self.default_base_dir: str | None = None  # the top-level base_dir

    # --- errors ------------------------------------------------------------------------

    def fail(self, message: str, line: int | None) -> NoReturn:
        raise InputError(message, source=self.source, line=line)

    def fail_top(self, message: str, key: str) -> NoReturn:
        self.fail(message, self.lines.top_level(key))

    # --- the ensemble ------------------------------------------------------------------

    def ensemble(self, document: dict[str, Any], default_name: str) -> Ensemble:
        for key in document:
            if key not in TOP_LEVEL_KEYS:
                self.fail_top(_unknown(key, TOP_LEVEL_KEYS), key)
        name = document.get("name", default_name)
        if not isinstance(name, str):
            self.fail_top(f"'name' must be a string, not {_kind(name)}", "name")
        if not name.strip():
            self.fail_top("'name' is empty", "name")
        base_dir = document.get("base_dir")
        if base_dir is not None and (not isinstance(base_dir, str) or not base_dir.strip()):
            self.fail_top(f"'base_dir' must be a non-empty string, not {quoted(base_dir)}",
                          "base_dir")
        self.default_base_dir = base_dir
        components = self.components(document.get("component"))
        min_hosts = self.min_hosts(document.get("min_hosts", "all"), len(components))
        fields: dict[str, Any] = {
            "name": name,
            "timeout_seconds": self.top_duration(document, "timeout"),
            "run_timeout_seconds": self.top_duration(document, "run_timeout"),
            "min_hosts": min_hosts,
            "stage_starts_after": self.stages(document.get("stages", {}), components),
            "components": components,
        }
        return build_ensemble(fields, source=self.source)

    def top_duration(self, document: dict[str, Any], key: str) -> float | None:
        if key not in document:
            return None
        try:
            return _duration(document[key])
        except ValueError as error:
            self.fail_top(f"{quoted(key)}: {error}", key)

    def min_hosts(self, value: Any, count: int) -> int | str:
        if value == "all":
            return "all"
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail_top(f"'min_hosts' must be \"all\" or a whole number, not {quoted(value)}",
                          "min_hosts")
        if value > count:
            plural = "component" if count == 1 else "components"
            self.fail_top(f"'min_hosts' is {value} but the ensemble has {count} {plural}",
                          "min_hosts")
        return value

    def stages(self, table: Any, components: list[Component]) -> dict[int, str]:
        if not isinstance(table, dict):
            self.fail_top(f"'stages' must be a table, not {_kind(table)}", "stages")
        used = sorted({component.stage for component in components})
        result: dict[int, str] = {}
        for key, value in table.items():
            line = self.lines.stage(key)
            if not re.fullmatch(r"[0-9]{1,4}", key) or int(key) > MAX_STAGE:
                self.fail(f"stages: {quoted(key)} is not a stage number (0 to {MAX_STAGE})", line)
            stage = int(key)
            if stage not in used:
                self.fail(f"stages: no component is in stage {stage}", line)
            if stage == used[0]:
                self.fail(f"stages: stage {stage} is the first stage; it has nothing to wait "
                          "for", line)
            if value not in ("started", "finished"):
                self.fail(f"stages: stage {stage} must be \"started\" or \"finished\", not "
                          f"{quoted(value)}", line)
            result[stage] = value
        return result

    # --- components --------------------------------------------------------------------

    def components(self, tables: Any) -> list[Component]:
        if tables is None:
            self.fail("no [[component]] tables: an ensemble needs at least one component", None)
        if isinstance(tables, dict):
            self.fail("'component' must be an array of tables: write [[component]], with two "
                      "brackets", self.lines.table_header("component"))
        if not isinstance(tables, list) or not tables:
            self.fail_top("'component' must be a non-empty array of tables", "component")
        result: list[Component] = []
        first_use: dict[str, int] = {}
        for index, table in enumerate(tables):
            if not isinstance(table, dict):
                self.fail_top(f"component #{index + 1} must be a table, not {_kind(table)}",
                              "component")
            for component in _ComponentReader(self, index, table).read():
                if component.name in first_use:
                    self.fail(f"component name {quoted(component.name)} is used twice (also by "
                              f"component #{first_use[component.name] + 1})",
                              self.lines.component(index, "name"))
                first_use[component.name] = index
                result.append(component)
        return result


class _ComponentReader:
    """One [[component]] table: one model component per host it names."""

    def __init__(self, reader: _Reader, index: int, table: dict[str, Any]) -> None:
        self.reader = reader
        self.index = index
        self.table = table
        self.label = f"component #{index + 1}"

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        self.reader.fail(f"{self.label}: {message}", self.reader.lines.component(self.index, key))

    def read(self) -> list[Component]:
        for key in self.table:
            if key not in COMPONENT_KEYS:
                self.fail(_unknown(key, COMPONENT_KEYS), key)
        name = self.table.get("name")
        if name is None:
            self.fail("'name' is missing", "name")
        if not isinstance(name, str):
            self.fail(f"'name' must be a string, not {_kind(name)}", "name")
        self.label = f"component {quoted(name)}"
        hosts = self.hosts()
        fields: dict[str, Any] = {
            "command": self.command(),
            "env": self.env(),
            "base_dir": self.optional_text("base_dir") or self.reader.default_base_dir,
            "files": self.files(),
            "stage": self.stage(),
            "timeout_seconds": self.timeout(),
            "wait": self.wait(),
            "cores": self.cores(),
            "memory_bytes": self.memory(),
        }
        line = self.reader.lines.component(self.index, "name")
        if isinstance(self.table.get("host", LOCALHOST), str):
            return [build_component({"name": name, "host": hosts[0], **fields},
                                    source=self.reader.source, line=line)]
        # A host list: one component per host, named NAME@HOST.
        return [build_component({"name": safe_name(f"{name}@{host}"), "host": host, **fields},
                                source=self.reader.source, line=line) for host in hosts]

    def hosts(self) -> list[str]:
        value = self.table.get("host", LOCALHOST)
        if isinstance(value, str):
            if not value.strip():
                self.fail("'host' is empty", "host")
            return [value]
        if not isinstance(value, list) or not value:
            self.fail(f"'host' must be a string or a non-empty array of strings, not "
                      f"{_kind(value)}", "host")
        for host in value:
            if not isinstance(host, str) or not host.strip():
                self.fail(f"'host' entries must be non-empty strings, not {quoted(host)}", "host")
        repeated = sorted(host for host, uses in Counter(value).items() if uses > 1)
        if repeated:
            self.fail(f"'host' lists {quoted(repeated[0])} twice", "host")
        return list(value)

    def command(self) -> str:
        command = self.table.get("command")
        executable = self.table.get("executable")
        if command is not None and executable is not None:
            self.fail("give either 'command' or 'executable' (with 'args'), not both", "command")
        if command is not None:
            if "args" in self.table:
                self.fail("'args' goes with 'executable'; put arguments in 'command' itself",
                          "args")
            if not isinstance(command, str) or not command.strip():
                self.fail(f"'command' must be a non-empty string, not {quoted(command)}", "command")
            return command
        if executable is None:
            self.fail("'command' (or 'executable' with 'args') is missing", None)
        if not isinstance(executable, str) or not executable.strip():
            self.fail(f"'executable' must be a non-empty string, not {quoted(executable)}",
                      "executable")
        args = self.table.get("args", [])
        if not isinstance(args, list):
            self.fail(f"'args' must be an array, not {_kind(args)}", "args")
        return command_from(executable, [self.scalar_text(arg, "args") for arg in args])

    def scalar_text(self, value: Any, key: str) -> str:
        """Strings as they are; numbers as written, so args = ["-p", 8080] works."""
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.fail(f"{quoted(key)} values must be strings or numbers, not {_kind(value)}", key)

    def env(self) -> dict[str, str]:
        table = self.table.get("env", {})
        if not isinstance(table, dict):
            self.fail(f"'env' must be a table, not {_kind(table)}", "env")
        for name in table:
            if not _ENV_NAME.match(name):
                self.fail(f"env: {quoted(name)} is not a variable name", "env")
        return {name: self.scalar_text(value, "env") for name, value in table.items()}

    def optional_text(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(f"{quoted(key)} must be a non-empty string, not {quoted(value)}", key)
        return value

    def files(self) -> list[FileCopy]:
        value = self.table.get("files", {})
        if isinstance(value, dict):
            pairs = list(value.items())
        elif isinstance(value, list):
            pairs = [self.file_entry(entry) for entry in value]
        else:
            self.fail(f"'files' must be a table or an array of tables, not {_kind(value)}",
                      "files")
        copies: list[FileCopy] = []
        for local, remote in pairs:
            if not isinstance(remote, str) or not remote or not local:
                self.fail(f"files: {quoted(local)} must map to a non-empty remote path string",
                          "files")
            copies.append(build_file_copy(
                local_path(local, self.reader.base_dir), remote_path(remote),
                source=self.reader.source, line=self.reader.lines.component(self.index, "files"),
                label=self.label))
        missing = missing_local(copy.local for copy in copies)
        if missing:
            self.fail(f"files: no such local file or directory: {missing[0]}", "files")
        return copies

    def file_entry(self, entry: Any) -> tuple[str, Any]:
        if not isinstance(entry, dict) or set(entry) != {"local", "remote"}:
            self.fail("files: each entry of the array must be a table with exactly 'local' "
                      "and 'remote'", "files")
        if not isinstance(entry["local"], str):
            self.fail(f"files: 'local' must be a string, not {_kind(entry['local'])}", "files")
        return entry["local"], entry["remote"]

    def stage(self) -> int:
        value = self.table.get("stage", 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STAGE:
            self.fail(f"'stage' must be a whole number from 0 to {MAX_STAGE}, not {quoted(value)}",
                      "stage")
        return value

    def timeout(self) -> float | None:
        if "timeout" not in self.table:
            return None
        try:
            return _duration(self.table["timeout"])
        except ValueError as error:
            self.fail(f"'timeout': {error}", "timeout")

    def cores(self) -> int | None:
        value = self.table.get("cores")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= 100_000):
            self.fail(f"'cores' must be a whole number from 1, not {quoted(value)}", "cores")
        return value

    def memory(self) -> int | None:
        value = self.table.get("memory")
        if value is None:
            return None
        try:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"not a memory size: {quoted(value)}")
            size = parse_memory(value)
        except ValueError as error:
            said = str(error).split(" (examples:")[0]  # TOML's own examples, quoted, instead
            self.fail(f"'memory': {said} (examples: \"512M\", \"8G\")", "memory")
        if size < 1:
            self.fail(f"'memory' must be more than zero, not {quoted(value)}", "memory")
        return size

    def wait(self) -> bool:
        value = self.table.get("wait", True)
        if not isinstance(value, bool):
            self.fail(f"'wait' must be true or false, not {_kind(value)}", "wait")
        return value


def _duration(value: Any) -> float:
    """Seconds from "10m", "90s", "1h30m" or a number of seconds; more than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a duration is a string like \"90s\" or a number, not {_kind(value)}")
    try:
        seconds = parse_duration(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be more than zero and finite, not {quoted(value)}")
    return seconds

"""NetJobs configuration files (TheOtherOtherOperation/NetJobs, versions 1.1 to 2.2).

    test0:
    -generaltimeout: 5m
    -minhosts: all
    172.17.1.19: "./some_test_script.sh"
    -timeout: 30s
    end

Each test block is one ensemble, run in file order. The grammar follows NetJobs.py's own
regular expressions and state machine: lines are stripped, blank lines and lines starting
with '#' are skipped, flags must precede the first target, a -timeout line applies to the
target line just before it, and a timeout of "none" (or 0) means no limit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from shoal.core.errors import InputError
from shoal.ensemble.loaders.common import (
    build_component,
    build_ensemble,
    check_line_lengths,
    quoted,
    safe_name,
    split_lines,
)
from shoal.ensemble.spec import Ensemble

# NetJobs.py's patterns. TARGET also takes '-' inside a host name (NetJobs's (\w|\.)+ does
# not, which refuses ordinary names like load-gen-1); a line starting with '-' is a flag.
LABEL = re.compile(r"^[^:]+ *: *$")
TARGET = re.compile(r"^(?P<host>[\w.][\w.-]*) *: *(?P<command>.*)$")
TIMEOUT = re.compile(r"^-timeout *: *(?P<value>\d+ *[hms]|none)\s*$")
GENERAL_TIMEOUT = re.compile(r"^-generaltimeout *: *(?P<value>\d+ *[hms]|none)\s*$")
MIN_HOSTS = re.compile(r"^-minhosts *: *(?P<value>\d+|all)\s*$")
END = re.compile(r"^end\s*$")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
_FLAG_NAME = re.compile(r"^-(\w+)")
_MAX_TIMEOUT_SECONDS = 366 * 86400
# A relative base_dir is under the worker's working directory (`shoal worker --workdir`).
WORKER_DIRECTORY = "."


def looks_like_netjobs(text: str) -> bool:
    """A test label ('name:') as the first line that counts, then an 'end' line somewhere
    or a flag or target line right after it (a block whose 'end' is missing)."""
    significant = [line.strip() for line in split_lines(text)]
    significant = [line for line in significant if line and not line.startswith("#")]
    if not significant or not LABEL.match(significant[0]):
        return False
    following = significant[1] if len(significant) > 1 else ""
    return (any(END.match(line) for line in significant) or following.startswith("-")
            or TARGET.match(following) is not None)


def parse_netjobs(text: str, *, source: str) -> list[Ensemble]:
    check_line_lengths(text, source)
    return _Parser(source).parse(text)


@dataclass
class _Target:
    host: str
    command: str
    line: int
    timeout_seconds: float | None  # None: no limit


@dataclass
class _Test:
    label: str
    line: int
    general_timeout_seconds: float | None = None
    min_hosts: int | str = "all"
    min_hosts_line: int = 0
    targets: list[_Target] = field(default_factory=list)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, line: int | None) -> NoReturn:
        raise InputError(message, source=self.source, line=line)

    def parse(self, text: str) -> list[Ensemble]:
        tests: list[Ensemble] = []
        test: _Test | None = None
        for number, raw in enumerate(split_lines(text), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if test is None:
                test = self.start_test(line, number)
            elif END.match(line):
                tests.append(self.finish(test, number))
                test = None
            else:
                self.read_line(test, line, number)
        if test is not None:
            self.fail(f"test {quoted(test.label)} has no 'end' line", test.line)
        if not tests:
            self.fail("no test blocks (a block is 'label:', its lines, then 'end')", None)
        return tests

    def start_test(self, line: str, number: int) -> _Test:
        if not LABEL.match(line):
            self.fail(f"expected a test label ('name:') but found {quoted(line)}", number)
        return _Test(label=line.split(":", 1)[0].strip(), line=number)

    def read_line(self, test: _Test, line: str, number: int) -> None:
        if GENERAL_TIMEOUT.match(line) or MIN_HOSTS.match(line):
            if test.targets:
                self.fail("-generaltimeout and -minhosts must come before the first target",
                          number)
            self.read_test_flag(test, line, number)
        elif match := TIMEOUT.match(line):
            if not test.targets:
                self.fail("-timeout must follow the target line it applies to", number)
            test.targets[-1].timeout_seconds = self.seconds(match["value"], number)
        elif match := TARGET.match(line):
            command = _unquote(match["command"])
            if not command.strip():
                self.fail(f"target {quoted(match['host'])} has no command (is an 'end' line "
                          "missing before it?)", number)
            test.targets.append(_Target(match["host"], command, number,
                                        test.general_timeout_seconds))
        else:
            self.fail(self.explain(line), number)

    def read_test_flag(self, test: _Test, line: str, number: int) -> None:
        if match := GENERAL_TIMEOUT.match(line):
            test.general_timeout_seconds = self.seconds(match["value"], number)
        elif match := MIN_HOSTS.match(line):
            value = match["value"]
            if len(value) > 6:  # also keeps int() within its digit limit
                self.fail(f"-minhosts {value} is more than any test has hosts", number)
            test.min_hosts = "all" if value == "all" else int(value)
            test.min_hosts_line = number

    def seconds(self, value: str, number: int) -> float | None:
        """'330s', '5 m', '1h' -> seconds; 'none' and 0 -> None (NetJobs's TIMEOUT_NONE is 0)."""
        if value == "none":
            return None
        digits = value[:-1].strip()
        seconds = int(digits) * _UNIT_SECONDS[value[-1]] if len(digits) < 10 else math.inf
        if seconds > _MAX_TIMEOUT_SECONDS:
            self.fail(f"timeout {quoted(value)} is more than a year", number)
        return float(seconds) if seconds > 0 else None

    def explain(self, line: str) -> str:
        """Why a line is not understood, more precisely than NetJobs's 'unable to interpret'."""
        flag = _FLAG_NAME.match(line)
        if flag is None:
            return f"cannot read {quoted(line)}: expected 'host: \"command\"', a -flag, or 'end'"
        name = flag[1]
        if name in ("timeout", "generaltimeout"):
            return (f"-{name}: use a whole number with s, m or h (330s, 5m, 1h) or none, "
                    f"not {quoted(line)}")
        if name == "minhosts":
            return f"-minhosts: use all or a whole number, not {quoted(line)}"
        return f"unknown flag -{name} (NetJobs has -generaltimeout, -minhosts and -timeout)"

    def finish(self, test: _Test, end_line: int) -> Ensemble:
        if not test.targets:
            self.fail(f"test {quoted(test.label)} has no targets", end_line)
        hosts = {target.host for target in test.targets}
        if isinstance(test.min_hosts, int) and test.min_hosts > len(hosts):
            self.fail(f"-minhosts is {test.min_hosts} but test {quoted(test.label)} has "
                      f"{_count(len(hosts), 'host')}", test.min_hosts_line)
        return build_ensemble(self.fields(test), source=self.source, line=test.line)

    def fields(self, test: _Test) -> dict[str, Any]:
        names = _component_names(test.targets)
        general = test.general_timeout_seconds
        # The model's per-component None means "the ensemble's timeout", so a target that
        # asked for none under a general timeout needs every limit spelled per component.
        overrides_to_none = general is not None and any(
            target.timeout_seconds is None for target in test.targets)
        components = [
            # In the directory its agent would run in: its worker's working directory.
            build_component({"name": name, "host": target.host, "command": target.command,
                             "stage": 0, "wait": True, "base_dir": WORKER_DIRECTORY,
                             "timeout_seconds": (target.timeout_seconds if overrides_to_none
                                                 or target.timeout_seconds != general
                                                 else None)},
                            source=self.source, line=target.line)
            for name, target in zip(names, test.targets, strict=True)
        ]
        return {
            "name": test.label,
            "timeout_seconds": None if overrides_to_none else general,
            "min_hosts": test.min_hosts,
            "components": components,
        }


def _component_names(targets: list[_Target]) -> list[str]:
    """The host for a host's only command; HOST+1, HOST+2... when a host runs several
    ('+' cannot occur in a host name, so these never collide with another host)."""
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.host] = counts.get(target.host, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for target in targets:
        if counts[target.host] == 1:
            names.append(safe_name(target.host))
        else:
            seen[target.host] = seen.get(target.host, 0) + 1
            names.append(safe_name(f"{target.host}+{seen[target.host]}"))
    return names


def _unquote(command: str) -> str:
    """NetJobs drops the double quotes around a command only when both ends have one."""
    command = command.strip()
    if len(command) > 1 and command.startswith('"') and command.endswith('"'):
        return command[1:-1]
    return command



def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"

"""wr's per-command JSON options (`wr add -h`, jobqueue.JobViaJSON) and how each maps to JobSpec.

Every option wr knows is listed, so a typo is caught rather than silently dropped. Each one is
either mapped onto a JobSpec field, accepted and ignored (it tunes something shoal does not
have, and ignoring it does not change what runs or when), or refused (ignoring it would run a
different command, in a different place, or too early).

As in wr, an option set to null, "" or [] counts as not given.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from shoal.core.errors import json_kind
from shoal.core.models import JobSpec, parse_duration, parse_memory, shown

MAX_MEMORY_BYTES = 2**63 - 1  # what the store can hold


class OptionError(Exception):
    """A problem with one option's value; the caller adds the file and line."""


@dataclass(slots=True)
class Mapped:
    """The JobSpec fields read from one line's options, and which option set each field."""

    fields: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # JobSpec field -> wr option name
    dep_groups: list[str] = field(default_factory=list)

    def set(self, option: str, name: str, value: Any) -> None:
        self.fields[name] = value
        self.labels[name] = option


# --- value kinds -------------------------------------------------------------------------


def _is_string(value: Any) -> bool:
    return isinstance(value, str)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_integer(value) or (isinstance(value, float) and math.isfinite(value))


def _is_boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


@dataclass(frozen=True, slots=True)
class Kind:
    description: str
    accepts: Callable[[Any], bool]


STRING = Kind("a string", _is_string)
INTEGER = Kind("an integer", _is_integer)
NUMBER = Kind("a number", _is_number)
BOOLEAN = Kind("true or false", _is_boolean)
STRINGS = Kind("an array of strings", _is_strings)
OBJECTS = Kind("an array of objects", _is_objects)
MEMORY = Kind(
    'a size such as "1G" or "512M", or a number of megabytes',
    lambda value: _is_string(value) or _is_number(value),
)
DURATION = Kind(
    'a duration such as "30m" or "1h30m", or a number of seconds',
    lambda value: _is_string(value) or _is_number(value),
)
STRING_OR_BOOLEAN = Kind(
    "a string or true/false", lambda value: _is_string(value) or _is_boolean(value)
)


# --- mapped options ----------------------------------------------------------------------


def _cmd(value: str, out: Mapped) -> None:
    out.set("cmd", "cmd", value)


def _cwd(value: str, out: Mapped) -> None:
    out.set("cwd", "cwd", value)


def _memory(value: str | int | float, out: Mapped) -> None:
    try:
        if isinstance(value, str):
            size = parse_memory(value)
        else:
            if value < 0:
                raise ValueError("must not be negative")
            size = int(value * 1024**2)  # bare numbers are megabytes, as in wr
    except OverflowError:
        raise OptionError(f'option "memory": {_show(value)} is too large') from None
    except ValueError as error:
        raise OptionError(f'option "memory": {error}') from None
    if size > MAX_MEMORY_BYTES:
        raise OptionError(f'option "memory": {_show(value)} is too large')
    out.set("memory", "memory_bytes", size)


def _timeout(value: str | int | float, out: Mapped) -> None:
    """shoal's own option (`shoal run --timeout` for one line): kill the job after it."""
    try:
        seconds = parse_duration(value)
    except (ValueError, OverflowError) as error:
        raise OptionError(f'option "timeout": {error}') from None
    if not 0 < seconds < math.inf:
        raise OptionError(f'option "timeout" must be a positive time, not {_show(value)}')
    out.set("timeout", "time_limit_seconds", seconds)


def _time(value: str | int | float, out: Mapped) -> None:
    try:
        seconds = parse_duration(value)
    except (ValueError, OverflowError) as error:
        raise OptionError(f'option "time": {error}') from None
    if seconds < 0:
        raise OptionError(f'option "time" must not be negative, not {_show(value)}')
    if not math.isfinite(seconds):
        raise OptionError(f'option "time": {_show(value)} is too large')
    # wr reads "0s" as no estimate; shoal spells that None.
    out.set("time", "time_seconds", seconds or None)


def _cpus(value: int | float, out: Mapped) -> None:
    if value < 0:
        raise OptionError('option "cpus" must not be negative')
    # wr allows fractions of a core; shoal reserves whole cores, at least one.
    out.set("cpus", "cores", max(1, math.ceil(value)))


def _priority(value: int, out: Mapped) -> None:
    out.set("priority", "priority", value)


def _retries(value: int, out: Mapped) -> None:
    out.set("retries", "retries", value)


def _rep_grp(value: str, out: Mapped) -> None:
    out.set("rep_grp", "group", value)


def _req_grp(value: str, out: Mapped) -> None:
    out.set("req_grp", "req_group", value)


def _limit_grps(value: list[str], out: Mapped) -> None:
    for name in value:
        if "<" in name:
            raise OptionError(f'option "limit_grps": time-window limit groups such as '
                              f"{_show(name)} are not supported")
        if not name:
            raise OptionError('option "limit_grps": a limit group name is empty')
    # Kept as written, including wr's optional ":N" suffix that sets the group's limit.
    out.set("limit_grps", "limits", list(value))


_HARMLESS_BEHAVIOURS = frozenset({"cleanup", "cleanup_all", "nothing"})
_BEHAVIOUR_HINTS = {
    "run": "add the command as its own job with --after-any on this one",
    "remove": "remove ended jobs with `shoal rm --state done` (or server --keep-history)",
}


def _behaviours(option: str, value: list[Any]) -> None:
    for behaviour in value:
        for name in behaviour:
            if name not in _HARMLESS_BEHAVIOURS:
                hint = _BEHAVIOUR_HINTS.get(name, "shoal has no such behaviour")
                raise OptionError(f'option "{option}": the {shown(name)} behaviour is not '
                                  f"supported; {hint}")


def _dep_grps(value: list[str], out: Mapped) -> None:
    for name in value:
        _check_group_name("dep_grps", name)
    out.dep_groups = list(value)


def _deps(value: list[str], out: Mapped) -> None:
    for name in value:
        _check_group_name("deps", name)
    out.set("deps", "after", [f"group:{name}" for name in value])


def _env(value: list[str], out: Mapped) -> None:
    env = {}
    for number, item in enumerate(value, start=1):
        key, sep, setting = item.partition("=")
        if not sep or not key:  # the item is not quoted: it may hold a secret
            raise OptionError(f'option "env": item {number} is not of the form "KEY=VALUE"')
        env[key] = setting
    out.set("env", "env", env)


@lru_cache(maxsize=4096)
def _group_name_problem(name: str) -> str | None:
    try:
        JobSpec(cmd="true", group=name)
    except ValidationError as error:
        return str(error.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
    return None


def _check_group_name(option: str, name: str) -> None:
    problem = _group_name_problem(name)
    if problem:
        raise OptionError(
            f'option "{option}": {_show(name)} is not a usable group name: {problem}'
        )


# --- the table ---------------------------------------------------------------------------

Apply = Callable[[Any, Mapped], None]


@dataclass(frozen=True, slots=True)
class WrOption:
    kind: Kind
    apply: Apply | None = None  # None: accepted and ignored
    refusal: str | None = None  # set: known but not supported, and ignoring it would be wrong
    secret: bool = False  # never quote the value in a message


MAPPED: dict[str, WrOption] = {
    "cmd": WrOption(STRING, _cmd),
    "cwd": WrOption(STRING, _cwd),
    "memory": WrOption(MEMORY, _memory),
    "time": WrOption(DURATION, _time),
    "cpus": WrOption(NUMBER, _cpus),
    "priority": WrOption(INTEGER, _priority),
    "retries": WrOption(INTEGER, _retries),
    "rep_grp": WrOption(STRING, _rep_grp),
    "req_grp": WrOption(STRING, _req_grp),
    "limit_grps": WrOption(STRINGS, _limit_grps),
    "dep_grps": WrOption(STRINGS, _dep_grps),
    "deps": WrOption(STRINGS, _deps),
    # Behaviours: only those about wr's own temporary directories, which shoal never makes,
    # are accepted; one that would run or remove something is refused, not ignored.
    "on_failure": WrOption(OBJECTS, lambda value, out: _behaviours("on_failure", value)),
    "on_success": WrOption(OBJECTS, lambda value, out: _behaviours("on_success", value)),
    "on_exit": WrOption(OBJECTS, lambda value, out: _behaviours("on_exit", value)),
    "env": WrOption(STRINGS, _env, secret=True),
    # shoal's own, not wr's: `shoal run --timeout` for one line.
    "timeout": WrOption(DURATION, _timeout),
}

IGNORED: dict[str, WrOption] = {
    "cwd_matters": WrOption(BOOLEAN),
    "change_home": WrOption(BOOLEAN),
    "group": WrOption(STRING),  # the unix group to run as, not shoal's group
    "mounts": WrOption(OBJECTS),
    "override": WrOption(INTEGER),
    "disk": WrOption(INTEGER),
    "queue": WrOption(STRING),
    "queues_avoid": WrOption(STRING),
    "misc": WrOption(STRING),
    "no_retry_over_walltime": WrOption(DURATION),
    "monitor_docker": WrOption(STRING),
    "container_mounts": WrOption(STRING),
    "container_image_user": WrOption(BOOLEAN),
    "cloud_os": WrOption(STRING),
    "cloud_username": WrOption(STRING),
    "cloud_ram": WrOption(INTEGER),
    "cloud_script": WrOption(STRING),
    "cloud_config_files": WrOption(STRING),
    "cloud_flavor": WrOption(STRING),
    "cloud_shared": WrOption(BOOLEAN),
    "bsub_mode": WrOption(STRING_OR_BOOLEAN),
    "reserve_timeout": WrOption(INTEGER),
}

REFUSED: dict[str, WrOption] = {
    "cmd_deps": WrOption(OBJECTS, refusal="use dep_grps on the jobs depended on and deps here"),
    "modules": WrOption(STRINGS, refusal='put "module load NAME && " in front of the command'),
    "with_docker": WrOption(STRING, refusal='write the "docker run ..." command yourself'),
    "with_singularity": WrOption(
        STRING, refusal='write the "singularity exec ..." command yourself'
    ),
}

OPTIONS: dict[str, WrOption] = {**MAPPED, **IGNORED, **REFUSED}


def map_options(options: Mapping[str, Any]) -> Mapped:
    """Check every option of one line and translate the ones shoal uses into JobSpec fields."""
    out = Mapped()
    for name, value in options.items():
        option = OPTIONS.get(name)
        if option is None:
            raise OptionError(_unknown_option_message(name))
        if value is None or value == "" or value == []:
            continue
        if not option.kind.accepts(value):
            shown = json_kind(value) if option.secret else _show(value)
            raise OptionError(f'option "{name}" should be {option.kind.description}, not {shown}')
        if option.refusal:
            raise OptionError(f'option "{name}" is not supported; {option.refusal}')
        if option.apply:
            option.apply(value, out)
    _join_dep_groups(out)
    return out


def _join_dep_groups(out: Mapped) -> None:
    """A shoal job has one group, used both for reporting (rep_grp) and by dependants (dep_grps)."""
    if not out.dep_groups:
        return
    if len(out.dep_groups) > 1:
        raise OptionError(
            f'option "dep_grps" names {len(out.dep_groups)} groups; '
            "a shoal job belongs to exactly one group"
        )
    (dep_group,) = out.dep_groups
    rep_group = out.fields.get("group")
    if rep_group is not None and rep_group != dep_group:
        raise OptionError(
            f'options "rep_grp" ({_show(rep_group)}) and "dep_grps" ({_show(dep_group)}) '
            "differ; a shoal job has one group, used for reports and dependencies alike"
        )
    out.set("dep_grps", "group", dep_group)


def _unknown_option_message(name: str) -> str:
    close = difflib.get_close_matches(name, OPTIONS, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f'option {_show(name)} is not known ({hint}known: {", ".join(OPTIONS)})'


def _show(value: Any) -> str:
    """A value from the file for a message: JSON, so on one line with anything odd escaped."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."

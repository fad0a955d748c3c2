"""Every input a user or a peer controls, fuzzed: job files (lines, wr, runmaker), ensemble
files (TOML, NetJobs, remote_runner), job specs and worker protocol messages.

Whatever the input, the answer is valid objects or the module's own error (InputError,
ValidationError, ProtocolError) with a one-line message; never any other exception.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import types
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shoal.core import arrays, protocol
from shoal.core.errors import InputError, ProtocolError
from shoal.core.models import JobSpec
from shoal.ensemble.loaders import detect_kind
from shoal.ensemble.loaders.compat.config_classes import Component as ConfigComponent
from shoal.ensemble.loaders.compat.config_classes import Config
from shoal.ensemble.loaders.netjobs import parse_netjobs
from shoal.ensemble.loaders.remote_runner import _compiled, _Mapper, _SourceFiles
from shoal.ensemble.loaders.toml import parse_toml
from shoal.ensemble.spec import Component, Ensemble
from shoal.formats import FORMATS, parse_file, parse_text
from shoal.formats.wr_options import OPTIONS

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_MESSAGE_CHARS = 1000  # an error line longer than this is not "one clear line"


def one_line(error: BaseException) -> str:
    text = str(error)
    # One printable line: no newline, no escape sequence, nothing a terminal cannot show.
    assert not any(unicodedata.category(char) == "Cc" for char in text), text
    assert len(text) <= MAX_MESSAGE_CHARS, text[:200]
    text.encode()
    return text


# Fields that count or name something: never negative.
_NON_NEGATIVE = ("_id", "_ids", "pid", "_bytes", "offset", "size", "_files", "cores", "gpus",
                 "_seconds", "mode", "probe_id")


def assert_sane(value: Any, key: str = "") -> None:
    """What was accepted is safe to store and compute with: finite numbers that fit SQLite's
    INTEGER, counts and ids not negative, text that is valid Unicode."""
    if isinstance(value, dict):
        for name, item in value.items():
            assert_sane(name)
            assert_sane(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            assert_sane(item, key)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int | float):
        assert math.isfinite(value), (key, value)
        if isinstance(value, int):
            assert -(2**63) <= value < 2**63, (key, value)
        if key.endswith(_NON_NEGATIVE):
            assert value >= 0, (key, value)
    elif isinstance(value, str):
        value.encode()


# --- generic text and its mutations --------------------------------------------------------

NASTY = st.sampled_from([
    "\x00", "\t", "\n", "\r", "\r\n", " ", "{", "}", "[", "]", '"', "'", "\\", "=", "#", ".",
    ":", ",", "-", "/", "\ud800", "\udfff", "\ufeff", "\x0b", "\x0c", "\x85", "\u2028", "é",
    "\x1b", "\x7f", "\u200b", "😀", "NaN", "Infinity", "1e999", "-1", "9" * 30, "true", "null",
    "end", "[[component]]",
])
ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(NASTY, st.text(max_size=6)), max_size=40).map("".join),
)
EDIT = st.tuples(st.sampled_from(["insert", "delete", "replace", "duplicate"]),
                 st.integers(min_value=0), st.one_of(NASTY, st.characters()))


def mutate(text: str, edits: list[tuple[str, int, str]]) -> str:
    """Insert, delete, replace or duplicate at random places: a valid file, slightly broken."""
    for kind, where, piece in edits:
        at = where % (len(text) + 1)
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + 1:]
        elif kind == "replace":
            text = text[:at] + piece + text[at + len(piece):]
        else:
            text = text[:at] + text[at:at + 8] + text[at:]
    return text


def mutated(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(mutate, valid, st.lists(EDIT, max_size=4))


# --- JSON values, for option objects, job specs and protocol messages -----------------------

EDGE_NUMBERS = st.sampled_from([
    -1, 0, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    10**400, -0.0, 0.5, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), EDGE_NUMBERS,
    st.text(max_size=12), NASTY,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


def to_json(value: Any) -> str:
    """JSON text as a hostile peer could write it: NaN, Infinity and lone surrogates included."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- job files: lines, wr, runmaker ------------------------------------------------------

COMMANDS = st.one_of(
    st.sampled_from(["echo a", "make -j4 all", "sleep 1 && true", "{ a; b; }", "printf '%s\\n' x"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
    .filter(str.strip),
)
WR_GOOD_OPTIONS = st.fixed_dictionaries({}, optional={
    "memory": st.sampled_from(["1G", "512M", 100, 1.5]),
    "time": st.sampled_from(["1h30m", "90s", 30]),
    "cpus": st.sampled_from([0, 1, 2.5]),
    "priority": st.integers(-10, 10),
    "retries": st.integers(0, 5),
    "rep_grp": st.sampled_from(["g", "batch.1"]),
    "req_grp": st.sampled_from(["align", "r"]),
    "limit_grps": st.just(["db:2"]),
    "deps": st.just(["g"]),
    "dep_grps": st.just(["g"]),
    "env": st.just(["A=1", "B=x=y"]),
    "cwd": st.just("/tmp"),
})
WR_LINES = st.one_of(
    COMMANDS,
    st.builds(lambda cmd, options: f"{cmd}\t{to_json(options)}", COMMANDS, WR_GOOD_OPTIONS),
    st.builds(lambda cmd, options: to_json({"cmd": cmd, **options}), COMMANDS, WR_GOOD_OPTIONS),
)
RUNMAKER_LINES = st.builds(lambda state, cmd: f"{state} {cmd}",
                           st.one_of(st.sampled_from(".rd!e"), NASTY, st.characters()), COMMANDS)
GOOD_FILES = st.one_of(
    st.lists(COMMANDS, max_size=6).map("\n".join),
    st.lists(WR_LINES, max_size=6).map("\n".join),
    st.lists(RUNMAKER_LINES, max_size=6).map("\n".join),
)


def parse_or_input_error(text: str, fmt: str) -> None:
    try:
        jobs = parse_text(text, fmt, source="f")
    except InputError as error:
        assert one_line(error).startswith("f:")
        return
    for job in jobs:
        assert job.line >= 1
        assert isinstance(job.spec, JobSpec)
        assert job.spec.cmd.strip()
        assert_spec_usable(job.spec)


@FUZZ
@given(text=ANY_TEXT, fmt=st.sampled_from(FORMATS))
def test_job_files_any_text(text: str, fmt: str) -> None:
    parse_or_input_error(text, fmt)


@FUZZ
@given(text=mutated(GOOD_FILES), fmt=st.sampled_from(FORMATS))
def test_job_files_valid_lines_mutated(text: str, fmt: str) -> None:
    parse_or_input_error(text, fmt)


@FUZZ
@given(
    command=st.sampled_from(["", "echo a", " "]),
    options=st.dictionaries(st.one_of(st.sampled_from(sorted(OPTIONS)), st.text(max_size=6)),
                            JSON_VALUES, max_size=5),
)
def test_wr_options_random_values(command: str, options: dict[str, Any]) -> None:
    parse_or_input_error(f"{command}\t{to_json(options)}", "wr")
    parse_or_input_error(to_json(options), "wr")


@FEW
@given(depth=st.integers(min_value=1, max_value=100_000), fmt=st.sampled_from(["wr", "auto"]))
def test_wr_nested_json(depth: int, fmt: str) -> None:
    parse_or_input_error(f'x\t{{"env": {deep(depth)}}}', fmt)
    parse_or_input_error(f'{{"cmd": "x", "on_exit": {deep(depth)}}}', fmt)


@FEW
@given(data=st.one_of(st.binary(max_size=200),
                      mutated(GOOD_FILES).map(lambda text: text.encode("utf-8", "surrogatepass"))),
       fmt=st.sampled_from(FORMATS))
def test_job_file_bytes(data: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobs"
        path.write_bytes(data)
        try:
            parse_file(path, fmt)
        except InputError as error:
            assert one_line(error).startswith(str(path))


@FUZZ
@given(defaults=st.dictionaries(st.sampled_from(sorted(JobSpec.model_fields)), JSON_VALUES,
                                max_size=4))
def test_job_file_defaults(defaults: dict[str, Any]) -> None:
    try:
        parse_text("echo a\n", "lines", source="f", defaults=defaults)
    except InputError as error:
        assert one_line(error).startswith("f:")


# --- job specs, as the server receives them ----------------------------------------------

SPEC_VALUES = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.one_of(st.text(max_size=8), NASTY), st.one_of(st.text(max_size=8), NASTY),
                    max_size=4),
    st.lists(st.one_of(st.text(max_size=8), NASTY, st.sampled_from(["1", "group:g", "db:2"])),
             max_size=4),
    st.lists(st.dictionaries(st.sampled_from(["path", "kind", "mode", "size", "sha256", "x"]),
                             SCALARS, max_size=5), max_size=3),
    st.just("9" * 5000), st.just(["9" * 5000]), st.just("x" * 70_000),
)
GOOD_SPEC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "cwd": st.sampled_from(["/tmp", "", "rel/dir"]),
    "env": st.dictionaries(st.sampled_from(["A", "PATH", "X_1"]), st.text(max_size=5)),
    "name": st.text(max_size=10),
    "group": st.sampled_from(["default", "g1", "a.b:c"]),
    "priority": st.integers(-5, 5),
    "retries": st.integers(0, 3),
    "cores": st.integers(1, 4),
    "memory_bytes": st.integers(0, 2**40),
    "time_seconds": st.floats(0.001, 1e6),
    "time_limit_seconds": st.floats(0.001, 1e6),
    "gpus": st.integers(0, 2),
    "resources": st.dictionaries(st.sampled_from(["lic", "db"]), st.integers(1, 9)),
    "req_group": st.text(max_size=6),
    "grow_memory": st.booleans(),
    "after": st.lists(st.sampled_from(["1", "42", "group:g"]), max_size=2),
    "after_any": st.lists(st.sampled_from(["7", "group:h"]), max_size=2),
    "limits": st.lists(st.sampled_from(["db", "db:2"]), max_size=2),
    "on_worker": st.sampled_from(["w1", "host.example"]),
    "gate": st.booleans(),
    "files": st.lists(st.fixed_dictionaries({"path": st.sampled_from(["a", "/x/y"])},
                                            optional={"size": st.integers(0, 99),
                                                      "kind": st.sampled_from(["file", "dir"])}),
                      max_size=2),
    "always_copy": st.booleans(),
}
assert set(GOOD_SPEC_FIELDS) | {"cmd"} == set(JobSpec.model_fields)


def broken(good: st.SearchStrategy[dict[str, Any]], bad: st.SearchStrategy[Any],
           names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid object with up to two of its fields set to anything, or one added."""
    def spoil(value: dict[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
        return {**value, **dict(edits)}
    return st.builds(spoil, good, st.lists(st.tuples(st.sampled_from(names), bad), max_size=2))


SPECS = broken(st.fixed_dictionaries({"cmd": COMMANDS}, optional=GOOD_SPEC_FIELDS),
               st.one_of(SPEC_VALUES, SCALARS), [*JobSpec.model_fields, "x"])


@FUZZ
@given(fields=SPECS)
def test_job_spec_random_fields(fields: dict[str, Any]) -> None:
    try:
        spec = JobSpec.model_validate(fields)
    except ValidationError as error:
        for problem in error.errors():
            assert "\n" not in problem["msg"]
            assert problem["loc"], problem
        return
    assert_spec_usable(spec)


def assert_spec_usable(spec: JobSpec) -> None:
    """An accepted spec can be stored, scheduled and sent to a worker without an error."""
    assert_sane(spec.model_dump())
    json.loads(spec.model_dump_json())
    for text in (spec.cmd, spec.cwd or "", *spec.env, *spec.env.values()):
        assert "\x00" not in text
    for dependency in (*spec.after, *spec.after_any):
        if not dependency.startswith("group:"):
            assert 0 <= int(dependency) < 2**63
    for entry in spec.files:  # as the server turns them into an Assignment
        protocol.FileEntry.model_validate(entry)


# --- the worker protocol -----------------------------------------------------------------

def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


FIELD_VALUES = st.one_of(
    JSON_VALUES, EDGE_NUMBERS,
    st.sampled_from(["stdout", "stderr", "exited", "killed", "file", "dir", "a" * 64, "x" * 300]),
    st.integers(min_value=0, max_value=2**40), st.floats(min_value=0, max_value=1e12),
)


def value_for(annotation: Any, depth: int = 2) -> st.SearchStrategy[Any]:
    """Plausible values of a field's type: right in kind, not always in range."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return st.none()
    if origin is Annotated:
        return value_for(args[0], depth)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (Union, types.UnionType):
        return st.one_of(*(value_for(arg, depth) for arg in args))
    if origin is list:
        return st.lists(value_for(args[0], depth - 1), max_size=3 if depth > 0 else 0)
    if origin is dict:
        return st.dictionaries(value_for(args[0], depth), value_for(args[1], depth), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return valid_dicts(annotation, depth - 1)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(st.integers(0, 10**6), st.integers(), EDGE_NUMBERS.filter(
            lambda number: isinstance(number, int)))
    if annotation is float:
        return st.one_of(st.floats(0, 1e10), st.floats(), EDGE_NUMBERS)
    return st.one_of(st.text(max_size=8), NASTY)


def valid_dicts(model: type[BaseModel], depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    fields = {name: value_for(info.annotation, depth) for name, info in model.model_fields.items()
              if name != "type"}
    required = {name: strategy for name, strategy in fields.items()
                if model.model_fields[name].is_required()}
    optional = {name: strategy for name, strategy in fields.items() if name not in required}
    if "type" in model.model_fields:
        required["type"] = st.just(model.model_fields["type"].default)
    return st.fixed_dictionaries(required, optional=optional)


def message_dicts(model: type[BaseModel], depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the model's own field names (its tag kept), holding anything at all."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        if name == "type":
            required[name] = st.one_of(st.just(info.default), st.just(info.default),
                                       st.text(max_size=8))
            continue
        choices: list[st.SearchStrategy[Any]] = [FIELD_VALUES]
        nested = _models_in(info.annotation)
        if nested and depth:
            inner = st.one_of(*(message_dicts(m, depth - 1) for m in nested))
            choices += [inner, st.lists(inner, max_size=3)]
        optional[name] = st.one_of(*choices)
    return st.fixed_dictionaries(required, optional=optional)


def _message_classes(union: Any) -> list[type[BaseModel]]:
    return _models_in(get_args(union)[0])


FROM_WORKER = _message_classes(protocol.FromWorker)
TO_WORKER = _message_classes(protocol.ToWorker)
DECODERS: list[tuple[Callable[[str | bytes], Any], list[type[BaseModel]]]] = [
    (protocol.decode_from_worker, FROM_WORKER), (protocol.decode_to_worker, TO_WORKER)]


def decode_or_protocol_error(decode: Callable[[str | bytes], Any], data: str | bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError as error:
        one_line(error)
        return
    assert_sane(message.model_dump())
    text = protocol.encode(message)
    assert decode(text) == message  # what was accepted survives a round trip


def test_protocol_covers_every_message() -> None:
    assert {m.__name__ for m in FROM_WORKER} >= {"Register", "Finished", "OutputChunk"}
    assert {m.__name__ for m in TO_WORKER} >= {"Assign", "Welcome", "Peek"}


@FUZZ
@given(data=st.one_of(ANY_TEXT, st.binary(max_size=300)), direction=st.sampled_from([0, 1]))
def test_protocol_any_text_or_bytes(data: str | bytes, direction: int) -> None:
    decode_or_protocol_error(DECODERS[direction][0], data)


@FUZZ
@given(data=st.data(), direction=st.sampled_from([0, 1]))
def test_protocol_typed_objects_with_random_fields(data: st.DataObject, direction: int) -> None:
    decode, classes = DECODERS[direction]
    model = data.draw(st.sampled_from(classes))
    value = data.draw(message_dicts(model))
    decode_or_protocol_error(decode, to_json(value))
    decode_or_protocol_error(decode, to_json(value).encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.data(), direction=st.sampled_from([0, 1]))
def test_protocol_valid_objects_with_a_field_or_two_broken(data: st.DataObject,
                                                          direction: int) -> None:
    decode, classes = DECODERS[direction]
    model = data.draw(st.sampled_from(classes))
    value = data.draw(broken(valid_dicts(model), FIELD_VALUES, [*model.model_fields, "x"]))
    decode_or_protocol_error(decode, to_json(value))


@FUZZ
@given(data=st.data(), direction=st.sampled_from([0, 1]))
def test_protocol_typed_objects_mutated(data: st.DataObject, direction: int) -> None:
    decode, classes = DECODERS[direction]
    model = data.draw(st.sampled_from(classes))
    text = data.draw(mutated(valid_dicts(model).map(to_json)))
    decode_or_protocol_error(decode, text)


@FEW
@given(depth=st.integers(min_value=1, max_value=200_000), direction=st.sampled_from([0, 1]))
def test_protocol_nested_json(depth: int, direction: int) -> None:
    decode = DECODERS[direction][0]
    decode_or_protocol_error(decode, deep(depth))
    decode_or_protocol_error(decode, f'{{"type": "heartbeat", "x": {deep(depth)}}}')


@pytest.mark.parametrize("direction", [0, 1])
def test_protocol_message_size_limit(direction: int) -> None:
    decode = DECODERS[direction][0]
    padding = " " * protocol.MAX_MESSAGE_BYTES
    for data in ('{"type": "heartbeat"}' + padding, ('{"type": "heartbeat"}' + padding).encode(),
                 '{"type": "heartbeat"}' + "é" * (protocol.MAX_MESSAGE_BYTES // 2)):
        with pytest.raises(ProtocolError, match="larger than"):
            decode(data)


# --- ensemble files ----------------------------------------------------------------------

TOML_VALUES = st.one_of(
    st.sampled_from([
        '"x"', '""', '" "', "1", "-1", "0", "1.5", "inf", "nan", "true", "false", "[]", "{}",
        '["a", "a"]', '[1, "a"]', "[[1]]", '{ a = 1 }', '{ "/" = "" }', '"10m"', '"0s"',
        '"all"', '"started"', "1979-05-27", "07:32:00", '"a\\u0000b"', '"\\u0085"',
        "9" * 30, '"' + "x" * 300 + '"', "[" * 50 + "]" * 50,
    ]),
    st.text(max_size=8).map(json.dumps),
)
TOML_KEYS = st.sampled_from([
    "name", "timeout", "run_timeout", "min_hosts", "host", "command", "executable", "args",
    "env", "base_dir", "files", "stage", "wait", "x", "1", "0", "A", "component",
])
TOML_LINES = st.one_of(
    st.sampled_from(["[[component]]", "[stages]", "[component.env]", "[component]", "[env]"]),
    st.builds(lambda key, value: f"{key} = {value}", TOML_KEYS, TOML_VALUES),
)
GOOD_TOML = st.builds(
    lambda name, command, stage: (f'name = "{name}"\n[[component]]\nname = "a"\n'
                                  f'command = {json.dumps(command)}\nstage = {stage}\n'
                                  '[[component]]\nname = "b"\nexecutable = "x"\n'
                                  'args = ["-p", 1]\nenv = { A = "1" }\n'),
    st.sampled_from(["e", "web bench", "x" * 200]), COMMANDS, st.integers(0, 3))
NETJOBS_LINES = st.one_of(
    st.sampled_from([
        "test0:", "end", "-generaltimeout: 5m", "-minhosts: all", "-minhosts: 3",
        "-timeout: 30s", "-timeout: none", "-timeout: 99999999999999999999s", 'h1: "./run"',
        "h-1: x", 'localhost: ""', "é: x", "-x", "# c", "", "x" * 300 + ":",
    ]),
    st.builds(lambda host, command: f"{host}: {command}",
              st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=8),
              COMMANDS),
)
GOOD_NETJOBS = st.lists(
    st.builds(lambda label, targets: "\n".join([f"{label}:", *targets, "end"]),
              st.sampled_from(["test0", "a b", "t"]),
              st.lists(st.sampled_from(['h1: "./run"', "h2: sleep 1", "-timeout: 30s"]),
                       min_size=1, max_size=4)),
    min_size=1, max_size=3).map("\n".join)


def load_or_input_error(load: Callable[[], Any], source: str = "t") -> None:
    try:
        result = load()
    except InputError as error:
        assert one_line(error).startswith(source)
        return
    if callable(result):  # compiled, not run
        return
    for ensemble in result if isinstance(result, list) else [result]:
        assert isinstance(ensemble, Ensemble)
        assert_sane(ensemble.model_dump())
        for component in ensemble.components:  # what the server makes of it
            JobSpec(cmd=component.command, cwd=component.base_dir or "", env=component.env,
                    name=f"{ensemble.name}/{component.name}", on_worker=component.host,
                    time_limit_seconds=component.timeout_seconds or ensemble.timeout_seconds)


def parse_both(text: str) -> None:
    detect_kind(text)  # never raises
    load_or_input_error(lambda: parse_toml(text, source="t", base_dir=Path("/"),
                                           default_name=text[:200] or "t"))
    load_or_input_error(lambda: parse_netjobs(text, source="t"))


@FUZZ
@given(text=ANY_TEXT)
def test_ensemble_files_any_text(text: str) -> None:
    parse_both(text)


@FUZZ
@given(text=st.one_of(st.lists(TOML_LINES, max_size=14).map("\n".join), mutated(GOOD_TOML)))
def test_toml_structured(text: str) -> None:
    parse_both(text)


@FUZZ
@given(text=st.one_of(st.lists(NETJOBS_LINES, max_size=14).map("\n".join),
                      mutated(GOOD_NETJOBS)))
def test_netjobs_structured(text: str) -> None:
    parse_both(text)


@FEW
@given(depth=st.integers(min_value=1, max_value=50_000))
def test_toml_nested(depth: int) -> None:
    parse_both(f"a = {deep(depth)}\n")
    parse_both("[[component]]\n" + f'name = "a"\ncommand = "x"\nbase_dir = {deep(depth)}\n')


COMPONENT_VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(SCALARS, SCALARS, max_size=2),
    st.sampled_from(["localhost", "h1", "./run", "/bin/true", "", " ", "a\x00b"]),
    st.just(iter([1, 2])), st.just(object()), st.just(10**400), st.just(math.nan),
    st.just([10**5000]), st.just(10**5000),  # too long for str(): ValueError
)


@FUZZ
@given(components=st.lists(
    st.dictionaries(st.sampled_from(sorted(ConfigComponent.LEGAL_ATTRS)), COMPONENT_VALUES),
    min_size=0, max_size=3))
def test_remote_runner_components_with_random_attributes(
        components: list[dict[str, Any]]) -> None:
    config = Config()
    for attributes in components:
        config.add_component(ConfigComponent(**attributes))
    files = _SourceFiles(Path("/nonexistent/t.py"), None)
    # A component's errors name the file and line that added it: here, this one.
    load_or_input_error(lambda: _Mapper(config, files).ensemble(), "/")


@FUZZ
@given(text=st.one_of(ANY_TEXT, st.just("(" * 10_000), st.just("x = " + "-" * 100_000 + "1")))
def test_remote_runner_source_compiles_or_input_error(text: str) -> None:
    path = Path("/nonexistent/t.py")
    # Compiled only: running arbitrary text would run arbitrary code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # odd but valid Python
        load_or_input_error(lambda: _compiled(text, path, _SourceFiles(path, None)), str(path))


@FUZZ
@given(fields=st.fixed_dictionaries(
    {"name": st.one_of(st.just("a"), SCALARS), "host": st.one_of(st.just("h"), SCALARS),
     "command": st.one_of(COMMANDS, SCALARS)},
    optional={"env": SPEC_VALUES, "base_dir": SPEC_VALUES, "stage": FIELD_VALUES,
              "timeout_seconds": FIELD_VALUES, "wait": FIELD_VALUES,
              "files": st.lists(st.dictionaries(st.sampled_from(["local", "remote"]),
                                                SCALARS, max_size=2), max_size=2)}))
def test_ensemble_model_random_fields(fields: dict[str, Any]) -> None:
    # What the server is sent to start an ensemble.
    try:
        Ensemble.model_validate({"name": "e", "components": [fields]})
    except ValidationError as error:
        for problem in error.errors():
            assert "\n" not in problem["msg"]
    with contextlib.suppress(ValidationError):
        Component.model_validate(fields)


# --- job arrays (shoal add --array / --each-line) ----------------------------------------

@FUZZ
@given(spec=st.one_of(ANY_TEXT, mutated(st.sampled_from(["1-100", "1-100:10", "1,5,9", "1-3,7"]))),
       lines=ANY_TEXT, name=st.sampled_from([None, "n", "n-{}"]))
def test_job_arrays(spec: str, lines: str, name: str | None) -> None:
    def numbers() -> list[tuple[int, str]]:
        runs = arrays.parse_array_spec(spec)
        assert arrays.run_count(runs) <= arrays.MAX_ARRAY_TASKS
        return [(n, str(n)) for n in arrays.numbers_from(runs, 0, 50)]

    for read in (numbers, lambda: arrays.items_from_lines(lines)):
        try:
            items = read()
        except ValueError as error:  # the caller names the option
            one_line(error)
            continue
        for fields in arrays.expand({"cmd": "run {}", "name": name}, items[:50]):
            assert fields["name"] is None or fields["name"].isprintable()
            assert 0 <= int(fields["env"][arrays.INDEX_VARIABLE]) < 2**63

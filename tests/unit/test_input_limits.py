"""Size and content limits on everything a client submits: each over-limit input is refused
with one line naming its field, and an env value never appears in any message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from shoal.core.errors import InputError
from shoal.core.models import (
    MAX_COMMAND_BYTES,
    MAX_DEPENDENCIES,
    MAX_ENV_BYTES,
    MAX_ENV_ENTRIES,
    MAX_ENV_NAME_CHARS,
    MAX_ENV_VALUE_BYTES,
    MAX_FILES,
    MAX_GROUP_CHARS,
    MAX_INT64,
    MAX_LIMITS,
    MAX_LINE_BYTES,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_RESOURCES,
    JobSpec,
)
from shoal.ensemble.loaders.netjobs import parse_netjobs
from shoal.ensemble.loaders.toml import parse_toml
from shoal.ensemble.spec import MAX_ENSEMBLE_NAME_CHARS, MAX_HOST_CHARS, Component, Ensemble
from shoal.formats import parse_text

SECRET = "hunter2-s3cr3t"
BIG_ENV = {f"V{i}": "v" * MAX_ENV_VALUE_BYTES
           for i in range(MAX_ENV_BYTES // MAX_ENV_VALUE_BYTES + 1)}

# (fields beyond cmd="true", the field the message names, words the message holds)
OVER_LIMIT: list[tuple[dict[str, Any], str, str]] = [
    ({"cmd": "x" * (MAX_COMMAND_BYTES + 1)}, "cmd", f"longer than {MAX_COMMAND_BYTES} bytes"),
    ({"cmd": "é" * (MAX_COMMAND_BYTES // 2 + 1)}, "cmd", "bytes"),  # counted in UTF-8
    ({"cmd": " \t\n"}, "cmd", "command is empty"),
    ({"cmd": "echo \x00"}, "cmd", "NUL"),
    ({"cmd": "echo \ud800"}, "cmd", "unicode"),
    ({"env": {f"V{i}": "" for i in range(MAX_ENV_ENTRIES + 1)}}, "env",
     f"more than {MAX_ENV_ENTRIES}"),
    ({"env": {"A=B": "1"}}, "env", "variable name"),
    ({"env": {"": "1"}}, "env", "variable name"),
    ({"env": {"A B": "1"}}, "env", "variable name"),
    ({"env": {"A\x00": "1"}}, "env", "variable name"),
    ({"env": {"A" * (MAX_ENV_NAME_CHARS + 1): "1"}}, "env", "variable name"),
    ({"env": {"A": "x" * (MAX_ENV_VALUE_BYTES + 1)}}, "env",
     f"the value of A is longer than {MAX_ENV_VALUE_BYTES} bytes"),
    ({"env": {"A": "a\x00b"}}, "env", "the value of A contains a NUL"),
    ({"env": {"A": "\udc80"}}, "env", "not valid Unicode"),
    ({"env": BIG_ENV}, "env", f"larger than {MAX_ENV_BYTES} bytes"),
    ({"cwd": "/" + "d" * MAX_PATH_CHARS}, "cwd", f"longer than {MAX_PATH_CHARS}"),
    ({"cwd": "/tmp\x00"}, "cwd", "NUL"),
    ({"name": "n" * (MAX_NAME_CHARS + 1)}, "name", f"longer than {MAX_NAME_CHARS}"),
    ({"name": "two\nlines"}, "name", "printable"),
    ({"name": "\x1b[31mred"}, "name", "printable"),
    ({"req_group": "r" * (MAX_NAME_CHARS + 1)}, "req_group", "longer than"),
    ({"on_worker": "w\t1"}, "on_worker", "printable"),
    ({"group": "g" * (MAX_GROUP_CHARS + 1)}, "group", f"1-{MAX_GROUP_CHARS} characters"),
    ({"group": "a\nb"}, "group", "group names"),
    ({"after": ["1"] * (MAX_DEPENDENCIES + 1)}, "after", f"more than {MAX_DEPENDENCIES}"),
    ({"after_any": ["9" * 5000]}, "after_any", "neither a job id"),
    ({"after": ["group:" + "g" * (MAX_GROUP_CHARS + 1)]}, "after", "neither a job id"),
    ({"limits": [f"l{i}" for i in range(MAX_LIMITS + 1)]}, "limits", f"more than {MAX_LIMITS}"),
    ({"limits": ["l" * (MAX_GROUP_CHARS + 1)]}, "limits", "not a limit name"),
    ({"resources": {f"r{i}": 1 for i in range(MAX_RESOURCES + 1)}}, "resources",
     f"more than {MAX_RESOURCES}"),
    ({"resources": {"lic": MAX_INT64 + 1}}, "resources", "at most"),
    ({"memory_bytes": MAX_INT64 + 1}, "memory_bytes", "less than or equal"),
    ({"time_limit_seconds": float("inf")}, "time_limit_seconds", "finite"),
    ({"time_seconds": float("nan")}, "time_seconds", ""),
    ({"files": [{"path": "a"}] * (MAX_FILES + 1)}, "files", f"more than {MAX_FILES}"),
    ({"files": [{"path": "a\x00"}]}, "files", "entry 0.path: the path contains a NUL"),
    ({"files": [{"path": "a", "size": -1}]}, "files", "entry 0.size"),
    ({"files": [{"nope": 1}]}, "files", "entry 0"),
]


def first_problem(error: ValidationError) -> tuple[str, str]:
    problem = error.errors()[0]
    return str(problem["loc"][0]), problem["msg"]


@pytest.mark.parametrize(("fields", "field", "words"), OVER_LIMIT,
                         ids=[f"{case[1]}-{index}" for index, case in enumerate(OVER_LIMIT)])
def test_over_limit_job_specs_name_their_field(fields: dict[str, Any], field: str,
                                               words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"cmd": "true", **fields})
    where, message = first_problem(caught.value)
    assert where == field
    assert words.lower() in message.lower()
    assert "\n" not in message and len(message) < 300
    assert not message.startswith("Value error")


def test_limits_are_inclusive() -> None:
    JobSpec(cmd="x" * MAX_COMMAND_BYTES, cwd="/" * MAX_PATH_CHARS, name="n" * MAX_NAME_CHARS,
            group="g" * MAX_GROUP_CHARS, env={"A" * MAX_ENV_NAME_CHARS: "v" * MAX_ENV_VALUE_BYTES},
            after=["1"] * MAX_DEPENDENCIES, limits=[f"l{i}" for i in range(MAX_LIMITS)],
            memory_bytes=MAX_INT64)
    JobSpec(cmd="x", env={f"V{i}": "" for i in range(MAX_ENV_ENTRIES)})


# --- ensemble models, as the server receives them ----------------------------------------

COMPONENT_OVER_LIMIT: list[tuple[dict[str, Any], str]] = [
    ({"command": "x" * (MAX_COMMAND_BYTES + 1)}, "command"),
    ({"command": "a\x00"}, "command"),
    ({"env": {"A": "x" * (MAX_ENV_VALUE_BYTES + 1)}}, "env"),
    ({"env": {"A=": "1"}}, "env"),
    ({"host": "h" * (MAX_HOST_CHARS + 1)}, "host"),
    ({"host": "h\n1"}, "host"),
    ({"base_dir": "/" + "d" * MAX_PATH_CHARS}, "base_dir"),
    ({"files": [{"local": "/a\x00", "remote": "b"}]}, "files"),
]


@pytest.mark.parametrize(("fields", "field"), COMPONENT_OVER_LIMIT)
def test_over_limit_components_name_their_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Component.model_validate({"name": "c", "host": "h", "command": "true", **fields})
    assert first_problem(caught.value)[0] == field


@pytest.mark.parametrize("name", ["e" * (MAX_ENSEMBLE_NAME_CHARS + 1), "a\nb", ""])
def test_ensemble_names_are_bounded_and_printable(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Ensemble(name=name, components=[Component(name="c", host="h", command="true")])
    assert first_problem(caught.value)[0] == "name"


# --- lines of input files ----------------------------------------------------------------

def test_an_overlong_line_names_its_file_and_line() -> None:
    long_line = "echo " + "x" * MAX_LINE_BYTES
    for fmt in ("lines", "wr", "runmaker", "auto"):
        text = ". ok\n. " + long_line if fmt == "runmaker" else "ok\n" + long_line
        with pytest.raises(InputError) as caught:
            parse_text(text, fmt, source="jobs.txt")
        assert str(caught.value) == f"jobs.txt:2: the line is longer than {MAX_LINE_BYTES} bytes"
    with pytest.raises(InputError, match=r"^e\.toml:3: the line is longer"):
        parse_toml('name = "e"\n\n# ' + long_line, source="e.toml", base_dir=Path("/"),
                   default_name="e")
    with pytest.raises(InputError, match=r"^n\.txt:2: the line is longer"):
        parse_netjobs("t:\nh: " + long_line + "\nend\n", source="n.txt")


# --- env values stay secret --------------------------------------------------------------

BAD_ENVS: list[dict[str, str]] = [
    {"A": SECRET + "\x00"},
    {"A": SECRET + "x" * MAX_ENV_VALUE_BYTES},
    {"A": SECRET + "\ud800"},
    {"BAD KEY": SECRET},
    {"A=": SECRET},
    {**{f"V{i}": SECRET for i in range(MAX_ENV_ENTRIES + 1)}},
    {**BIG_ENV, "S": SECRET},
]


@pytest.mark.parametrize("env", BAD_ENVS, ids=range(len(BAD_ENVS)))
def test_env_values_never_appear_in_validation_messages(env: dict[str, str]) -> None:
    for validate in (lambda: JobSpec(cmd="true", env=env),
                     lambda: Component(name="c", host="h", command="true", env=env)):
        with pytest.raises(ValidationError) as caught:
            validate()
        error = caught.value
        assert first_problem(error)[0] == "env"
        shown = [str(error), repr(error), *(problem["msg"] for problem in error.errors())]
        assert not any(SECRET in text for text in shown)


@pytest.mark.parametrize("line", [
    'x\t{"env": ["A=' + SECRET + '\\u0000"]}',
    'x\t{"env": ["=' + SECRET + '"]}',
    'x\t{"env": ["' + SECRET + '"]}',
    'x\t{"env": "A=' + SECRET + '"}',
    'x\t{"env": ["A=' + SECRET + '", 5]}',
    'x\t{"env": ["BAD KEY=' + SECRET + '"]}',
    'x\t{"env": ["A=' + SECRET + "x" * MAX_ENV_VALUE_BYTES + '"]}',
])
def test_env_values_never_appear_in_wr_file_errors(line: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_text(line, "wr", source="jobs.txt")
    assert str(caught.value).startswith('jobs.txt:1: option "env"')
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("env", [
    f'{{ A = "{SECRET}\\u0000" }}', f'{{ "BAD KEY" = "{SECRET}" }}',
    f'{{ A = "{SECRET}{"x" * MAX_ENV_VALUE_BYTES}" }}', f'{{ A = ["{SECRET}"] }}',
])
def test_env_values_never_appear_in_ensemble_file_errors(env: str) -> None:
    text = f'[[component]]\nname = "a"\ncommand = "true"\nenv = {env}\n'
    with pytest.raises(InputError) as caught:
        parse_toml(text, source="e.toml", base_dir=Path("/"), default_name="e")
    assert str(caught.value).startswith("e.toml:")
    assert SECRET not in str(caught.value)


def test_env_values_never_appear_in_cli_errors() -> None:
    from shoal.cli.add import spec_from_fields

    for env in BAD_ENVS:
        with pytest.raises(InputError) as caught:
            spec_from_fields({"cmd": "true", "env": env})
        assert str(caught.value).startswith("--env: ")
        assert SECRET not in str(caught.value)


class _Add(BaseModel):
    jobs: list[JobSpec]


def test_the_server_names_the_field_and_hides_the_value() -> None:
    """Through FastAPI's own body parsing, and the server's message for validation errors."""
    from shoal.server.app import _validation_message

    app = FastAPI()

    @app.post("/jobs")
    async def add(body: _Add) -> dict[str, int]:
        return {"added": len(body.jobs)}

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    cases = [
        ({"cmd": "true", "env": {"A": SECRET + "\x00"}}, "jobs[0].env: the value of A contains"),
        ({"cmd": "true", "env": {"A": "\ud800" + SECRET}}, "jobs[0].env: the value of A is not"),
        ({"cmd": "x" * (MAX_COMMAND_BYTES + 1)}, "jobs[0].cmd: command is longer than"),
        ({"cmd": "true", "after": ["9" * 5000]}, "jobs[0].after: '99999"),
        ({"cmd": "true", "files": [{"path": "a", "bogus": 1}]}, "jobs[0].files: entry 0.bogus"),
    ]

    async def post(job: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shoal") as client:
            # As JSON escapes: a lone surrogate goes as \\ud800, as a hostile client can send it.
            return await client.post("/jobs", content=json.dumps({"jobs": [job]}),
                                     headers={"content-type": "application/json"})

    for job, message in cases:
        response = asyncio.run(post(job))
        assert response.status_code == 400
        assert response.json()["error"].startswith(message)
        assert SECRET not in response.text

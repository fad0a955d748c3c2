"""The HTTP API against its own OpenAPI spec.

schemathesis reads the spec the live server publishes, generates requests for every operation
in it (valid and invalid ones), sends them over TLS under each kind of caller, and checks every
answer: never a server error (5xx), and always a status code, content type, headers and body
that the spec documents for that operation.

The server the generated requests go to has no worker, so the jobs and ensembles they add are
only queued: no generated command ever runs. The answers about real jobs, workers and ensembles
are checked against the same spec on a second server, which runs only this file's commands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .cluster import Cluster, wait_until

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
SEED = 20240601
USER_NAME = "alice"
# A long poll answers at once when anything changed since `since`, else after `wait` seconds
# (at most 30): a generated `wait` is cut to this, so that the run never sits in one.
LONG_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Plan:
    """How hard to try under one identity."""

    examples: int  # requests per operation in the fuzzing phase
    coverage: bool  # also the coverage phase: boundary and invalid values, methodically


# The admin may call everything, so the whole spec is exercised under it; a user reaches most
# of it; a worker and an anonymous caller are refused almost everywhere before their inputs
# matter (and those refusals must be documented too).
PLANS = {
    "admin": Plan(examples=20, coverage=True),
    "user": Plan(examples=15, coverage=False),
    "worker": Plan(examples=5, coverage=False),
    "anonymous": Plan(examples=5, coverage=False),
}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("api-schema")
    logs = root / "logs"
    logs.mkdir()
    cluster = Cluster(root / "home", logs)
    try:
        cluster.start_server()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ca_file(live_server: Cluster) -> str:
    path = live_server.connection.get("ca_file")
    assert path and Path(path).is_file(), "the server should speak TLS with its own CA"
    return str(path)


@pytest.fixture(scope="module")
def tokens(live_server: Cluster) -> dict[str, str | None]:
    """The bearer token of each kind of caller; none for the anonymous one."""
    connection = live_server.connection
    user = live_server.api("POST", "/tokens", json={"role": "user", "name": USER_NAME})
    return {"admin": connection["admin_token"], "user": user["token"],
            "worker": connection["worker_token"], "anonymous": None}


@pytest.fixture(scope="module", params=list(PLANS))
def identity(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def session(identity: str, tokens: dict[str, str | None],
            ca_file: str) -> Iterator[requests.Session]:
    """A kept-alive connection that trusts the server's own CA alone, whatever the
    environment says (REQUESTS_CA_BUNDLE would otherwise win over `verify`)."""
    with requests.Session() as http:
        http.trust_env = False
        http.verify = ca_file
        token = tokens[identity]
        if token is not None:
            http.headers["Authorization"] = f"Bearer {token}"
        yield http


def spec_reader(server: Cluster) -> dict[str, str]:
    """The spec needs a token, of any role."""
    return {"Authorization": f"Bearer {server.connection['admin_token']}"}


@pytest.fixture(scope="module")
def api_schema(live_server: Cluster, ca_file: str, identity: str) -> Any:
    """The spec as the live server publishes it, set up for one identity (a fixture per
    identity is what makes pytest run every operation under each)."""
    plan = PLANS[identity]
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "tls-verify": ca_file,
        "generation": {"max-examples": plan.examples, "deterministic": True,
                       "database": "none"},
        "phases": {"coverage": {"enabled": plan.coverage}},
    })
    return schemathesis.openapi.from_url(f"{live_server.url}/api/v1/openapi.json",
                                         config=config, verify=ca_file, timeout=30,
                                         headers=spec_reader(live_server))


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 names each operation's subtest through `node._nodeid`, which
    pytest 9 no longer has (its `nodeid` comes from `_id`): give it one to read and write."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    # Either would end the run: stop exits the server, drain stops it scheduling for good.
    method="POST", path=["/api/v1/server/stop", "/api/v1/server/drain"],
).exclude(
    # A generated allocation queue would run generated engine commands on this host (its
    # answers are checked in test_command_alloc.py).
    method="POST", path="/api/v1/alloc",
)


def _shorten_long_poll(case: Any) -> None:
    wait: Any = (case.query or {}).get("wait")
    try:
        too_long = float(wait) > LONG_POLL_SECONDS
    except (TypeError, ValueError):
        return  # absent, or not a number: the server must refuse the latter with a 400
    if too_long:
        case.query["wait"] = LONG_POLL_SECONDS


def _spare_our_tokens(case: Any) -> None:
    """A generated revocation may name anything but the tokens this test calls with."""
    name = (case.path_parameters or {}).get("name")
    if case.method.upper() == "DELETE" and name in {USER_NAME, "default-admin",
                                                    "default-worker"}:
        case.path_parameters["name"] = f"{name}-x"


@schema.parametrize()
def test_every_answer_is_documented_and_none_is_a_server_error(
        case: Any, session: requests.Session) -> None:
    _shorten_long_poll(case)
    _spare_our_tokens(case)
    case.call_and_validate(session=session, timeout=60, checks=CHECKS)


# ---- the shapes of real objects ------------------------------------------------------------
# Generated requests rarely name a job that exists, and with no worker no job runs and no
# ensemble starts. So the documented answers for real objects, in their different states, are
# checked here too, on a second server that has a worker and runs only the commands below.

FINAL_RUN_STATES = {"done", "failed", "cancelled", "abandoned"}


def test_real_objects_in_every_state_are_answered_as_documented(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    try:
        cluster.start_server()
        cluster.start_worker("w1", 2)
        ca_file = str(cluster.connection["ca_file"])
        spec = schemathesis.openapi.from_url(
            f"{cluster.url}/api/v1/openapi.json", verify=ca_file, timeout=30,
            headers=spec_reader(cluster),
            config=schemathesis.Config.from_dict({"tls-verify": ca_file}))

        added = cluster.api("POST", "/jobs", json={"jobs": [
            {"cmd": "echo out; echo err >&2", "cwd": str(tmp_path), "group": "shapes"},
            {"cmd": "exit 3", "cwd": str(tmp_path), "group": "shapes"},
            {"cmd": "echo started; sleep 600", "cwd": str(tmp_path), "limits": ["db:1"]},
        ]})
        done, failed, running = added["ids"]
        [waiting] = cluster.api("POST", "/jobs", json={"jobs": [
            {"cmd": "true", "cwd": str(tmp_path), "after": [str(running)]}]})["ids"]
        cluster.wait_state(done, "done")
        cluster.wait_state(failed, "failed")
        cluster.wait_state(running, "running")
        content = b"the content of a file\n"
        sha = hashlib.sha256(content).hexdigest()
        cluster.api("PUT", f"/blobs/{sha}", content=content)
        run = cluster.api("POST", "/ensembles", json={"ensemble": {
            "name": "shapes", "components": [{"name": "one", "host": "w1",
                                              "command": "echo component"}]}})
        wait_until(lambda: cluster.api("GET", f"/ensembles/{run['run_id']}")["state"]
                   in FINAL_RUN_STATES, message="the ensemble run to end")

        asked: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/api/v1/jobs", {}),
            ("GET", "/api/v1/jobs", {"query": {"state": "running"}}),
            *[("GET", "/api/v1/jobs/{job_id}", {"path_parameters": {"job_id": job_id}})
              for job_id in (done, failed, running, waiting)],
            *[("GET", "/api/v1/jobs/{job_id}/logs",
               {"path_parameters": {"job_id": job_id}, "query": {"stream": stream}})
              for job_id in (done, failed, running) for stream in ("stdout", "stderr")],
            ("GET", "/api/v1/jobs/{job_id}/logs",  # live, from the worker
             {"path_parameters": {"job_id": running}, "query": {"offset": 0}}),
            ("GET", "/api/v1/status", {"query": {"group": "shapes"}}),
            ("GET", "/api/v1/limits", {}),
            ("GET", "/api/v1/limits/{name}", {"path_parameters": {"name": "db"}}),
            ("GET", "/api/v1/workers", {}),
            ("GET", "/api/v1/server", {}),
            ("POST", "/api/v1/blobs/missing", {"body": {"sha256": [sha, "0" * 64]}}),
            ("GET", "/api/v1/blobs/{sha256}", {"path_parameters": {"sha256": sha}}),
            ("GET", "/api/v1/ensembles", {}),
            ("GET", "/api/v1/ensembles/{run_id}", {"path_parameters": {"run_id": run["run_id"]}}),
            ("POST", "/api/v1/ensembles/{run_id}/cancel",
             {"path_parameters": {"run_id": run["run_id"]}}),
            ("GET", "/api/v1/tokens", {}),
            ("GET", "/api/v1/ca", {}),
            ("POST", "/api/v1/jobs/kill", {"body": {"ids": [running]}}),
        ]
        with requests.Session() as http:
            http.trust_env = False
            http.verify = ca_file
            http.headers["Authorization"] = f"Bearer {cluster.connection['admin_token']}"
            for method, path, parts in asked:
                case = spec[path][method].Case(**parts)
                response = case.call_and_validate(session=http, timeout=60, checks=CHECKS)
                assert response.status_code < 300, (method, path, parts, response.text)
    finally:
        cluster.stop()


def _documented_statuses_of_operations_with_inputs(server: Cluster) -> dict[str, set[str]]:
    spec = httpx.get(f"{server.url}/api/v1/openapi.json", verify=server.tls, timeout=30,
                     headers=spec_reader(server)).json()
    return {f"{method.upper()} {path}": set(operation["responses"])
            for path, operations in spec["paths"].items()
            for method, operation in operations.items()
            if operation.get("parameters") or operation.get("requestBody")}


def test_invalid_input_is_documented_as_a_400(live_server: Cluster) -> None:
    documented = _documented_statuses_of_operations_with_inputs(live_server)
    assert documented
    assert [name for name, codes in documented.items() if "400" not in codes] == []


def test_no_operation_documents_fastapis_422(live_server: Cluster) -> None:
    documented = _documented_statuses_of_operations_with_inputs(live_server)
    assert [name for name, codes in documented.items() if "422" in codes] == []

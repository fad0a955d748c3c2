"""Who may do what, against a real server over TLS: every route for every role, jobs kept to
their owners, revocation, pinning, and secrets kept out of the server's log."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.home import format_connection_string
from shoal.server.auth import ADMIN, USER, WORKER
from shoal.server.guard import GuardConfig
from shoal.server.permissions import POLICY
from shoal.tls import certificate_expiry, ensure_server_certificates
from shoal.trust import fingerprint

from .cluster import Cluster, wait_until

SECRET_ENV_VALUE = "s3cr3t-env-value-9f2b"


def create_token(cluster: Cluster, role: str, name: str) -> str:
    answer = cluster.api("POST", "/tokens", json={"role": role, "name": name})
    assert answer["role"] == role and answer["name"] == name
    token: str = answer["token"]
    return token


def call(cluster: Cluster, method: str, path: str, token: str | None,
         **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{cluster.url}{path}", headers=headers, timeout=30,
                         verify=cluster.tls, **kwargs)


# ---- role x endpoint --------------------------------------------------------------------------

# The routes that end or pause the server are checked for refusals only; an admin's stop and
# drain are exercised in test_operations.
STOPPING = {("POST", "/api/v1/server/stop"), ("POST", "/api/v1/server/drain")}


def request_for(method: str, route: str, ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """A concrete, valid request for a route template."""
    path = route.format(job_id=ids["job"], name=ids["name"], sha256=ids["sha256"],
                        run_id="1", batch="0" * 32)
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/v1/jobs"): {"json": {"jobs": [{"cmd": "true", "cwd": "/"}]}},
        ("POST", "/api/v1/jobs/kill"): {"json": {"ids": [int(ids["job"])]}},
        ("POST", "/api/v1/jobs/retry"): {"json": {"ids": [int(ids["job"])]}},
        ("POST", "/api/v1/jobs/remove"): {"json": {"group": "nothing-here"}},
        ("PUT", "/api/v1/limits/{name}"): {"json": {"cap": 3}},
        ("POST", "/api/v1/blobs/missing"): {"json": {"sha256": [ids["sha256"]]}},
        ("PUT", "/api/v1/blobs/{sha256}"): {"content": b"blob"},
        ("POST", "/api/v1/tokens"): {"json": {"role": "user", "name": ids["fresh_name"]}},
        ("POST", "/api/v1/ensembles"): {"json": {}},
        ("PATCH", "/api/v1/jobs/{job_id}"): {"json": {"priority": 1}},
        ("POST", "/api/v1/jobs/modify"): {"json": {"ids": [int(ids["job"])],
                                                   "changes": {"priority": 1}}},
        ("POST", "/api/v1/jobs/purge"): {"json": {"state": ["done"], "group": "nothing-here"}},
        ("POST", "/api/v1/adds/{batch}"): {"json": {"seq": 0, "jobs": [
            {"cmd": "true", "cwd": "/"}]}},
    }
    return path, bodies.get((method, route), {})


def test_every_route_refuses_the_roles_the_table_refuses(secure: Cluster) -> None:
    tokens = {ADMIN: secure.connection["admin_token"],
              USER: create_token(secure, USER, "alice"),
              WORKER: create_token(secure, WORKER, "rack1")}
    job = secure.api("POST", "/jobs", token=tokens[USER],
                     json={"jobs": [{"cmd": "sleep 60", "cwd": "/"}]})["ids"][0]
    checked = 0
    for (method, route), allowed in sorted(POLICY.items()):
        if method == "WEBSOCKET":
            continue  # the worker channel has its own test below
        if not route.startswith(("/api/", "/metrics")):
            continue  # the dashboard's pages take a session, not a token: tests/browser and
            # tests/unit/test_dashboard_access.py check them against this same table
        for role, token in [(None, None), *tokens.items()]:
            if (method, route) in STOPPING and role in allowed:
                continue
            ids = {"job": str(job), "name": "victim", "fresh_name": f"made-by-{role}",
                   "sha256": hashlib.sha256(b"blob").hexdigest()}
            if route == "/api/v1/tokens/{name}":
                create_token(secure, USER, "victim")
            path, body = request_for(method, route, ids)
            status = call(secure, method, path, token, **body).status_code
            where = f"{method} {route} as {role or 'nobody'}"
            if not allowed:
                assert status not in (401, 403), where
            elif role is None:
                assert status == 401, where
            elif (method, route, role) == ("GET", "/api/v1/blobs/{sha256}", WORKER):
                # Allowed to the role, but only for files of jobs handed to workers: none is.
                assert status == 403, where
            elif role in allowed:
                assert status not in (401, 403), f"{where}: {status}"
            else:
                assert status == 403, f"{where}: {status}"
            if route == "/api/v1/tokens/{name}" and status != 200:
                secure.api("DELETE", "/tokens/victim")
            checked += 1
    api_routes = [route for method, route in POLICY
                  if method != "WEBSOCKET" and route.startswith(("/api/", "/metrics"))]
    assert checked > 3 * len(api_routes)


def test_the_worker_channel_takes_worker_and_admin_tokens_only(secure: Cluster,
                                                                tmp_path: Path) -> None:
    user = create_token(secure, USER, "alice")
    refused = secure.cli("worker", "--name", "pretender", "--token", user, timeout=60)
    assert refused.returncode == 2
    assert "refused the worker token" in refused.stderr
    assert secure.api("GET", "/workers")["workers"] == []


# ---- owners -----------------------------------------------------------------------------------


def test_users_see_and_act_on_their_own_jobs_only(secure: Cluster) -> None:
    alice = create_token(secure, USER, "alice")
    bob = create_token(secure, USER, "bob")
    as_alice = {"token": alice}
    mine = secure.api("POST", "/jobs", **as_alice, json={"jobs": [
        {"cmd": "echo a", "cwd": "/", "group": "shared"}]})["ids"][0]
    # The same command from bob is his own job, not a duplicate of alice's.
    theirs = secure.api("POST", "/jobs", token=bob, json={"jobs": [
        {"cmd": "echo a", "cwd": "/", "group": "shared"}]})["ids"][0]
    assert theirs != mine
    assert [j["id"] for j in secure.api("GET", "/jobs", **as_alice)["jobs"]] == [mine]
    assert secure.api("GET", "/status", **as_alice)["totals"] == {"queued": 1}
    for method, path, body in (("GET", f"/api/v1/jobs/{theirs}", None),
                               ("GET", f"/api/v1/jobs/{theirs}/logs", None),
                               ("POST", "/api/v1/jobs/kill", {"ids": [theirs]})):
        response = call(secure, method, path, alice, json=body)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"job {theirs} does not exist"
    # A group names only the caller's members; a dependency only the caller's jobs.
    killed = secure.api("POST", "/jobs/kill", **as_alice, json={"group": "shared"})
    assert killed["ids"] == [mine]
    depends = call(secure, "POST", "/api/v1/jobs", alice,
                   json={"jobs": [{"cmd": "echo later", "cwd": "/", "after": [str(theirs)]}]})
    assert depends.status_code == 400 and f"dependency {theirs}" in depends.text
    assert secure.job(theirs)["state"] == "queued"
    everyone = secure.api("GET", "/jobs")["jobs"]  # the admin sees all, with their owners
    assert {(j["id"], j["owner"]) for j in everyone} == {(mine, "alice"), (theirs, "bob")}


# ---- revocation -------------------------------------------------------------------------------


def test_a_revoked_token_stops_working_at_once_even_on_an_open_worker_channel(
        secure: Cluster) -> None:
    user = create_token(secure, USER, "carol")
    worker_token = create_token(secure, WORKER, "rack7")
    assert call(secure, "GET", "/api/v1/jobs", user).status_code == 200
    worker = secure._spawn("worker-rack7", ["worker", "--name", "rack7", "--token",
                                            worker_token])
    wait_until(lambda: any(w["name"] == "rack7" and w["connected"]
                           for w in secure.api("GET", "/workers")["workers"]),
               message="the worker to connect")
    secure.api("DELETE", "/tokens/carol")
    revoked = call(secure, "GET", "/api/v1/jobs", user)
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "unauthorized"
    secure.api("DELETE", "/tokens/rack7")
    # The channel is closed by the server; reconnecting with the dead token is refused, and
    # the worker gives up with a clear message.
    assert worker.wait(timeout=30) == 2
    assert "refused the worker token" in secure.log("worker-rack7")
    assert not any(w["connected"] for w in secure.api("GET", "/workers")["workers"])
    listed = {t["name"]: t for t in secure.api("GET", "/tokens")["tokens"]}
    assert listed["carol"]["revoked_at"] is not None and listed["rack7"]["revoked_at"]
    assert "token" not in listed["carol"] and "token_hash" not in listed["carol"]


# ---- TLS --------------------------------------------------------------------------------------


def test_plain_http_to_the_tls_port_is_refused(secure: Cluster) -> None:
    plain = secure.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/api/v1/version", timeout=10)
    result = secure.cli("status", env={**secure.env, "SHOAL_SERVER": plain})
    assert result.returncode == 3
    assert "speaks TLS unless started with --insecure-http" in result.stderr


def test_a_worker_with_a_wrong_fingerprint_is_refused(secure: Cluster, tmp_path: Path) -> None:
    other = ensure_server_certificates(tmp_path / "other-ca", ["localhost"], ["127.0.0.1"])
    wrong = format_connection_string(secure.url, secure.connection["worker_token"],
                                     other.fingerprint)
    result = secure.cli("worker", "--join", wrong, "--name", "impostor", timeout=60,
                        env={**secure.env, "SHOAL_HOME": str(tmp_path / "worker-home")})
    assert result.returncode == 3
    assert f"but the pin is {other.fingerprint}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert secure.api("GET", "/workers")["workers"] == []


def test_the_join_string_is_all_a_worker_elsewhere_needs(secure: Cluster,
                                                         tmp_path: Path) -> None:
    elsewhere = {**secure.env, "SHOAL_HOME": str(tmp_path / "elsewhere")}
    worker = subprocess.Popen(
        [*secure_cli_prefix(), "worker", "--join", secure.join, "--name", "far"],
        env=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(w["name"] == "far" and w["connected"]
                               for w in secure.api("GET", "/workers")["workers"]),
                   message="the joined worker to connect")
        job = secure.api("POST", "/jobs", json={"jobs": [{"cmd": "echo joined", "cwd": "/"}]})
        done = secure.wait_state(job["ids"][0], "done")
        assert done["worker"] == "far"
        pin = secure.connection["ca_fingerprint"]
        cached = tmp_path / "elsewhere" / "trusted" / f"{pin.removeprefix('sha256:')}.pem"
        assert fingerprint(cached.read_bytes()) == pin
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def secure_cli_prefix() -> list[str]:
    from .cluster import SHOAL

    return list(SHOAL)


def test_a_client_without_the_pin_does_not_trust_the_server(secure: Cluster,
                                                            tmp_path: Path) -> None:
    env = {**secure.env, "SHOAL_HOME": str(tmp_path / "empty"), "SHOAL_SERVER": secure.url,
           "SHOAL_TOKEN": secure.connection["admin_token"]}
    result = secure.cli("status", env=env)
    assert result.returncode == 3
    assert "certificate is not trusted" in result.stderr


def test_a_certificate_close_to_expiry_is_renewed_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = ensure_server_certificates(home / "tls", ["localhost"], ["127.0.0.1"], leaf_days=10)
    soon = certificate_expiry(old.cert_file)
    cluster = Cluster(home, tmp_path)
    try:
        cluster.start_server()
        port = int(cluster.url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cadata=old.ca_file.read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            served = tls.getpeercert()
        assert served is not None
        not_after = ssl.cert_time_to_seconds(str(served["notAfter"]))
        assert not_after - soon.timestamp() > 60 * 86400  # a fresh 90-day leaf, not the old one
        assert cluster.connection["ca_fingerprint"] == old.fingerprint  # the same CA: pins hold
    finally:
        cluster.stop()


def test_an_operators_certificate_is_used_and_checked_against_the_system_store(
        tmp_path: Path) -> None:
    operator = ensure_server_certificates(tmp_path / "operator", ["localhost"], ["127.0.0.1"])
    cluster = Cluster(tmp_path / "home", tmp_path)
    cluster.ca_file = operator.ca_file
    try:
        cluster.start_server("--tls-cert", str(operator.cert_file),
                             "--tls-key", str(operator.key_file))
        assert cluster.connection["ca_fingerprint"] is None
        assert "tls=system" in cluster.join
        # Trusted through the system's store (here, SSL_CERT_FILE names the operator's CA).
        env = {**cluster.env, "SHOAL_HOME": str(tmp_path / "client"),
               "SHOAL_SERVER": cluster.url, "SHOAL_TOKEN": cluster.connection["admin_token"],
               "SSL_CERT_FILE": str(operator.ca_file)}
        assert cluster.cli("status", env=env).returncode == 0
        env.pop("SSL_CERT_FILE")
        assert cluster.cli("status", env=env).returncode == 3
    finally:
        cluster.stop()


def test_insecure_http_is_for_loopback_only(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "home", tmp_path)
    refused = cluster.cli("server", "--insecure-http", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "shoal: --insecure-http: only on a loopback address, not 0.0.0.0; anyone on the "
        "network could read tokens and commands")
    try:
        cluster.start_server("--insecure-http")
        assert cluster.url.startswith("http://")
        assert "plain HTTP" in cluster.log("server")
        assert cluster.cli("status").returncode == 0
    finally:
        cluster.stop()


# ---- secrets and abuse --------------------------------------------------------------------


def test_tokens_and_env_values_stay_out_of_logs_and_errors(secure: Cluster) -> None:
    alice = create_token(secure, USER, "alice")
    secure.start_worker("w1", 1)
    job = secure.api("POST", "/jobs", token=alice, json={"jobs": [
        {"cmd": "echo $PASSWORD | wc -c", "cwd": "/", "env": {"PASSWORD": SECRET_ENV_VALUE}}]})
    secure.wait_state(job["ids"][0], "done")
    bad_env = call(secure, "POST", "/api/v1/jobs", alice, json={"jobs": [
        {"cmd": "true", "cwd": "/", "env": {"BAD=KEY": SECRET_ENV_VALUE}}]})
    assert bad_env.status_code == 400 and SECRET_ENV_VALUE not in bad_env.text
    assert call(secure, "GET", "/api/v1/jobs", "shoal-user-forged").status_code == 401
    secure.api("DELETE", "/tokens/alice")
    secure.stop()
    logs = secure.log("server") + secure.log("worker-w1")
    for secret in (alice, secure.connection["admin_token"], secure.connection["worker_token"],
                   SECRET_ENV_VALUE, "shoal-user-forged"):
        assert secret not in logs


def test_silent_connections_from_one_address_do_not_shut_out_others(secure: Cluster) -> None:
    """One address opens as many connections as it may and says nothing; another address is
    served at once, and the silent one's next connection is closed unanswered."""
    port = int(secure.url.rsplit(":", 1)[1])
    noisy = ("127.0.0.2", 0)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10, source_address=noisy)
              for _ in range(GuardConfig().max_connections_per_ip)]
    try:
        assert call(secure, "GET", "/api/v1/version", None).status_code == 200
        assert secure.cli("status").returncode == 0
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=noisy) as extra, \
                contextlib.suppress(ConnectionResetError):  # a reset is a refusal too
            assert extra.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()


def test_a_flooding_client_is_slowed_and_others_are_not(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "home", tmp_path)
    try:
        cluster.start_server("--rate-limit", "5")  # bursts of 20, then 5 a second
        flooder = create_token(cluster, USER, "flooder")
        answers = [call(cluster, "GET", "/api/v1/status", flooder) for _ in range(60)]
        refused = [a for a in answers if a.status_code == 429]
        assert refused and len(refused) < 60
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        assert refused[0].json()["error"]["code"] == "rate_limited"
        # Another client is served at once; the Python client waits out a 429 and succeeds.
        assert call(cluster, "GET", "/api/v1/status", cluster.connection["admin_token"]
                    ).status_code == 200
        assert cluster.cli("status", env={**cluster.env, "SHOAL_TOKEN": flooder}
                           ).returncode == 0
    finally:
        cluster.stop()


# ---- the spec and the docs page; files by content ----------------------------------------------


def test_the_spec_and_the_docs_page_need_a_token_of_any_role(secure: Cluster) -> None:
    worker = create_token(secure, WORKER, "rack1")
    user = create_token(secure, USER, "alice")
    for path in ("/api/v1/openapi.json", "/api/v1/docs"):
        refused = call(secure, "GET", path, None)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "unauthorized"
        assert call(secure, "GET", path, "shoal-user-invented").status_code == 401
        for token in (worker, user, secure.connection["admin_token"]):
            assert call(secure, "GET", path, token).status_code == 200, path
    assert call(secure, "GET", "/api/v1/version", None).status_code == 200


def test_a_user_learns_only_about_their_own_uploads(secure: Cluster, tmp_path: Path) -> None:
    alice = create_token(secure, USER, "alice")
    bob = create_token(secure, USER, "bob")
    content = b"alice's private file\n"
    sha = hashlib.sha256(content).hexdigest()
    assert call(secure, "PUT", f"/api/v1/blobs/{sha}", alice, content=content).status_code == 201

    def missing(token: str) -> list[str]:
        answer = call(secure, "POST", "/api/v1/blobs/missing", token, json={"sha256": [sha]})
        assert answer.status_code == 200
        listed: list[str] = answer.json()["missing"]
        return listed

    assert missing(alice) == []
    assert missing(bob) == [sha], "bob learnt that someone has uploaded this content"
    assert missing(secure.connection["admin_token"]) == []  # an admin sees the whole store

    # Nor may bob name alice's file in a job or an ensemble, which would fetch it for him.
    job = {"cmd": "cat f", "cwd": str(tmp_path),
           "files": [{"path": "f", "size": len(content), "sha256": sha}]}
    named = call(secure, "POST", "/api/v1/jobs", bob, json={"jobs": [job]})
    assert named.status_code == 400 and sha in named.json()["error"]["message"]
    ensemble = {"ensemble": {"name": "peek", "components": [
        {"name": "one", "host": "nowhere", "command": "cat f"}]},
        "manifests": {"one": [{"path": "f", "size": len(content), "sha256": sha}]}}
    assert call(secure, "POST", "/api/v1/ensembles", bob, json=ensemble).status_code == 400
    unknown = "0" * 64  # the same answer for a file nobody has
    job_unknown = {**job, "files": [{"path": "f", "size": 1, "sha256": unknown}]}
    refused = call(secure, "POST", "/api/v1/jobs", bob, json={"jobs": [job_unknown]})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].replace(unknown, sha) == \
        named.json()["error"]["message"]

    # Once bob has sent the content himself, it is his too.
    assert call(secure, "PUT", f"/api/v1/blobs/{sha}", bob, content=content).status_code == 201
    assert missing(bob) == []
    assert call(secure, "POST", "/api/v1/jobs", bob, json={"jobs": [job]}).status_code == 201
    assert call(secure, "POST", "/api/v1/jobs", alice, json={"jobs": [job]}).status_code == 201

"""The client's boundary: HTTP answers and transport failures become shoal errors, and the
command line turns those into one line and the contract's exit code.

The server here is a real HTTP server on localhost that answers what each test scripts.
"""

from __future__ import annotations

import json
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shoal import (
    AuthError,
    Client,
    Conflict,
    ConnectError,
    InputError,
    NotFound,
    ServerError,
    ShoalError,
    StoreUnavailable,
)
from shoal.cli.errors import error_line, exit_code_for, report
from shoal.cli.main import main
from shoal.client import SQLITE_HEADER, error_from_response

TOKEN = "s3cret-token-value"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    delay: float = 0.0
    hang_up: bool = False  # close the connection unanswered, as a server that has exited
    cut: bool = False  # announce the whole body, send half of it, close the connection


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeServer:
    """Answers scripted replies by (method, path); records every request it gets.

    Replies scripted for the same route are given in turn, the last one for ever after.
    """

    replies: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def reply(self, method: str, path: str, status: int = 200, body: Any = None,
              delay: float = 0.0, *, hang_up: bool = False, cut: bool = False) -> None:
        self.replies.setdefault((method, "/api/v1" + path), []).append(
            Reply(status, body, delay, hang_up, cut))

    def next_reply(self, method: str, path: str) -> Reply:
        queue = self.replies.get((method, path))
        if not queue:
            return Reply(404, {"error": {"code": "not_found", "message": f"no route {path}"}})
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            server.requests.append(Request(
                self.command, parts.path, parts.query, dict(self.headers.items()),
                json.loads(raw) if raw else None,
            ))
            reply = server.next_reply(self.command, parts.path)
            time.sleep(reply.delay)
            if reply.hang_up:
                self.close_connection = True
                return
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if reply.cut else body)
            self.close_connection = reply.cut

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHOAL_SERVER", raising=False)
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    return tmp_path / "home"


# ---- HTTP status -> error class ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "exit_code"),
    [
        (400, InputError, 2),
        (401, AuthError, 2),
        (403, AuthError, 2),
        (404, NotFound, 2),
        (409, Conflict, 2),
        (413, InputError, 2),
        (422, InputError, 2),
        (503, StoreUnavailable, 1),
        (500, ServerError, 1),
        (502, ServerError, 1),
        (405, ServerError, 1),
    ],
)
def test_status_codes_become_shoal_errors(status: int, error_class: type[ShoalError],
                                          exit_code: int) -> None:
    body = json.dumps({"error": {"code": "x", "message": "jobs[3].priority: too big"}})
    error = error_from_response(status, body.encode())
    assert type(error) is error_class
    assert str(error) == "jobs[3].priority: too big"
    assert exit_code_for(error) == exit_code


def test_a_reply_without_the_error_shape_still_says_something() -> None:
    assert str(error_from_response(502, b"<html>bad gateway</html>")) == (
        "the server answered HTTP 502 (Bad Gateway)"
    )
    detail = {"detail": [{"loc": ["body", "jobs", 0, "cmd"], "msg": "Field required"}]}
    assert str(error_from_response(422, json.dumps(detail).encode())) == (
        "jobs.0.cmd: Field required"
    )
    assert str(error_from_response(404, b'{"detail": "Not Found"}')) == "Not Found"


# ---- over real HTTP ---------------------------------------------------------------------


def test_errors_carry_the_servers_message(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/jobs/7", 404, {"error": {"code": "not_found",
                                                          "message": "job 7 does not exist"}})
    fake_server.reply("POST", "/jobs/remove", 409, {"error": {
        "code": "conflict", "message": "job 3 is running"}})
    with Client(fake_server.url, TOKEN) as client:
        with pytest.raises(NotFound, match=r"^job 7 does not exist$"):
            client.job(7)
        with pytest.raises(Conflict, match=r"^job 3 is running$"):
            client.remove(ids=[3])


def test_the_token_is_sent_and_never_shown(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/workers", 401, {"error": {"code": "unauthorized",
                                                         "message": "bad token"}})
    client = Client(fake_server.url, TOKEN)
    with pytest.raises(AuthError) as caught:
        client.workers()
    assert fake_server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(client)
    client.close()


def test_unreachable_server_is_a_connect_error(closed_port_url: str) -> None:
    with Client(closed_port_url, TOKEN) as client, pytest.raises(ConnectError) as caught:
        client.status()
    assert str(caught.value).startswith(f"cannot reach the server at {closed_port_url}: ")
    assert caught.value.exit_code == 3


def test_a_server_that_does_not_answer_in_time_is_a_connect_error(
        fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/workers", body={"workers": []}, delay=1.0)
    with Client(fake_server.url, TOKEN, timeout=0.2) as client, \
            pytest.raises(ConnectError, match="timed out"):
        client.workers()


def test_a_long_poll_may_outlast_the_timeout(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/status", body={"version": 4, "totals": {}, "groups": {}},
                      delay=0.5)
    with Client(fake_server.url, TOKEN, timeout=0.2) as client:
        assert client.status(wait=1, since=3)["version"] == 4
    assert fake_server.requests[0].query == "wait=1&since=3"


def test_add_sends_the_batch_and_reads_the_answer(fake_server: FakeServer) -> None:
    from shoal import JobSpec

    fake_server.reply("POST", "/jobs", 201,
                      {"added": 1, "existed": 1, "requeued": 0, "ids": [5, 2]})
    with Client(fake_server.url, TOKEN) as client:
        result = client.add([JobSpec(cmd="true", cwd="/"), JobSpec(cmd="false", priority=3)],
                            rerun=True)
    assert (result.added, result.existed, result.requeued, result.ids) == (1, 1, 0, (5, 2))
    assert fake_server.requests[0].body == {
        "jobs": [{"cmd": "true", "cwd": "/"}, {"cmd": "false", "priority": 3}],
        "rerun": True,
    }


def test_kill_retry_remove_take_ids_or_a_group(fake_server: FakeServer) -> None:
    fake_server.reply("POST", "/jobs/kill", body={"affected": 2, "ids": [1, 2]})
    with Client(fake_server.url, TOKEN) as client:
        assert client.kill(group="g")["affected"] == 2
        with pytest.raises(InputError):
            client.kill()
        with pytest.raises(InputError):
            client.kill(ids=[1], group="g")
        with pytest.raises(InputError):
            client.kill(ids=[])
    assert [request.body for request in fake_server.requests] == [{"group": "g"}]


def test_limits_are_listed_and_capped(fake_server: FakeServer) -> None:
    db = {"name": "db", "cap": 2, "running": 2, "queued": 5}
    fake_server.reply("GET", "/limits", body={"limits": [db]})
    fake_server.reply("PUT", "/limits/db", body={**db, "cap": 0})
    fake_server.reply("PUT", "/limits/a%2Fb%20c", body={"name": "a/b c", "cap": None,
                                                        "running": 0, "queued": 0})
    with Client(fake_server.url, TOKEN) as client:
        assert client.limits() == [db]
        assert client.set_limit("db", 0)["cap"] == 0
        assert client.set_limit("a/b c", None)["cap"] is None  # the name cannot escape its path
    assert [(r.method, r.path, r.body) for r in fake_server.requests] == [
        ("GET", "/api/v1/limits", None),
        ("PUT", "/api/v1/limits/db", {"cap": 0}),
        ("PUT", "/api/v1/limits/a%2Fb%20c", {"cap": None}),
    ]


@pytest.mark.parametrize(("name", "cap"), [("db", -1), ("db", 1.5), ("db", True), ("", 1),
                                           ("..", 1)])
def test_a_bad_limit_is_refused_before_sending(fake_server: FakeServer, name: str,
                                               cap: object) -> None:
    with Client(fake_server.url, TOKEN) as client, pytest.raises(InputError):
        client.set_limit(name, cap)  # type: ignore[arg-type]
    assert fake_server.requests == []


def test_limit_errors_carry_the_servers_message(fake_server: FakeServer) -> None:
    fake_server.reply("PUT", "/limits/a%20b", 400, {"error": {
        "code": "invalid", "message": "'a b' is not a limit name"}})
    with Client(fake_server.url, TOKEN) as client, \
            pytest.raises(InputError, match=r"^'a b' is not a limit name$"):
        client.set_limit("a b", 3)


def test_a_big_add_is_given_time_to_commit(fake_server: FakeServer) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 3000, "existed": 0, "requeued": 0,
                                             "ids": list(range(3000))}, delay=0.5)
    jobs = [{"cmd": f"echo {n}", "cwd": "/"} for n in range(3000)]
    with Client(fake_server.url, TOKEN, timeout=0.2) as client:
        assert client.add(jobs).added == 3000  # dicts are sent as they are
    assert fake_server.requests[0].body == {"jobs": jobs, "rerun": False}


def test_a_reply_that_is_not_json_is_a_server_error(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/version", body=b"<html>hello</html>")
    with Client(fake_server.url, TOKEN) as client, pytest.raises(ServerError, match="not JSON"):
        client.version()


def test_without_a_server_anywhere_the_client_says_how_to_get_one() -> None:
    with pytest.raises(ConnectError, match="no server"):
        Client()


def test_the_client_finds_the_server_through_the_environment(
        fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_server.reply("GET", "/workers", body={"workers": []})
    monkeypatch.setenv("SHOAL_SERVER", fake_server.url)
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    with Client() as client:
        assert client.workers() == []
    assert fake_server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


# ---- the server itself: info, drain, stop, backup ------------------------------------------

INFO = {"version": "0.1.0", "draining": False, "started_at": 1795314000.5, "jobs": 3,
        "running": 1, "workers": 2, "store_error": None}
DATABASE = SQLITE_HEADER + bytes(range(256)) * 64  # what a backup's body starts with


def test_server_info_drain_and_stop_reach_their_routes(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/server", body=INFO)
    fake_server.reply("POST", "/server/drain", body={"draining": True, "running": 1})
    fake_server.reply("POST", "/server/stop", body={"stopping": True})
    with Client(fake_server.url, TOKEN) as client:
        assert client.server_info() == INFO
        assert client.drain() == {"draining": True, "running": 1}
        assert client.stop_server() == {"stopping": True}
    assert [(r.method, r.path) for r in fake_server.requests] == [
        ("GET", "/api/v1/server"), ("POST", "/api/v1/server/drain"),
        ("POST", "/api/v1/server/stop"),
    ]


def test_a_server_that_has_exited_is_a_connect_error(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/server", hang_up=True)
    with Client(fake_server.url, TOKEN) as client, pytest.raises(ConnectError):
        client.server_info()


def test_backup_writes_the_whole_copy_for_its_owner_only(fake_server: FakeServer,
                                                         tmp_path: Path) -> None:
    fake_server.reply("GET", "/server/backup", body=DATABASE)
    target = tmp_path / "backup.db"
    with Client(fake_server.url, TOKEN) as client:
        assert client.backup(target) == len(DATABASE)
    assert target.read_bytes() == DATABASE
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a database holds jobs' env values
    assert sorted(tmp_path.iterdir()) == [target]  # no partial file left beside it
    assert fake_server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_backup_refuses_an_existing_file_unless_told(fake_server: FakeServer,
                                                     tmp_path: Path) -> None:
    fake_server.reply("GET", "/server/backup", body=DATABASE)
    target = tmp_path / "backup.db"
    target.write_bytes(b"yesterday")
    with Client(fake_server.url, TOKEN) as client:
        with pytest.raises(InputError, match=f"^{re.escape(str(target))}: already exists$"):
            client.backup(target)
        assert fake_server.requests == []  # refused before asking
        assert target.read_bytes() == b"yesterday"
        assert client.backup(str(target), overwrite=True) == len(DATABASE)
    assert target.read_bytes() == DATABASE


@pytest.mark.parametrize("where", ["missing/backup.db", "."])
def test_backup_needs_a_directory_to_write_a_file_in(fake_server: FakeServer, tmp_path: Path,
                                                     where: str) -> None:
    target = tmp_path / where
    named = str(tmp_path / "missing") if where != "." else str(target)
    with Client(fake_server.url, TOKEN) as client, \
            pytest.raises(InputError, match=f"^{re.escape(named)}: "):
        client.backup(target, overwrite=True)
    assert fake_server.requests == []


def test_a_file_made_during_the_backup_is_not_replaced(fake_server: FakeServer,
                                                       tmp_path: Path) -> None:
    fake_server.reply("GET", "/server/backup", body=DATABASE, delay=0.5)
    target = tmp_path / "backup.db"
    meanwhile = threading.Timer(0.1, target.write_bytes, args=(b"someone else's",))
    meanwhile.start()
    with Client(fake_server.url, TOKEN) as client, \
            pytest.raises(InputError, match="already exists"):
        client.backup(target)
    meanwhile.join()
    assert target.read_bytes() == b"someone else's"
    assert sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("reply", "error_class", "message"),
    [
        ({"status": 403, "body": {"error": {"code": "forbidden",
                                            "message": "only an admin token may take a backup"}}},
         AuthError, "^only an admin token may take a backup$"),
        ({"status": 503, "body": {"error": {"code": "unavailable", "message": "disk full"}}},
         StoreUnavailable, "^disk full$"),
        ({"body": b"<html>a proxy's page</html>"}, ServerError, "not an SQLite database"),
        ({"body": DATABASE, "cut": True}, ConnectError, "^cannot reach the server at "),
        ({"hang_up": True}, ConnectError, "^cannot reach the server at "),
    ],
)
def test_a_failed_backup_leaves_nothing_behind(fake_server: FakeServer, tmp_path: Path,
                                               reply: dict[str, Any],
                                               error_class: type[ShoalError],
                                               message: str) -> None:
    fake_server.reply("GET", "/server/backup", **reply)
    with Client(fake_server.url, TOKEN) as client, pytest.raises(error_class, match=message):
        client.backup(tmp_path / "backup.db")
    assert list(tmp_path.iterdir()) == []


def test_backup_waits_for_the_server_to_copy_a_big_database(fake_server: FakeServer,
                                                            tmp_path: Path) -> None:
    fake_server.reply("GET", "/server/backup", body=DATABASE, delay=0.5)
    with Client(fake_server.url, TOKEN, timeout=0.2) as client:
        assert client.backup(tmp_path / "backup.db") == len(DATABASE)


# ---- the command line's way out ---------------------------------------------------------


def test_cli_unreachable_server_exits_3_with_one_line(
        closed_port_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", closed_port_url, "--token", TOKEN, "jobs"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("shoal: cannot reach the server at ")
    assert err.count("\n") == 1
    assert TOKEN not in err


def test_cli_debug_adds_the_traceback(closed_port_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "--server", closed_port_url, "status"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("shoal: cannot reach the server")


def test_cli_server_errors_are_one_line_with_their_exit_code(
        fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/jobs/9", 404, {"error": {"code": "not_found",
                                                        "message": "job 9\ndoes not exist"}})
    fake_server.reply("GET", "/status", 503, {"error": {"code": "unavailable",
                                                        "message": "disk full"}})
    assert main(["--server", fake_server.url, "status", "9"]) == 2
    assert capsys.readouterr().err == "shoal: job 9 does not exist\n"
    assert main(["--server", fake_server.url, "status"]) == 1
    assert capsys.readouterr().err == "shoal: disk full\n"


def test_error_lines_are_single_and_safe_for_a_terminal() -> None:
    line = error_line(InputError("bad\x1b]0;title\x07 value\nhere", source="f.txt", line=3))
    assert line == "shoal: f.txt:3: bad value here"


def test_unexpected_errors_are_reported_as_internal(capsys: pytest.CaptureFixture[str]) -> None:
    assert report(RuntimeError("boom"), debug=False) == 1
    assert capsys.readouterr().err == (
        "shoal: internal error: RuntimeError: boom (run with --debug for details)\n"
    )
    assert report(KeyboardInterrupt(), debug=False) == 130

"""Bad input on the command line, in the environment or in shoal's own files: one line naming
the option, variable, file or field, exit code 2, nothing made or changed, never a traceback.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest

from shoal.cli.main import main
from shoal.core.models import JobState
from shoal.run import state
from shoal.store import Store

from .factories import make_job

BAD_INPUT = 2


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $SHOAL_HOME (not made), nothing in the environment to find a server by."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    for name in ("SHOAL_SERVER", "SHOAL_TOKEN", "SHOAL_JOIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run shoal; it must exit 2 with one line and no internal error: that line."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


def make_run_state(base: Path, name: str = "jobs.txt") -> Path:
    """A `shoal run`'s state as it leaves it: `<base>/runs/<name>/shoal.db` with two ended
    jobs, and `<base>/last` naming it. Returns the database."""
    database = base / "runs" / name / "shoal.db"
    database.parent.mkdir(parents=True)
    store = Store(database)
    with store.adding() as writer:
        writer.write([make_job(1, state=JobState.DONE), make_job(2, state=JobState.FAILED)],
                     now=1.0)
    store.close()
    (base / "last").write_text(f"runs/{name}\n")
    return database


# ---- 1. shoal server --port, --host ----------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_server_port_out_of_range_makes_nothing(port: str, home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, "server", "--port", port)
    assert line.startswith("shoal: --port: ") and port in line
    assert not home.exists()  # no database, no CA, no lock


def test_server_host_that_does_not_resolve_makes_nothing(
        home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    line = refused(capsys, "server", "--host", "no-such-host.invalid", "--port", "0")
    assert line.startswith("shoal: --host: ") and "no-such-host.invalid" in line
    assert not home.exists()


# ---- 2. --server, SHOAL_SERVER -------------------------------------------------------------


@pytest.mark.parametrize("address", ["https://[::1", "https://127.0.0.1:99999",
                                     "shoal://t@[::1:5?tls=off", "https://", "ftp://host"])
def test_a_server_address_that_cannot_be_dialled_names_its_option(
        address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(capsys, "--server", address, "jobs").startswith("shoal: --server: ")


def test_a_server_address_from_the_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOAL_SERVER", "https://[::1")
    assert refused(capsys, "jobs").startswith("shoal: SHOAL_SERVER: ")


# ---- 3. --token, SHOAL_TOKEN ---------------------------------------------------------------


@pytest.mark.parametrize("token", ["ä-secret", "a\nsecret", "a secret", "tab\tsecret"])
def test_a_malformed_token_is_refused_and_never_shown(
        token: str, closed_port_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, "--server", closed_port_url, "--token", token, "jobs")
    assert line.startswith("shoal: --token: ") and "malformed" in line
    assert "secret" not in line


def test_a_malformed_token_stands_in_the_way_of_no_run_state(
        home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With no server to find, `shoal jobs` reads `shoal run`'s state, which needs no token."""
    make_run_state(home)
    monkeypatch.setenv("SHOAL_TOKEN", "ä-secret")
    assert main(["jobs"]) == 0, capsys.readouterr().err


def test_a_malformed_token_from_the_environment_names_the_variable(
        closed_port_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOAL_TOKEN", "ä-secret")
    line = refused(capsys, "--server", closed_port_url, "jobs")
    assert line.startswith("shoal: SHOAL_TOKEN: ") and "secret" not in line


# ---- 4. the connection file ----------------------------------------------------------------


@pytest.mark.parametrize(("content", "field"), [
    ({"url": 5}, '"url"'),
    ({"url": None}, '"url"'),
    ({"url": "https://[::1"}, '"url"'),
    ({"url": "https://127.0.0.1:1", "admin_token": 7}, '"admin_token"'),
    ({"url": "https://127.0.0.1:1", "admin_token": "a\nsecret"}, '"admin_token"'),
    ({"url": "https://127.0.0.1:1", "ca_file": ["x"]}, '"ca_file"'),
    ({"url": "https://127.0.0.1:1", "ca_fingerprint": 1}, '"ca_fingerprint"'),
])
def test_a_connection_file_with_a_bad_field_names_the_file_and_field(
        content: object, field: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.mkdir()
    path = home / "server.json"
    path.write_text(json.dumps(content))
    line = refused(capsys, "jobs")
    assert line.startswith(f"shoal: {path}: ") and field in line
    assert "secret" not in line


@pytest.mark.parametrize("content", ["[1]", '{"admin_token": "t"}', '{"url": '])
def test_a_connection_file_that_is_not_one_is_no_server(
        content: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As before: no server is found there (exit 3), so a verb that reads `shoal run`'s
    state reads it instead (test_jobs_read_a_run_past_an_unreadable_connection_file)."""
    home.mkdir()
    (home / "server.json").write_text(content)
    assert main(["workers"]) == 3
    assert "unreadable connection file" in capsys.readouterr().err


def test_jobs_read_a_run_past_an_unreadable_connection_file(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run_state(home)
    (home / "server.json").write_text('{"url": ')
    assert main(["jobs"]) == 0, capsys.readouterr().err
    assert "echo 1" in capsys.readouterr().out


def test_an_address_given_passes_over_a_broken_connection_file(
        home: Path, closed_port_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    home.mkdir()
    (home / "server.json").write_text('{"url": 5}')
    assert main(["--server", closed_port_url, "--token", "t", "jobs"]) == 3  # unreachable
    assert "cannot reach the server" in capsys.readouterr().err


# ---- 5. a garbled .shoal/last ----------------------------------------------------------------


@pytest.mark.parametrize("garbled", [b"\xff", b"runs/\x00x\n", b"\xfe\xff\x00r"])
def test_a_garbled_last_falls_back_to_the_newest_run(garbled: bytes, tmp_path: Path) -> None:
    base = tmp_path / "state"
    database = make_run_state(base)
    (base / "last").write_bytes(garbled)
    assert state.resolve(base) == database.parent


def test_jobs_read_the_run_past_a_garbled_last(home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_run_state(home)  # no server set up: `shoal jobs` reads $SHOAL_HOME's run
    (home / "last").write_bytes(b"\xff")
    assert main(["jobs"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "echo 1" in out and "echo 2" in out


# ---- 6. a damaged run database ---------------------------------------------------------------

ALL_VERBS = (("jobs",), ("status",), ("status", "1"), ("logs", "1"))
A_JOB = (("jobs",), ("status", "1"), ("logs", "1"))  # the verbs that read jobs' fields
# (what was done to the database, the verbs that meet it)
DAMAGES = {
    "jobs dropped": ("DROP TABLE jobs", ALL_VERBS),
    "outputs dropped": ("DROP TABLE outputs", (("status", "1"), ("logs", "1"))),
    "an unknown state": ("UPDATE jobs SET state = 'bogus' WHERE id = 1", ALL_VERBS),
    "env not JSON": ("UPDATE jobs SET env = '{{' WHERE id = 1", A_JOB),
    "env not an object": ("UPDATE jobs SET env = '5' WHERE id = 1", A_JOB),
}


@pytest.mark.parametrize(("damage", "verb"), [
    pytest.param(damage, list(verb), id=f"{name}-{' '.join(verb)}")
    for name, (damage, verbs) in DAMAGES.items() for verb in verbs])
def test_a_damaged_run_database_is_said_to_be_damaged(
        damage: str, verb: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    database = make_run_state(tmp_path / "state")
    with sqlite3.connect(database) as db:
        db.execute(damage)
    db.close()
    before = database.read_bytes()
    line = refused(capsys, *verb, "--state-dir", str(tmp_path / "state"))
    assert line.startswith(f"shoal: {database}: the database is damaged")
    assert database.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100], ids=["empty", "garbage"])
def test_a_run_database_that_is_not_one_is_said_to_be_damaged(
        content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = make_run_state(tmp_path / "state")
    if content:
        database.write_bytes(content)
    else:  # truncated: the first pages only
        database.write_bytes(database.read_bytes()[:5000])
    line = refused(capsys, "jobs", "--state-dir", str(tmp_path / "state"))
    assert line.startswith(f"shoal: {database}: the database is damaged")


# ---- 7. shoal report --png, --html -------------------------------------------------------------


@pytest.mark.parametrize(("option", "path", "says"), [
    ("--png", "/nonexistent/x.png", "no such directory"),
    ("--png", "/", "is a directory"),
    ("--html", "/", "is a directory"),
    ("--html", "/nonexistent/dir/x.html", "no such directory"),
])
def test_report_names_the_option_of_a_path_it_cannot_write(
        option: str, path: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_run_state(tmp_path / "state")
    line = refused(capsys, "report", "--state-dir", str(tmp_path / "state"), option, path)
    assert line.startswith(f"shoal: {option}: {path}: ") and says in line


def test_report_writes_nothing_when_one_of_its_paths_is_bad(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run_state(tmp_path / "state")
    good = tmp_path / "report.html"
    line = refused(capsys, "report", "--state-dir", str(tmp_path / "state"),
                   "--html", str(good), "--png", "/nonexistent/x.png")
    assert line.startswith("shoal: --png: ")
    assert not good.exists()


# ---- 8. shoal file list --state ----------------------------------------------------------------


@pytest.mark.parametrize("states", ["bogus", "x", "", "d x"])
def test_file_list_checks_its_states(states: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs.txt"
    runs.write_text(". echo a\nd echo b\n! echo c\n")
    line = refused(capsys, "file", "list", str(runs), "--state", states)
    assert line.startswith("shoal: --state: ")


def test_file_list_takes_the_states_a_file_can_hold(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs.txt"
    runs.write_text(". echo a\nd echo b\n! echo c\n")
    assert main(["file", "list", str(runs), "--state", "!e?"]) == 0
    assert capsys.readouterr().out == "3: ! - echo c\n"
    line = refused(capsys, "file", "set", str(runs), "--state", "?", "1")  # not settable
    assert line == "shoal: --state: '?' is not one of . r d ! e"


def test_file_list_shows_commands_as_shoal_status_does(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A line's control sequences are removed and other control characters escaped, as
    everywhere shoal shows what it did not write itself."""
    runs = tmp_path / "runs.txt"
    runs.write_text(". echo \x1b[31mred\x1b[0m \x07bell\n")
    assert main(["file", "list", str(runs)]) == 0
    assert capsys.readouterr().out == "1: . - echo red \\x07bell\n"


# ---- 9. shoal worker: options checked before connecting -----------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["--name", "x" * 300], "--name"),
    (["--name", "x" * 129], "--name"),
    (["--name", "é" * 128], "--name"),  # 128 characters, 256 bytes: no spool directory
    (["--name", "a/b"], "--name"),
    (["--name", ".."], "--name"),
    (["--name", "tab\there"], "--name"),
    (["--name", "k=v"], "--name"),
    (["--count", "2", "--name", "x" * 127], "--name"),  # x...x-1 is 129 characters
    (["--gpus", "a,b"], "--gpus"),
    (["--gpus", "gpu0,"], "--gpus"),
    (["--spool", "/etc/passwd"], "--spool"),
    (["--spool", "/etc/passwd/spool"], "--spool"),
    (["--server", "https://[::1"], "--server"),
    (["--server", "https://127.0.0.1:1", "--token", "ä"], "--token"),
    (["--join", "shoal://t@[::1:5?tls=off"], "--join"),
])
@pytest.mark.timeout(30)  # a check missed: a worker keeps trying to reach the server
def test_worker_options_are_checked_before_looking_for_the_server(
        args: list[str], option: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No server is set up: a check made only after looking for one would exit 3.
    line = refused(capsys, "worker", *args)
    assert line.startswith(f"shoal: {option}: ")
    assert not home.exists()


@pytest.mark.parametrize("args", [
    ["--name", "x" * 128],
    ["--name", "node07.rack-a_1@site+2"],
    ["--gpus", "GPU-8e2c1f3a,MIG-GPU-8e2c1f3a/1/0"],
    ["--gpus", "0,2"],
])
def test_worker_options_the_server_takes_pass_the_checks(
        args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--spool", str(tmp_path / "new" / "spool"), *args]) == 3
    assert "no server" in capsys.readouterr().err  # got as far as looking for it


def test_worker_name_rule_is_the_servers() -> None:
    from pydantic import ValidationError

    from shoal.cli.serve import check_worker_name
    from shoal.core.errors import InputError

    from .factories import register

    secret = "0" * 32
    for length in (1, 128):
        check_worker_name("w" * length)
        register("w" * length, instance_secret=secret)
    for length in (0, 129):
        with pytest.raises(InputError, match=r"^--name: "):
            check_worker_name("w" * length)
        with pytest.raises(ValidationError, match="name"):
            register("w" * length, instance_secret=secret)


# ---- 10. shoal limit NAME -1 ------------------------------------------------------------------


@pytest.mark.parametrize("args", [["x", "-1"], ["x", "--json", "-5"], ["x", "--", "-1"]])
def test_a_negative_limit_cap_says_what_is_wrong(args: list[str], closed_port_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, "--server", closed_port_url, "--token", "t", "limit", *args)
    assert line == "shoal: N: a cap is 0 or more (0 pauses the limit's jobs)"


def test_an_unknown_limit_option_is_still_one(closed_port_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, "--server", closed_port_url, "--token", "t", "limit", "x", "-x")
    assert "No such option: -x" in line

"""Bad input, as a user meets it with real processes: one line naming what is wrong, exit
code 2, and nothing made or changed (see tests/unit/test_cli_validation.py for the rest)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .cluster import SHOAL, Cluster


def shoal(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("SHOAL_HOME", "SHOAL_SERVER", "SHOAL_TOKEN", "SHOAL_JOIN")}
    environment["HOME"] = str(cwd)  # no ~/.shoal of the user's: no server found there
    return subprocess.run([*SHOAL, *args], cwd=cwd, env={**environment, **(env or {})},
                          text=True, capture_output=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    return result.stderr.strip()


def a_run(directory: Path) -> Path:
    """`shoal run` of two jobs in `directory`; its database."""
    (directory / "jobs.txt").write_text("echo one\necho two\n")
    result = shoal("run", "jobs.txt", cwd=directory)
    assert result.returncode == 0, result.stderr
    return directory / ".shoal" / "runs" / "jobs.txt" / "shoal.db"


def test_server_on_a_port_out_of_range_leaves_no_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    line = one_line(shoal("server", "--port", "99999", cwd=tmp_path,
                          env={"SHOAL_HOME": str(home)}))
    assert line.startswith("shoal: --port: ")
    assert not home.exists()


def test_jobs_read_past_a_garbled_last(tmp_path: Path) -> None:
    a_run(tmp_path)
    (tmp_path / ".shoal" / "last").write_bytes(b"\xff")
    result = shoal("jobs", cwd=tmp_path)  # no server: the run's state is read
    assert result.returncode == 0, result.stderr
    assert "echo one" in result.stdout and "echo two" in result.stdout


def test_a_run_database_changed_by_hand_is_said_to_be_damaged(tmp_path: Path) -> None:
    database = a_run(tmp_path)
    with sqlite3.connect(database) as db:
        db.execute("UPDATE jobs SET state = 'bogus' WHERE id = 1")
    db.close()
    for verb in (["jobs"], ["status"], ["logs", "1"], ["run", "jobs.txt", "--dry-run"]):
        line = one_line(shoal(*verb, cwd=tmp_path))
        assert line.startswith(f"shoal: {database}: the database is damaged"), verb


@pytest.mark.parametrize("url, kind", [(5, "a number"), (["https://a:7341"], "an array"),
                                       (True, "true or false")])
def test_a_connection_file_with_a_bad_url_names_the_file(tmp_path: Path, url: object,
                                                         kind: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "server.json").write_text(json.dumps({"url": url}))
    line = one_line(shoal("jobs", cwd=tmp_path, env={"SHOAL_HOME": str(home)}))
    assert line == f'shoal: {home / "server.json"}: field "url": expected a string, not {kind}'


def test_bad_worker_options_are_refused_before_it_joins(secure: Cluster, tmp_path: Path) -> None:
    """With a server to join, a worker with a bad name or spool is still refused at once,
    before it registers: the server never sees it."""
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    for args, option in ((["--name", "x" * 300], "--name"),
                         (["--spool", str(not_a_directory)], "--spool"),
                         (["--gpus", "a,b"], "--gpus")):
        line = one_line(secure.cli("worker", *args, timeout=30))
        assert line.startswith(f"shoal: {option}: "), line
    assert secure.api("GET", "/workers")["workers"] == []
    assert not (secure.home / "spool").exists()


def test_server_on_a_port_in_use_makes_no_database_nor_ca(tmp_path: Path) -> None:
    """A port another process holds is found before anything is made in the home: no
    database, no CA, no tokens (only the home's lock, held while it tried)."""
    import socket

    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = shoal("server", "--port", str(port), cwd=tmp_path,
                       env={"SHOAL_HOME": str(home)})
    assert result.returncode == 1 and "Address already in use" in result.stderr
    assert sorted(path.name for path in home.iterdir()) == ["server.lock"]

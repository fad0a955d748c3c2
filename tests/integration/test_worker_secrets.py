"""A worker's token stays out of the process list: real workers joining a real server with the
join string in a file, in the environment, on standard input, and (hidden once read) as an
argument."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.system import require

from .cluster import SHOAL, Cluster, running_cluster, wait_until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    """A real server, no workers yet."""
    with running_cluster(tmp_path) as instance:
        yield instance


def start_worker(server: Cluster, tmp_path: Path, name: str, args: list[str],
                 env: dict[str, str] | None = None,
                 stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """A worker on "another host": its own $SHOAL_HOME, so only what it is given finds the
    server."""
    environment = {**server.env, "SHOAL_HOME": str(tmp_path / f"{name}-home"), **(env or {})}
    log = open(server.log_dir / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed with it
    process = subprocess.Popen([*SHOAL, "worker", "--name", name, "--cores", "1", *args],
                               env=environment, stdin=stdin, stdout=log, stderr=log,
                               start_new_session=True)
    server.workers[name] = process
    return process


def wait_connected(server: Cluster, name: str, process: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: process.poll() is not None
               or any(w["name"] == name and w["connected"]
                      for w in server.api("GET", "/workers")["workers"]),
               message=f"worker {name} to connect")
    assert process.poll() is None, server.log(f"worker-{name}")


def worker_token(server: Cluster) -> str:
    return str(server.connection["worker_token"])


def assert_not_shown(server: Cluster, process: subprocess.Popen[bytes]) -> None:
    """What every user of the host sees of the worker holds no token."""
    token = worker_token(server)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert b"worker" in cmdline
    assert token.encode() not in cmdline and quote(token, safe="").encode() not in cmdline
    require(shutil.which("ps") is not None, "ps")
    shown = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(process.pid)],
                           capture_output=True, text=True, check=True).stdout
    assert "worker" in shown and token not in shown


def run_env_job(server: Cluster) -> str:
    """Run a job that prints its environment; return what it printed."""
    added = server.api("POST", "/jobs", json={"jobs": [{"cmd": "env; echo ran", "cwd": "/"}]})
    job = server.wait_state(added["ids"][0], "done")
    output = str(job["stdout"]["head"]) + str(job["stdout"]["tail"])
    assert output.rstrip().endswith("ran")
    return output


def test_a_worker_given_a_join_file_runs_jobs_and_shows_no_token(server: Cluster,
                                                                 tmp_path: Path) -> None:
    join_file = tmp_path / "join"
    # The line the server writes to $SHOAL_HOME/join works as it is.
    join_file.write_text((server.home / "join").read_text())
    join_file.chmod(0o600)
    process = start_worker(server, tmp_path, "filed", ["--join-file", str(join_file)])
    wait_connected(server, "filed", process)
    assert_not_shown(server, process)
    output = run_env_job(server)
    assert worker_token(server) not in output
    assert "WARNING" not in server.log("worker-filed")


def test_a_worker_given_shoal_join_keeps_it_from_the_process_list_and_its_jobs(
        server: Cluster, tmp_path: Path) -> None:
    process = start_worker(server, tmp_path, "env", [], env={"SHOAL_JOIN": server.join})
    wait_connected(server, "env", process)
    assert_not_shown(server, process)
    output = run_env_job(server)
    assert worker_token(server) not in output  # the job did not inherit SHOAL_JOIN
    assert "SHOAL_JOIN" not in output


def test_a_worker_reads_the_join_string_from_standard_input(server: Cluster,
                                                            tmp_path: Path) -> None:
    process = start_worker(server, tmp_path, "piped", ["--join", "-"], stdin=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(server.join.encode() + b"\n")
    process.stdin.close()
    wait_connected(server, "piped", process)
    assert_not_shown(server, process)
    run_env_job(server)


def test_a_token_given_as_an_argument_is_hidden_once_read_with_a_warning(
        server: Cluster, tmp_path: Path) -> None:
    process = start_worker(server, tmp_path, "argv", ["--join", server.join])
    wait_connected(server, "argv", process)
    assert_not_shown(server, process)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert b"shoal://*****" in cmdline  # the rest of the string is left as it was
    assert "--join-file" in server.log("worker-argv")  # the warning says what to do instead


def test_a_join_file_others_can_read_is_refused(server: Cluster, tmp_path: Path) -> None:
    join_file = tmp_path / "join"
    join_file.write_text(server.join + "\n")
    join_file.chmod(0o644)
    result = server.cli("worker", "--join-file", str(join_file), "--name", "exposed",
                        env={**server.env, "SHOAL_HOME": str(tmp_path / "exposed-home")},
                        timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(join_file) in lines[0] and "chmod 600" in lines[0]
    assert server.api("GET", "/workers")["workers"] == []


def test_a_join_file_without_a_connection_string_names_the_file(server: Cluster,
                                                                tmp_path: Path) -> None:
    join_file = tmp_path / "join"
    join_file.write_text("https://head:7340\n")
    os.chmod(join_file, 0o600)
    result = server.cli("worker", "--join-file", str(join_file),
                        env={**server.env, "SHOAL_HOME": str(tmp_path / "other-home")})
    assert result.returncode == 2
    assert f"{join_file}: no shoal://" in result.stderr

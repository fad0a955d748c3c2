"""What shoal leaves on disk: `shoal run`'s state is its owner's only, as a server's home is; and
a server's home whose database was emptied or damaged is refused, not started over with new
tokens. Real `shoal run` and `shoal server` processes."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import SHOAL, Cluster, wait_until


def modes(directory: Path) -> dict[str, int]:
    """The permission bits of `directory` and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        try:
            found[str(path.relative_to(directory))] = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:  # the running run replaced it since the listing
            continue
    return found


def assert_private(directory: Path) -> None:
    for name, mode in modes(directory).items():
        path = directory / name
        wanted = 0o700 if path.is_dir() else 0o600
        assert mode == wanted, f"{path}: mode {mode:04o}, expected {wanted:04o}"


def start_run(jobs: Path, *args: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}
    return subprocess.Popen([*SHOAL, "run", str(jobs), *args], cwd=jobs.parent, text=True,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.umask(0o022))  # the usual umask


def test_shoal_run_keeps_its_state_to_its_owner(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    release = tmp_path / "release"
    jobs.write_text(f"echo secret-output; while [ ! -e {release} ]; do sleep 0.05; done\n"
                    "echo another\n")
    state = tmp_path / ".shoal"
    run = state / "runs" / "jobs.txt"  # one directory per input file
    running = start_run(jobs, "-j", "2")
    try:
        # While it runs: the database, SQLite's files beside it and the captured output.
        wait_until(lambda: (run / "shoal.db-wal").exists()
                   and any((run / "spool").glob("*.stdout")),
                   message="the run's state files")
        assert_private(state)
        assert {"shoal.db", "shoal.db-wal", "shoal.db-shm"} <= set(modes(run))
    finally:
        release.touch()
        out, err = running.communicate(timeout=60)
    assert running.returncode == 0, out + err
    assert_private(state)
    assert (run / "shoal.db").exists()


def test_shoal_run_takes_back_what_an_older_run_left_open(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo one\n")
    first = start_run(jobs)
    assert first.wait(timeout=60) == 0
    state = tmp_path / ".shoal"
    state.chmod(0o755)
    (state / "runs").chmod(0o755)
    (state / "runs" / "jobs.txt" / "shoal.db").chmod(0o644)
    jobs.write_text("echo one\necho two\n")
    second = start_run(jobs)
    assert second.wait(timeout=60) == 0
    assert_private(state)


# ---- a server's home whose database has lost what it held --------------------------------------


def snapshot(home: Path) -> dict[str, tuple[int, str]]:
    """Every file of `home`: its mode and the digest of its content."""
    return {str(path.relative_to(home)): (stat.S_IMODE(path.stat().st_mode),
                                          hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(home.rglob("*")) if path.is_file()}


@pytest.fixture
def used_home(tmp_path: Path) -> Iterator[Path]:
    """A home a server has lived in: a job added, the server stopped, everything on disk."""
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(home, logs)
    try:
        cluster.start_server()
        cluster.api("POST", "/jobs", json={"jobs": [{"cmd": "echo kept", "cwd": "/"}]})
    finally:
        cluster.stop()
    database = sqlite3.connect(home / "shoal.db")  # fold the WAL into the file
    database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    database.close()
    assert not (home / "shoal.db-wal").exists()
    assert (home / "shoal.db-sealed").exists()  # damage after a clean stop is still found
    # The server's home, as `shoal run`'s state (its certificates are public, 0644).
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "shoal.db").stat().st_mode) == 0o600
    yield home


def start_server(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("SHOAL_SERVER", "SHOAL_TOKEN")}
    return subprocess.run([*SHOAL, "server", "--port", "0", *args], text=True,
                          capture_output=True,
                          env={**environment, "SHOAL_HOME": str(home)}, timeout=60,
                          stdin=subprocess.DEVNULL)


def assert_refused(home: Path, before: dict[str, tuple[int, str]], what: str,
                   *args: str) -> None:
    result = start_server(home, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"shoal: {home / 'shoal.db'}: the database is {what}")
    assert "shoal backup" in lines[0]
    assert "internal error" not in lines[0]
    assert snapshot(home) == before  # the tokens, the CA, the database: all as they were


def test_a_server_refuses_an_emptied_database(used_home: Path) -> None:
    os.truncate(used_home / "shoal.db", 0)
    before = snapshot(used_home)
    assert "server.json" in before and "tls/ca.pem" in before
    # A name the certificate lacks: it would be reissued, were the database not refused first.
    assert_refused(used_home, before, "empty", "--tls-san", "another-name.example")


def test_a_server_refuses_a_database_with_damaged_pages(used_home: Path) -> None:
    database = used_home / "shoal.db"
    page_size = 4096
    pages = database.stat().st_size // page_size
    assert pages >= 6
    noise = random.Random(7)
    with database.open("r+b") as handle:
        for page in range(pages // 3, 2 * pages // 3):
            handle.seek(page * page_size)
            handle.write(noise.randbytes(page_size))
    before = snapshot(used_home)
    assert_refused(used_home, before, "damaged")


def test_a_server_refuses_a_file_that_is_not_a_database(used_home: Path) -> None:
    database = used_home / "shoal.db"
    with database.open("r+b") as handle:
        handle.write(random.Random(8).randbytes(4096))  # the header page
    before = snapshot(used_home)
    assert_refused(used_home, before, "damaged")


def test_a_database_moved_away_starts_an_empty_queue(used_home: Path) -> None:
    """The way out the refusal names: without the file, the server starts afresh."""
    (used_home / "shoal.db").rename(used_home.parent / "kept.db")
    logs = used_home.parent / "logs-again"
    logs.mkdir()
    cluster = Cluster(used_home, logs)
    try:
        cluster.start_server()
        assert cluster.api("GET", "/jobs")["jobs"] == []
    finally:
        cluster.stop()

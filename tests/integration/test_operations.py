"""Operating a server: stopping workers, draining, backups, and a full disk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.system import require_root_tool

from .cluster import Cluster, wait_until


def add(cluster: Cluster, *cmds: str) -> list[int]:
    body = {"jobs": [{"cmd": cmd, "cwd": "/tmp"} for cmd in cmds]}
    return cluster.api("POST", "/jobs", json=body)["ids"]  # type: ignore[no-any-return]


def test_worker_stop_requeue_hands_jobs_back_at_once(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    [job_id] = add(cluster, f"sleep 3; echo done >> {ledger}")
    job = cluster.wait_started(job_id)  # else it may be given back unstarted: no attempt
    cluster.workers[job["worker"]].send_signal(signal.SIGTERM)
    cluster.workers[job["worker"]].wait(timeout=10)
    other = ({"w1", "w2"} - {job["worker"]}).pop()
    done = cluster.wait_state(job_id, "done", timeout=20)
    assert done["worker"] == other
    assert ledger.read_text() == "done\n"  # the first copy was killed before it wrote
    outcomes = [a["outcome"] for a in done["attempt_history"]]
    assert outcomes == ["killed", "exited"]


def test_worker_stop_finish_lets_jobs_end(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    try:
        cluster.start_server()
        worker = cluster.start_worker("only", 1, "--on-stop", "finish")
        [first, second] = add(cluster, "sleep 1.5; echo first", "echo second")
        cluster.wait_state(first, "running")
        worker.send_signal(signal.SIGTERM)
        assert cluster.wait_state(first, "done")["stdout"]["head"] == "first\n"
        assert worker.wait(timeout=10) == 0
        # It took nothing new while stopping: the second job waits for another worker.
        assert cluster.job(second)["state"] == "queued"
    finally:
        cluster.stop()


def test_drain_starts_nothing_new_and_stops_when_idle(cluster: Cluster) -> None:
    [running] = add(cluster, "sleep 1.5")
    cluster.wait_state(running, "running")
    answer = cluster.api("POST", "/server/drain")
    assert answer == {"draining": True, "running": 1}
    [later] = add(cluster, "echo later")
    assert cluster.job(later)["state"] == "queued"
    assert cluster.server is not None
    assert cluster.server.wait(timeout=20) == 0  # it exits by itself once idle
    assert cluster.log("server").count("stopping: drained") == 1  # said once, not per step
    cluster.start_server()
    assert cluster.job(running)["state"] == "done"
    cluster.wait_state(later, "done")  # a new server schedules again


@pytest.mark.parametrize("verb", [("server", "stop"), ("drain",)])
def test_stop_and_drain_return_once_the_local_server_has_let_go_of_its_home(
        cluster: Cluster, verb: tuple[str, ...]) -> None:
    """`shoal server stop` (and `drain`) of this host's server return once its process has
    let go of the home, so that `shoal server` started next on it is not refused."""
    from shoal.home import try_lock_home

    stopped = cluster.cli(*verb)
    assert stopped.returncode == 0, stopped.stderr
    held = try_lock_home(cluster.home)  # free already: no waiting here
    assert held is not None
    os.close(held)
    assert cluster.server is not None and cluster.server.wait(timeout=20) == 0
    cluster.start_server()


def test_backup_is_consistent_and_a_server_starts_on_it(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    ids = add(cluster, *[f"echo {i}" for i in range(50)])
    for job_id in ids:
        cluster.wait_state(job_id, "done")
    headers = {"Authorization": f"Bearer {cluster.connection['admin_token']}"}
    response = httpx.get(f"{cluster.url}/api/v1/server/backup",
                         verify=cluster.tls, headers=headers, timeout=30)
    assert response.status_code == 200
    restored_home = tmp_path / "restored"
    restored_home.mkdir()
    (restored_home / "shoal.db").write_bytes(response.content)
    with sqlite3.connect(restored_home / "shoal.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restored = Cluster(restored_home, tmp_path)
    try:
        restored.start_server()
        jobs = restored.api("GET", "/jobs")["jobs"]
        assert sorted(job["id"] for job in jobs) == sorted(ids)
        assert {job["state"] for job in jobs} == {"done"}
        assert restored.job(ids[3])["stdout"]["head"] == "3\n"
    finally:
        restored.stop()
    worker_headers = {"Authorization": f"Bearer {cluster.connection['worker_token']}"}
    refused = httpx.get(f"{cluster.url}/api/v1/server/backup",
                        verify=cluster.tls, headers=worker_headers)
    assert refused.status_code == 403


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    require_root_tool("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_refuses_adds_with_503_and_recovers(small_disk: Path,
                                                         tmp_path: Path) -> None:
    cluster = Cluster(small_disk / "home", tmp_path)
    filler = small_disk / "filler"
    try:
        cluster.start_server()
        first = add(cluster, *[f"echo before {i}" for i in range(10)])
        with open(filler, "wb") as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        headers = {"Authorization": f"Bearer {cluster.connection['admin_token']}"}
        body = {"jobs": [{"cmd": f"echo {'x' * 200} {i}", "cwd": "/tmp"} for i in range(3000)]}
        refused = httpx.post(f"{cluster.url}/api/v1/jobs",
                             verify=cluster.tls, json=body, headers=headers,
                             timeout=30)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "unavailable" and "shoal.db" in error["message"]
        assert cluster.server is not None and cluster.server.poll() is None
        assert cluster.api("GET", "/status")["totals"] == {"queued": 10}  # nothing half-added
        os.unlink(filler)
        accepted = httpx.post(f"{cluster.url}/api/v1/jobs",
                              verify=cluster.tls, json=body, headers=headers,
                              timeout=30)
        assert accepted.status_code == 201
        assert cluster.api("GET", "/status")["totals"] == {"queued": 3010}
        assert cluster.job(first[0])["state"] == "queued"
    finally:
        cluster.stop()
    wait_until(lambda: cluster.server is None or cluster.server.poll() is not None)


"""Allocation queues against a real one-node Slurm and a real server: queued jobs get
allocations, every job runs once, idle workers leave and their allocations end; a refused
submission pauses the queue with Slurm's words; `alloc remove --force` and `shoal server
stop` cancel what was submitted; allocations outlive a restart of the server."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster, wait_until
from tests.integration.slurm import Slurm
from tests.ports import free_port


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(tmp_path: Path, slurm: Slurm) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    made = Cluster(home, logs)
    made.env.update(slurm.env)
    try:
        yield made
    finally:
        made.stop()


def cli_json(cluster: Cluster, *args: str) -> Any:
    result = cluster.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def queue_info(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.api("GET", f"/alloc/{name}")  # type: ignore[no-any-return]


def add_queue(cluster: Cluster, *args: str) -> None:
    result = cluster.cli("alloc", "add", "slurm", "--name", "q", *args)
    assert result.returncode == 0, result.stderr + result.stdout


def slurm_states(slurm: Slurm, info: dict[str, Any]) -> dict[str, str]:
    ours = {a["engine_id"] for a in info["history"]}
    return {job_id: state for job_id, state in slurm.squeue() if job_id in ours}


def test_queued_jobs_get_allocations_and_idle_workers_leave(cluster: Cluster, slurm: Slurm,
                                                            tmp_path: Path) -> None:
    cluster.start_server()
    add_queue(cluster, "--max-workers", "3", "--workers-per-alloc", "1", "--backlog", "3",
              "--cores", "2", "--time-limit", "20m", "--idle-timeout", "4s")
    ledger = tmp_path / "ledger"
    jobs = "".join(f"echo {i} >> {ledger}\n" for i in range(50))
    added = cluster.cli("add", "-f", "-", input=jobs)
    assert added.returncode == 0, added.stderr

    def all_done() -> bool:
        return cluster.api("GET", "/status")["totals"].get("done", 0) == 50

    wait_until(all_done, timeout=300, interval=0.5, message="50 jobs done in allocations")
    lines = ledger.read_text().split()
    assert sorted(lines, key=int) == [str(i) for i in range(50)]  # each ran exactly once
    info = queue_info(cluster, "q")
    assert 1 <= len(info["history"]) <= 3
    ran_on = {job["worker"] for job in cluster.api("GET", "/jobs")["jobs"]}
    started = {w["name"]: w["provider"] for w in cluster.api("GET", "/workers")["workers"]}
    assert all(started[name].startswith("slurm:q/") for name in ran_on)
    assert all(w["deadline"] is not None for w in cluster.api("GET", "/workers")["workers"])

    # Idle for 4s, each worker exits; its batch job ends with it, and the server sees so.
    def all_ended() -> dict[str, Any] | None:
        now = queue_info(cluster, "q")
        return now if all(a["state"] == "finished" for a in now["history"]) else None

    info = wait_until(all_ended, timeout=120, interval=1, message="the allocations to end")
    assert all(a["joined"] == 1 for a in info["history"])
    assert set(slurm_states(slurm, info).values()) == {"COMPLETED"}
    assert not any(w["connected"] for w in cluster.api("GET", "/workers")["workers"])
    work_dir = Path(info["history"][0]["work_dir"])
    assert (work_dir / "submit.sh").exists() and (work_dir / "stderr").exists()
    assert (work_dir / "job-id").read_text().strip() == info["history"][0]["engine_id"]
    log = cluster.cli("alloc", "log", "q", str(info["history"][0]["id"]))
    assert log.returncode == 0 and "idle for" in log.stdout, log.stderr
    listing = cli_json(cluster, "alloc", "list")["queues"]
    assert [(q["name"], q["state"], q["workers"]) for q in listing] == [("q", "active", 0)]


def test_a_refused_submission_pauses_the_queue_with_the_reason(cluster: Cluster) -> None:
    cluster.start_server()
    add_queue(cluster, "--max-workers", "2", "--time-limit", "10m", "--",
              "--partition=nope")
    assert cluster.cli("add", "true").returncode == 0
    info = wait_until(lambda: (i := queue_info(cluster, "q"))["state"] == "paused" and i,
                      timeout=120, interval=0.5, message="the queue to pause")
    assert "3 submissions in a row failed" in info["paused_reason"]
    assert "invalid partition" in info["paused_reason"].lower()
    assert info["history"] == []
    shown = cluster.cli("alloc", "info", "q")
    assert shown.returncode == 0 and "paused: 3 submissions" in shown.stdout
    resumed = cli_json(cluster, "alloc", "resume", "q")
    assert resumed["state"] == "active"


def test_remove_force_cancels_running_allocations(cluster: Cluster, slurm: Slurm) -> None:
    cluster.start_server()
    add_queue(cluster, "--max-workers", "1", "--time-limit", "20m", "--idle-timeout", "5m")
    assert cluster.cli("add", "sleep 120").returncode == 0
    wait_until(lambda: cluster.api("GET", "/status")["totals"].get("running") == 1,
               timeout=120, interval=0.5, message="the job to run in an allocation")
    info = queue_info(cluster, "q")
    refused = cluster.cli("alloc", "remove", "q")
    assert refused.returncode == 2 and "--force" in refused.stderr
    removed = cli_json(cluster, "alloc", "remove", "q", "--force")
    assert removed == {"name": "q", "removed": True, "cancelled": 1}
    # Its worker was told to stop first: it handed its job back and left, so the batch job
    # ended by itself (or Slurm cancelled what was left of it).
    assert set(slurm_states(slurm, info).values()) <= {"COMPLETED", "CANCELLED"}
    assert cli_json(cluster, "alloc", "list")["queues"] == []
    # Its job goes back to the queue at once, to run elsewhere, not failed by the kill.
    job = wait_until(lambda: (j := cluster.api("GET", "/jobs")["jobs"][0])["state"] != "running"
                     and j, timeout=60, interval=0.5, message="the job to leave its worker")
    assert job["state"] == "queued", job


def test_allocations_outlive_a_server_restart_and_server_stop_cancels(
        cluster: Cluster, slurm: Slurm) -> None:
    port = str(free_port())
    cluster.start_server("--port", port)
    add_queue(cluster, "--max-workers", "1", "--time-limit", "20m", "--idle-timeout", "5m")
    assert cluster.cli("add", "sleep 6").returncode == 0
    wait_until(lambda: cluster.api("GET", "/status")["totals"].get("running") == 1,
               timeout=120, interval=0.5, message="the job to run in an allocation")
    before = queue_info(cluster, "q")["history"]

    assert cluster.server is not None
    cluster.server.send_signal(signal.SIGTERM)  # a restart, not `shoal server stop`
    cluster.server.wait(timeout=30)
    cluster.start_server("--port", port)
    after = queue_info(cluster, "q")["history"]
    assert [(a["id"], a["engine_id"]) for a in after] == \
        [(a["id"], a["engine_id"]) for a in before]
    assert after[0]["state"] == "running"
    assert slurm_states(slurm, {"history": after}) == {after[0]["engine_id"]: "RUNNING"}
    # Its worker comes back to the new server and finishes the job there.
    wait_until(lambda: cluster.api("GET", "/status")["totals"].get("done") == 1,
               timeout=180, interval=0.5, message="the job to finish after the restart")
    assert len(queue_info(cluster, "q")["history"]) == 1  # nothing submitted again

    stopped = cluster.cli("server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    cluster.server.wait(timeout=60)
    wait_until(lambda: set(slurm_states(slurm, {"history": after}).values()) <=
               {"CANCELLED", "COMPLETED"}, timeout=60, interval=0.5,
               message="the allocation to be cancelled")


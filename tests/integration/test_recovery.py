"""Workers and the server going away: jobs are neither lost nor run twice."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

from tests.ports import free_ports

from .cluster import Cluster, wait_until


def test_a_killed_workers_job_runs_again_elsewhere(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    [job_id] = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"echo start >> {ledger}; sleep 2; echo end >> {ledger}", "cwd": "/tmp",
         "on_worker": None}]})["ids"]
    job = cluster.wait_state(job_id, "running")
    victim = job["worker"]
    wait_until(lambda: ledger.exists())
    os.killpg(cluster.workers[victim].pid, signal.SIGKILL)
    job = cluster.wait_state(job_id, "done", timeout=30)
    survivor = ({"w1", "w2"} - {victim}).pop()
    assert job["worker"] == survivor
    assert job["lost_attempts"] == 1
    outcomes = [(a["worker"], a["outcome"]) for a in job["attempt_history"]]
    assert outcomes == [(victim, None), (survivor, "exited")]


def test_a_restarted_server_keeps_jobs_and_adopts_running_ones(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    # A server that holds attempts long enough to outlast its own restart (the fixture's
    # holds them 4 s, so its workers would rightly give up on it after 2 s).
    assert cluster.server is not None
    port = cluster.url.rsplit(":", 1)[1]
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait()
    cluster.start_server("--port", port, "--lease-timeout", "3", "--lost-grace", "30")
    wait_until(lambda: sum(w["connected"] for w in cluster.api("GET", "/workers")["workers"])
               == 2, timeout=30, message="workers to reconnect")
    ledger = tmp_path / "ledger"
    specs = [{"cmd": f"sleep 3; echo {i} >> {ledger}", "cwd": "/tmp"} for i in range(4)]
    specs += [{"cmd": f"echo quick-{i} >> {ledger}", "cwd": "/tmp"} for i in range(20)]
    ids = cluster.api("POST", "/jobs", json={"jobs": specs})["ids"]
    # Running with a pid: the workers have the jobs (not only the server's record of them).
    wait_until(lambda: sum(cluster.job(i)["state"] == "running" and cluster.job(i)["pid"]
                           is not None for i in ids[:4]) == 4)
    cluster.server.send_signal(signal.SIGKILL)
    cluster.server.wait()
    cluster.start_server("--port", port, "--retry-base", "0.2", "--lease-timeout", "3",
                         "--lost-grace", "30")
    # The workers reconnect by themselves and report the attempts they kept running.
    wait_until(lambda: sum(w["connected"] for w in cluster.api("GET", "/workers")["workers"])
               == 2, timeout=30, message="workers to reconnect")
    assert cluster.cli("wait", timeout=60).returncode == 0
    counts = Counter(ledger.read_text().split())
    assert counts == Counter([*map(str, range(4)), *(f"quick-{i}" for i in range(20))])
    for job_id in ids[:4]:
        assert cluster.job(job_id)["attempts"] == 1  # adopted, not rerun


def test_workers_follow_a_server_that_moved(cluster: Cluster) -> None:
    """A worker that found its server through $SHOAL_HOME finds it again at a new port."""
    assert cluster.server is not None
    old_url = cluster.url
    old_port = int(old_url.rsplit(":", 1)[1])
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait()
    # A port of its own: one the kernel picks may be the one just freed.
    new_port = next(port for port in free_ports(2) if port != old_port)
    cluster.start_server("--port", str(new_port))
    assert cluster.url == old_url.replace(f":{old_port}", f":{new_port}")
    wait_until(lambda: sum(w["connected"] for w in cluster.api("GET", "/workers")["workers"])
               == 2, timeout=30, message="workers to find the new address")
    [job_id] = cluster.api("POST", "/jobs", json={"jobs": [{"cmd": "true", "cwd": "/"}]})["ids"]
    cluster.wait_state(job_id, "done")


def test_results_held_through_a_restart_are_kept_even_with_a_short_lost_grace(
        cluster: Cluster, tmp_path: Path) -> None:
    """The fixture's server gives lost attempts 1 s. A worker whose job ended while the
    server was down holds the result and reconnects with backoff; the restarted server waits
    for it rather than run the job again."""
    assert cluster.server is not None
    port = cluster.url.rsplit(":", 1)[1]
    ledger = tmp_path / "ledger"
    [job_id] = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"sleep 1; echo ran >> {ledger}", "cwd": "/tmp"}]})["ids"]
    wait_until(lambda: cluster.job(job_id)["pid"] is not None, message="the job to start")
    cluster.server.send_signal(signal.SIGKILL)
    cluster.server.wait()
    wait_until(ledger.exists, message="the job to end while the server is down")
    cluster.start_server("--port", port, "--lease-timeout", "3", "--lost-grace", "1")
    job = cluster.wait_state(job_id, "done", "failed", timeout=30)
    assert (job["state"], job["attempts"]) == ("done", 1)
    assert ledger.read_text().split() == ["ran"]

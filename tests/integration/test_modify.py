"""`shoal mod` against a real server: many jobs in one call, all or none, kept across a
restart."""

from __future__ import annotations

import json
import signal
import time

import httpx

from .cluster import Cluster, wait_until


def test_ten_thousand_queued_jobs_change_in_one_call_and_stay_changed(cluster: Cluster) -> None:
    # A limit with no room holds them queued while they are changed.
    cluster.api("PUT", "/limits/hold", json={"cap": 0})
    lines = "".join(f"echo {i}\n" for i in range(10_000))
    added = cluster.cli("add", "-f", "-", "--group", "big", "--limit", "hold", input=lines)
    assert added.returncode == 0, added.stderr
    started = time.monotonic()
    changed = cluster.cli("mod", "--group", "big", "--priority", "5", "--memory", "1G",
                          "--new-group", "bigger", "--json")
    elapsed = time.monotonic() - started
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["affected"] == 10_000
    assert cluster.api("GET", "/status", params={"group": "bigger"})["totals"] == \
        {"queued": 10_000}
    assert cluster.api("GET", "/status", params={"group": "big"})["totals"] == {}
    assert elapsed < 120, f"took {elapsed:.1f}s"  # a bound against a timeout, not a figure
    # Kept in the database: a restarted server still has them changed.
    assert cluster.server is not None
    port = cluster.url.rsplit(":", 1)[1]
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait()
    cluster.start_server("--port", port)
    page = cluster.api("GET", "/jobs", params={"group": "bigger", "limit": 3})["jobs"]
    assert [(j["priority"], j["resources"]["memory_bytes"], j["group"]) for j in page] == \
        [(5, 1 << 30, "bigger")] * 3


def test_a_change_touching_a_running_job_changes_nothing(cluster: Cluster) -> None:
    ids = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": "sleep 30", "cwd": "/"}, {"cmd": "echo later", "cwd": "/", "priority": 1,
                                           "limits": ["none:0"]}]})["ids"]
    cluster.wait_state(ids[0], "running")
    refused = cluster.cli("mod", str(ids[0]), str(ids[1]), "--priority", "7")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and f"job {ids[0]} is running" in refused.stderr
    assert [cluster.job(i)["priority"] for i in ids] == [0, 1]
    # One job by PATCH; a field that does not exist is refused, naming it.
    headers = {"Authorization": f"Bearer {cluster.connection['admin_token']}"}
    patched = httpx.patch(f"{cluster.url}/api/v1/jobs/{ids[1]}", json={"priority": 3},
                          headers=headers, verify=cluster.tls)
    assert patched.status_code == 200 and cluster.job(ids[1])["priority"] == 3
    wrong = httpx.patch(f"{cluster.url}/api/v1/jobs/{ids[1]}", json={"cmd": "rm -rf /"},
                        headers=headers, verify=cluster.tls)
    assert wrong.status_code == 400 and "cmd" in wrong.json()["error"]["message"]
    cluster.api("POST", "/jobs/kill", json={"ids": ids})
    wait_until(lambda: cluster.job(ids[0])["state"] == "cancelled")

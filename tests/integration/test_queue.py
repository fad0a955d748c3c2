"""The queue end to end: a real server, two real workers, the real CLI."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import httpx

from .cluster import Cluster, wait_until


def test_hundreds_of_jobs_each_run_exactly_once(cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    lines = "".join(f"echo {i} >> {ledger}; echo out-{i}\n" for i in range(300))
    added = cluster.cli("add", "-f", "-", "--group", "many", input=lines)
    assert added.returncode == 0, added.stderr
    assert "added 300, 0 already existed" in added.stdout
    waited = cluster.cli("wait", "--group", "many")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    counts = Counter(ledger.read_text().split())
    assert counts == Counter(str(i) for i in range(300))  # every id once, none twice
    jobs = cluster.api("GET", "/jobs", params={"group": "many", "limit": 1000})["jobs"]
    assert len(jobs) == 300
    assert {job["state"] for job in jobs} == {"done"}
    assert {job["worker"] for job in jobs} == {"w1", "w2"}  # both workers took a share
    for job in jobs:
        assert job["exit_code"] == 0 and job["attempts"] == 1
        assert job["pid"] and job["host"] and job["wall_seconds"] is not None
        assert job["started_at"] <= job["ended_at"]
        assert job["peak_rss_bytes"] > 0 and job["cpu_seconds"] >= 0
    one = cluster.job(jobs[7]["id"])
    number = jobs[7]["cmd"].split()[1]
    assert one["stdout"]["head"] == f"out-{number}\n"


def test_resources_and_output_are_recorded(cluster: Cluster) -> None:
    cmd = ("python3 -c \"import sys, time; b = bytearray(150 << 20); "
           "t = time.time(); [0 for _ in iter(lambda: time.time() - t < 0.4, False)]; "
           "sys.stdout.write('x' * 300000); sys.stderr.write('err-line')\"")
    [job_id] = cluster.api("POST", "/jobs", json={"jobs": [{"cmd": cmd, "cwd": "/tmp"}]})["ids"]
    job = cluster.wait_state(job_id, "done")
    assert job["peak_rss_bytes"] >= 150 << 20
    assert job["cpu_seconds"] >= 0.2
    assert job["stdout"]["total_bytes"] == 300000
    assert len(job["stdout"]["head"]) + len(job["stdout"]["tail"]) < 300000  # capped
    assert job["stderr"]["head"] == "err-line"
    logs = cluster.cli("logs", str(job_id), "--stderr")
    assert logs.returncode == 0 and logs.stdout.strip() == "err-line"


def test_cwd_and_env_are_applied(cluster: Cluster, tmp_path: Path) -> None:
    added = cluster.cli("add", "--cwd", str(tmp_path), "--env", "GREETING=hi there",
                        "--json", 'echo "$GREETING from $(pwd) as job $SHOAL_JOB_ID"')
    [job_id] = json.loads(added.stdout)["ids"]
    job = cluster.wait_state(job_id, "done")
    assert job["stdout"]["head"] == f"hi there from {tmp_path} as job {job_id}\n"
    assert job["env"] == ["GREETING"]  # names only: values are never shown


def test_failing_job_retries_then_fails_and_retry_requeues(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    added = cluster.cli("add", "--retries", "2", "--json", f"test -f {marker} || exit 7")
    [job_id] = json.loads(added.stdout)["ids"]
    job = cluster.wait_state(job_id, "failed")
    assert (job["exit_code"], job["fail_reason"], job["attempts"]) == (7, "exit code 7", 3)
    assert [a["outcome"] for a in job["attempt_history"]] == ["exited"] * 3
    waited = cluster.cli("wait")
    assert waited.returncode == 1
    marker.touch()
    retried = cluster.cli("retry", str(job_id))
    assert retried.returncode == 0, retried.stderr
    job = cluster.wait_state(job_id, "done")
    assert len(job["attempt_history"]) == 4
    assert cluster.cli("wait").returncode == 0


def test_kill_running_and_queued_then_rm(cluster: Cluster, tmp_path: Path) -> None:
    specs = [{"cmd": f"sleep 60 # {i}", "cwd": "/tmp"} for i in range(5)]
    ids = cluster.api("POST", "/jobs", json={"jobs": specs})["ids"]
    wait_until(lambda: sum(cluster.job(i)["state"] == "running" for i in ids) == 4,
               message="four jobs running on four cores")
    running = [i for i in ids if cluster.job(i)["state"] == "running"]
    queued = [i for i in ids if i not in running]
    pid = wait_until(lambda: cluster.job(running[0])["pid"])
    killed = cluster.cli("kill", str(running[0]), str(queued[0]))
    assert killed.returncode == 0, killed.stderr
    assert cluster.job(queued[0])["state"] == "cancelled"
    job = cluster.wait_state(running[0], "cancelled", timeout=10)
    assert job["fail_reason"] == "killed by user"
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
               Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
               message="the killed process to be gone")
    refused = cluster.cli("rm", str(running[1]))
    assert refused.returncode == 2 and "is running" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    removed = cluster.cli("rm", str(running[0]), str(queued[0]))
    assert removed.returncode == 0, removed.stderr
    remaining = {job["id"] for job in cluster.api("GET", "/jobs")["jobs"]}
    assert running[0] not in remaining and queued[0] not in remaining
    cluster.cli("kill", "--group", "default")
    wait_until(lambda: all(cluster.job(i)["state"] == "cancelled" for i in ids[1:]
                           if i != queued[0]), message="the group to be cancelled")


def test_duplicates_and_rerun(cluster: Cluster) -> None:
    first = cluster.cli("add", "--json", "echo same")
    [job_id] = json.loads(first.stdout)["ids"]
    cluster.wait_state(job_id, "done")
    again = cluster.cli("add", "echo same")
    assert "added 0, 1 already existed" in again.stdout
    rerun = cluster.cli("add", "--rerun", "echo same")
    assert "1 requeued" in rerun.stdout
    job = cluster.wait_state(job_id, "done")
    assert len(job["attempt_history"]) == 2


def test_bad_input_adds_nothing(cluster: Cluster, tmp_path: Path) -> None:
    bad = tmp_path / "jobs.wr"
    bad.write_text('echo one\t{"retries": 1}\necho two\t{"memroy": "1G"}\n')
    result = cluster.cli("add", "-f", str(bad))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{bad}:2" in line and "memroy" in line
    assert cluster.api("GET", "/jobs")["total"] == 0
    missing = cluster.cli("add", "-f", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    # The server refuses what it cannot parse with a 4xx and its error body, and keeps going.
    headers = {"Authorization": f"Bearer {cluster.connection['admin_token']}"}
    for body in (b"{not json", b'{"jobs": [{"cmd": ""}]}', b'{"jobs": [{"cmd": "x", "cwd": "/",'
                 b' "priority": "high"}]}', b'{"jobs": "x"}'):
        response = httpx.post(f"{cluster.url}/api/v1/jobs",
                              verify=cluster.tls, content=body, headers={
            **headers, "content-type": "application/json"})
        assert response.status_code == 400, body
        assert set(response.json()["error"]) == {"code", "message"}
    response = httpx.post(f"{cluster.url}/api/v1/jobs", verify=cluster.tls, headers=headers, json={
        "jobs": [{"cmd": "a", "cwd": "/"}, {"cmd": "b", "cwd": "/", "priority": "high"}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("jobs[1].priority")
    assert cluster.api("GET", "/jobs")["total"] == 0
    assert cluster.cli("status").returncode == 0


def test_tokens_are_required_and_workers_only_use_their_channel(cluster: Cluster) -> None:
    url = cluster.url
    assert httpx.get(f"{url}/api/v1/version", verify=cluster.tls).status_code == 200
    for path in ("/jobs", "/status", "/workers", "/jobs/1"):
        anonymous = httpx.get(f"{url}/api/v1{path}", verify=cluster.tls)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{url}/api/v1{path}",
                          verify=cluster.tls, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        as_worker = httpx.get(f"{url}/api/v1{path}", verify=cluster.tls, headers={
            "Authorization": f"Bearer {cluster.connection['worker_token']}"})
        assert as_worker.status_code == 403
    assert oct((cluster.home / "server.json").stat().st_mode & 0o777) == "0o600"


def test_cli_finds_the_server_through_home_or_environment(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    assert cluster.cli("workers").returncode == 0
    elsewhere = {**cluster.env, "SHOAL_HOME": str(tmp_path / "empty")}
    unreachable = cluster.cli("status", env=elsewhere)
    assert unreachable.returncode == 3
    assert len(unreachable.stderr.strip().splitlines()) == 1
    explicit = {**elsewhere, "SHOAL_SERVER": cluster.join,  # a connection string: pins the CA
                "SHOAL_TOKEN": cluster.connection["admin_token"]}
    listed = cluster.cli("workers", "--json", env=explicit)
    assert listed.returncode == 0
    assert {w["name"] for w in json.loads(listed.stdout)["workers"]} == {"w1", "w2"}
    down = {**elsewhere, "SHOAL_SERVER": "http://127.0.0.1:9", "SHOAL_TOKEN": "x"}
    assert cluster.cli("status", env=down).returncode == 3

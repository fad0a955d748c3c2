"""Caps on shared limits are an admin's to set, whether by `PUT /limits` or inside a job."""

from __future__ import annotations

from pathlib import Path

import httpx

from .cluster import Cluster


def user_token(cluster: Cluster, name: str) -> str:
    return str(cluster.api("POST", "/tokens", json={"role": "user", "name": name})["token"])


def test_a_user_cannot_pause_a_shared_limit_through_a_job(secure: Cluster,
                                                          tmp_path: Path) -> None:
    server = secure
    server.api("PUT", "/limits/shared", json={"cap": 4})
    mallory = user_token(server, "mallory")
    jobs = [{"cmd": "echo fine", "cwd": "/"},
            {"cmd": "echo pause", "cwd": "/", "limits": ["shared:0"]}]
    response = httpx.post(f"{server.url}/api/v1/jobs", json={"jobs": jobs}, timeout=30,
                          headers={"Authorization": f"Bearer {mallory}"}, verify=server.tls)
    assert response.status_code == 403
    assert "jobs[1].limits" in response.json()["error"]["message"]
    assert server.api("GET", "/limits/shared")["cap"] == 4
    assert server.api("GET", "/jobs")["jobs"] == []  # the whole batch was refused
    # The CLI says so in one line, exit code 2, with no traceback.
    batch = tmp_path / "batch.wr"
    batch.write_text('echo pause\t{"limit_grps": ["shared:0"]}\n')
    env = {**server.env, "SHOAL_TOKEN": mallory}
    result = server.cli("add", "-f", str(batch), env=env)
    assert result.returncode == 2, result.stderr
    assert "only an admin" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # Restating the cap, or capping a limit of one's own, is allowed; an admin may change it.
    ok = server.api("POST", "/jobs", token=mallory, json={"jobs": [
        {"cmd": "echo a", "cwd": "/", "limits": ["shared:4"]},
        {"cmd": "echo b", "cwd": "/", "limits": ["mine:2"]}]})
    assert ok["added"] == 2
    assert server.api("GET", "/limits/mine")["cap"] == 2
    server.api("POST", "/jobs", json={"jobs": [
        {"cmd": "echo c", "cwd": "/", "limits": ["shared:1"]}]})
    assert server.api("GET", "/limits/shared")["cap"] == 1

"""Ensembles across hosts made of network namespaces, each running a real worker, driven
through the real `shoal ensemble run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hosts import Hosts, namespace_hosts

from .cluster import SHOAL, Cluster, wait_until

HOSTS = 3


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with namespace_hosts(HOSTS) as made:
        yield made


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Iterator[Cluster]:
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    workers = []
    try:
        instance.start_server("--host", hosts.server_address)
        for k in range(HOSTS):
            workers.append(hosts.worker(k, instance.join, logs / f"h{k}.log"))
        wait_until(lambda: sum(w["connected"] for w in instance.api("GET", "/workers")["workers"])
                   == HOSTS, message="the namespace workers to connect")
        yield instance
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        instance.stop()


def run(cluster: Cluster, path: Path, *args: str, timeout: float = 120
        ) -> tuple[int, list[dict[str, Any]], str]:
    result = cluster.cli("ensemble", "run", str(path), "--json", "--log-dir",
                         str(path.parent / "runs"), *args, timeout=timeout, cwd=path.parent)
    snapshots = json.loads(result.stdout) if result.stdout.strip() else []
    return result.returncode, snapshots, result.stderr


def by_name(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in snapshot["components"]}


def test_stages_files_and_results(cluster: Cluster, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "data.txt").write_text("the data\n")
    script = payload / "run.sh"
    script.write_text("#!/bin/bash\necho \"$1 on $(hostname -I)\"\ntest -x ./run.sh\n")
    script.chmod(0o755)
    spec = tmp_path / "deploy.toml"
    # The namespace hosts share one file system: each component gets a directory of its own,
    # kept between runs so that unchanged files are skipped.
    spec.write_text(f"""
name = "deploy"
timeout = "60s"

[[component]]
name = "server"
host = "h0"
base_dir = "{tmp_path}/on-h0"
command = "cat data.txt; ./run.sh server; sleep 60"
files = {{ "payload/data.txt" = "data.txt", "payload/run.sh" = "run.sh" }}
wait = false

[[component]]
name = "client@h1"
host = "h1"
base_dir = "{tmp_path}/on-h1"
command = "./run.sh client"
files = {{ "payload/run.sh" = "run.sh" }}
stage = 1

[[component]]
name = "client@h2"
host = "h2"
base_dir = "{tmp_path}/on-h2"
command = "./run.sh client"
files = {{ "payload/run.sh" = "run.sh" }}
stage = 1
""")
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 0, stderr
    assert snapshot["state"] == "done"
    parts = by_name(snapshot)
    assert set(parts) == {"server", "client@h1", "client@h2"}
    assert parts["server"]["state"] == "killed"  # a service: stopped when the run ended
    for name in ("client@h1", "client@h2"):
        assert parts[name]["state"] == "done" and parts[name]["exit_code"] == 0
        assert parts[name]["started_at"] >= parts["server"]["started_at"]
        assert (parts[name]["copied_files"], parts[name]["skipped_files"]) == (1, 0)
    assert parts["server"]["copied_files"] == 2
    assert parts["client@h1"]["worker"] == "h1" and parts["client@h2"]["worker"] == "h2"
    log_dir = Path(snapshot["log_dir"])
    assert (log_dir / "client@h1.stdout").read_text().startswith("client on ")
    assert (log_dir / "server.stdout").read_text().startswith("the data\nserver on ")
    assert (log_dir / "run.log").exists()
    # The jobs are ordinary jobs too.
    job = cluster.job(parts["client@h2"]["job_id"])
    assert job["group"] == "ensemble.deploy" and job["state"] == "done"

    code, [again], _ = run(cluster, spec)
    assert code == 0
    assert [(c["copied_files"], c["skipped_files"]) for c in again["components"]] == \
        [(0, 2), (0, 1), (0, 1)]  # same size and SHA-256: nothing copied
    code, [forced], _ = run(cluster, spec, "--always-copy")
    assert code == 0
    assert [c["copied_files"] for c in forced["components"]] == [2, 1, 1]


def test_min_hosts_abandons_the_run_and_kills_the_rest(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "fragile.toml"
    spec.write_text("""
name = "fragile"
min_hosts = "all"

[[component]]
name = "broken"
host = "h0"
command = "sleep 0.5; exit 3"

[[component]]
name = "long"
host = ["h1", "h2"]
command = "sleep 60"
""")
    code, [snapshot], _ = run(cluster, spec)
    assert code == 1
    assert snapshot["state"] == "abandoned"  # the 60 s sleeps were not waited for: killed
    parts = by_name(snapshot)
    assert parts["broken"]["state"] == "failed" and parts["broken"]["exit_code"] == 3
    assert parts["long@h1"]["state"] == "killed" and parts["long@h2"]["state"] == "killed"


def test_a_component_timeout_kills_it(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "slow.toml"
    spec.write_text("""
name = "slow"
min_hosts = 1

[[component]]
name = "quick"
host = "h0"
command = "true"

[[component]]
name = "stuck"
host = "h1"
command = "sleep 60"
timeout = "1s"
""")
    code, [snapshot], _ = run(cluster, spec)
    assert snapshot["state"] == "done" and code == 0  # one success was enough
    assert by_name(snapshot)["stuck"]["state"] == "timed_out"


def test_a_synchronized_start_is_measured(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "together.toml"
    spec.write_text("""
name = "together"

[[component]]
name = "load"
host = ["h0", "h1", "h2"]
command = "echo started"
""")
    code, [snapshot], _ = run(cluster, spec)
    assert code == 0
    [stage] = snapshot["stages"]
    assert stage["release_at"] is not None and stage["spread_seconds"] >= 0
    starts = [c["started_at"] for c in snapshot["components"]]
    assert max(starts) - min(starts) == pytest.approx(stage["spread_seconds"])
    assert all(c["start_skew_seconds"] is not None for c in snapshot["components"])


def test_ctrl_c_kills_everything_it_started(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "forever.toml"
    spec.write_text("""
name = "forever"

[[component]]
name = "spin"
host = ["h0", "h1"]
command = "sleep 300"
""")
    process = subprocess.Popen([*SHOAL, "ensemble", "run", str(spec)], env=cluster.env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = lambda: [j for j in cluster.api("GET", "/jobs", params={  # noqa: E731
        "group": "ensemble.forever"})["jobs"] if j["state"] == "running" and j["pid"]]
    wait_until(lambda: len(running()) == 2, timeout=60, message="both components running")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    wait_until(lambda: all(j["state"] == "cancelled" for j in cluster.api(
        "GET", "/jobs", params={"group": "ensemble.forever"})["jobs"]), timeout=20,
        message="the components to be cancelled")


def test_a_netjobs_file_runs_each_test_in_order(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "netjobs.txt"
    config.write_text("""# two tests, as NetJobs runs them
first:
-generaltimeout: 30s
-minhosts: 2
h0: "echo one from h0"
h1: "echo one from h1"
end

second:
h2: "echo two from h2"
-timeout: 10s
end
""")
    code, snapshots, stderr = run(cluster, config)
    assert code == 0, stderr
    assert [s["name"] for s in snapshots] == ["first", "second"]
    assert all(s["state"] == "done" for s in snapshots)
    assert snapshots[0]["ended_at"] <= snapshots[1]["started_at"]
    assert {c["worker"] for c in snapshots[0]["components"]} == {"h0", "h1"}


def test_a_remote_runner_config_runs_by_address(cluster: Cluster, hosts: Hosts,
                                                tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    config.write_text(f"""
first = Component()
first.name = "first"
first.host = "{hosts.address(0)}"
first.executable = "/bin/echo"
first.args = ["first", "stage"]
first.start_index = 0
config.add_component(first)

second = Component()
second.name = "second"
second.host = "{hosts.address(2)}"
second.executable = "/bin/echo"
second.args = ["second", "stage"]
second.start_index = 1
config.add_component(second)
""")
    code, [snapshot], stderr = run(cluster, config)
    assert code == 0, stderr
    parts = by_name(snapshot)
    assert parts["first"]["worker"] == "h0" and parts["second"]["worker"] == "h2"
    assert parts["first"]["state"] == parts["second"]["state"] == "done"
    assert parts["second"]["started_at"] >= parts["first"]["started_at"]
    assert cluster.job(parts["second"]["job_id"])["stdout"]["head"] == "second stage\n"


def test_an_unknown_host_is_refused_before_anything_runs(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    spec = tmp_path / "typo.toml"
    spec.write_text('name = "typo"\n[[component]]\nname = "x"\nhost = "h9"\ncommand = "true"\n')
    code, _, stderr = run(cluster, spec)
    assert code == 2
    assert "host h9 matches no connected worker" in stderr

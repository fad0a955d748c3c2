"""Services (wait = false) left running, remote_runner's way: a run of services only, or one
with --no-kill, returns with them still up; `shoal ensemble list`, `attach` and `stop` reach
them afterwards, and the ensemble's next run replaces them. Real `shoal ensemble` commands
against workers on namespace hosts."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.hosts import Hosts

from .cluster import Cluster, wait_until
from .test_ensembles import by_name, cluster, hosts, run

__all__ = ["cluster", "hosts"]  # fixtures used here

SERVICES = """
name = "services"

[[component]]
name = "daemon"
host = "h0"
command = "echo daemon up; exec sleep 300"
wait = false

[[component]]
name = "ticker"
host = "h1"
command = "for i in 1 2 3; do echo tick $i; sleep 1; done"
wait = false
"""


def job_state(cluster: Cluster, job_id: int) -> str:
    return str(cluster.job(job_id)["state"])


def listed(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    result = cluster.cli("ensemble", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, Any]] = json.loads(result.stdout)
    return runs


def test_a_run_of_services_leaves_them_running_until_stopped(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    spec = tmp_path / "services.toml"
    spec.write_text(SERVICES)
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 0, stderr
    assert (snapshot["state"], snapshot["outcome"]) == ("detached", "done")
    parts = by_name(snapshot)
    daemon = parts["daemon"]["job_id"]
    assert parts["daemon"]["started_at"] is not None
    assert job_state(cluster, daemon) == "running"  # after the command has returned
    [entry] = listed(cluster, "--name", "services")
    assert (entry["run_id"], entry["state"]) == (snapshot["run_id"], "detached")

    # attach: the component's live output, until it ends.
    attached = cluster.cli("ensemble", "attach", "services", "ticker", timeout=120)
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == "tick 1\ntick 2\ntick 3\n"
    assert job_state(cluster, daemon) == "running"  # the other one goes on

    stopped = cluster.cli("ensemble", "stop", "services")
    assert stopped.returncode == 0, stopped.stderr
    assert job_state(cluster, daemon) == "cancelled"
    shown = cluster.cli("ensemble", "show", str(snapshot["run_id"]), "--json")
    final = by_name(json.loads(shown.stdout))
    assert json.loads(shown.stdout)["state"] == "done"
    assert (final["daemon"]["state"], final["daemon"]["fail_reason"]) == \
        ("killed", "stopped (shoal ensemble stop)")
    assert final["ticker"]["state"] == "done" and final["ticker"]["exit_code"] == 0
    text = cluster.cli("ensemble", "show", "services").stdout
    assert "daemon up" in text and "tick 3" in text  # output kept after the run


def test_the_next_run_replaces_the_services_unless_no_kill(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    spec = tmp_path / "services.toml"
    spec.write_text(SERVICES)
    _, [first], _ = run(cluster, spec)
    _, [second], _ = run(cluster, spec)
    old = by_name(first)["daemon"]["job_id"]
    wait_until(lambda: job_state(cluster, old) == "cancelled", timeout=30,
               message="the first run's daemon to be replaced")
    shown = json.loads(cluster.cli("ensemble", "show", str(first["run_id"]), "--json").stdout)
    assert by_name(shown)["daemon"]["fail_reason"] == f"replaced by run {second['run_id']}"

    _, [third], _ = run(cluster, spec, "--no-kill")  # the second run's services stay
    assert job_state(cluster, by_name(second)["daemon"]["job_id"]) == "running"
    assert job_state(cluster, by_name(third)["daemon"]["job_id"]) == "running"
    for snapshot in (second, third):
        assert cluster.cli("ensemble", "stop", str(snapshot["run_id"])).returncode == 0
    assert all(run["state"] != "detached" for run in listed(cluster))


def test_no_kill_leaves_the_services_of_a_run_with_waited_components(
        cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text("""
name = "bench"

[[component]]
name = "server"
host = "h0"
command = "exec sleep 300"
wait = false

[[component]]
name = "client"
host = "h1"
command = "echo measured"
stage = 1
""")
    code, [plain], stderr = run(cluster, spec)  # the default: killed as the run ends
    assert code == 0, stderr
    assert plain["state"] == "done"
    assert by_name(plain)["server"]["state"] == "killed"

    code, [kept], stderr = run(cluster, spec, "--no-kill")
    assert code == 0, stderr
    assert (kept["state"], kept["outcome"]) == ("detached", "done")
    assert by_name(kept)["client"]["state"] == "done"
    server = by_name(kept)["server"]["job_id"]
    assert job_state(cluster, server) == "running"
    assert cluster.cli("ensemble", "stop", "bench").returncode == 0
    assert job_state(cluster, server) == "cancelled"


def test_services_left_running_across_a_server_restart_are_still_reached(
        cluster: Cluster, hosts: Hosts, tmp_path: Path) -> None:
    """A server restart ends the run (abandoned) but kills none of its jobs: `stop` still
    stops the daemon it left running, and `attach` follows it to its end."""
    spec = tmp_path / "services.toml"
    spec.write_text(SERVICES)
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 0, stderr
    daemon = by_name(snapshot)["daemon"]["job_id"]
    assert cluster.server is not None
    port = cluster.url.rsplit(":", 1)[1]
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait()
    cluster.start_server("--host", hosts.server_address, "--port", port)
    wait_until(lambda: job_state(cluster, daemon) == "running", timeout=60,
               message="the daemon's worker to report it again")
    [entry] = listed(cluster, "--name", "services")
    assert entry["state"] == "abandoned"
    stopped = cluster.cli("ensemble", "stop", "services")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped what it left running: daemon" in stopped.stderr
    wait_until(lambda: job_state(cluster, daemon) == "cancelled", timeout=30,
               message="the daemon stopped")
    attached = cluster.cli("ensemble", "attach", "services", "daemon", timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert "daemon up" in attached.stdout

"""Ensembles across hosts made of network namespaces, each running a real worker, driven
through the real `shoal ensemble run`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.core.errors import InputError
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


# ---- what NetJobs and remote_runner users bring ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT.parent / "shared" / "peers"


def python_on_path(env: dict[str, str]) -> dict[str, str]:
    """`python` as NetJobs' sample commands call it: this interpreter's directory first."""
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}


def test_more_components_than_cores_start_together(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "crowded.txt"  # six commands on h0, whose worker offers 4 cores
    config.write_text("crowded:\n-generaltimeout: 60s\n"
                      + "".join(f'h0: "sleep 3; echo {n}"\n' for n in range(6)) + "end\n")
    code, [snapshot], stderr = run(cluster, config)
    assert code == 0, stderr
    parts = snapshot["components"]
    assert [c["state"] for c in parts] == ["done"] * 6
    assert max(c["started_at"] for c in parts) < min(c["ended_at"] for c in parts)  # at once
    assert len(snapshot["stages"]) == 1 and snapshot["stages"][0]["release_at"] is not None


def occupy(cluster: Cluster, worker: str) -> int:
    """A plain job holding all 4 cores of a namespace worker."""
    added = cluster.api("POST", "/jobs", json={"jobs": [{
        "cmd": "sleep 300", "cwd": "/", "cores": 4, "on_worker": worker}]})
    job_id = int(added["ids"][0])
    cluster.wait_state(job_id, "running", timeout=60)
    return job_id


SQUEEZED = """
name = "squeezed"
{timeout}
[[component]]
name = "quick"
host = "h0"
command = "echo quick"

[[component]]
name = "big"
host = "h1"
command = "echo big"
cores = {cores}
"""


def test_a_timeout_counts_preparation_and_says_why(cluster: Cluster, tmp_path: Path) -> None:
    blocker = occupy(cluster, "h1")
    spec = tmp_path / "squeezed.toml"
    spec.write_text(SQUEEZED.format(timeout='timeout = "3s"', cores=2))
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 1, stderr
    assert snapshot["state"] == "abandoned" and snapshot["reason"]
    parts = by_name(snapshot)
    assert parts["big"]["state"] == "timed_out"
    assert parts["big"]["fail_reason"].startswith("timed out after 3s, preparing: not yet "
                                                  "placed on worker h1")
    assert parts["big"]["started_at"] is None
    assert parts["quick"]["state"] in ("timed_out", "killed") and parts["quick"]["fail_reason"]
    assert parts["quick"]["started_at"] is None  # held at the line, never released

    # The run's own timeout, during preparation, also says where the run stood.
    spec.write_text(SQUEEZED.format(timeout="", cores=2))
    code, [snapshot], stderr = run(cluster, spec, "--timeout", "3s")
    assert code == 1, stderr
    assert snapshot["state"] == "failed"
    assert snapshot["reason"] == ("the run's timeout (3s) passed while stage 0 was preparing "
                                  "(1 of 2 ready)")
    parts = by_name(snapshot)
    assert parts["big"]["state"] == "killed"
    assert parts["big"]["fail_reason"] == f"stopped: {snapshot['reason']}"
    cluster.cli("kill", str(blocker))


def test_a_plan_that_can_never_fit_is_refused_at_once(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "greedy.toml"
    spec.write_text(SQUEEZED.format(timeout="", cores=5))
    code, _, stderr = run(cluster, spec)
    assert code == 2
    assert stderr.strip().splitlines()[-1] == ("shoal: ensemble squeezed: components on worker "
                                              "h1 ask for 5 cores together; it offers 4")


def temporary_workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [w for w in cluster.api("GET", "/workers")["workers"]
            if "-ensemble-" in w["name"] and w["connected"]]


def test_netjobs_sample_config_as_shipped(cluster: Cluster, tmp_path: Path) -> None:
    """All on localhost, relative paths included: a temporary worker started for the run,
    working in the directory the run is typed in, as NetJobsAgent would be."""
    netjobs = (PEERS / "netjobs").resolve()  # the real path (the peers may be behind a link)
    result = cluster.cli("ensemble", "run", "sample_config.txt", "--json", "--log-dir",
                         str(tmp_path / "runs"), cwd=netjobs, env=python_on_path(cluster.env))
    assert result.returncode == 0, result.stderr
    assert f"started temporary worker {socket.gethostname()}-ensemble-" in result.stderr
    assert f"working in {netjobs}" in result.stderr
    test0, test1 = json.loads(result.stdout)
    assert (test0["name"], test0["state"], test1["name"], test1["state"]) == \
        ("test0", "done", "test1", "done")  # test1: -minhosts 0
    assert (Path(test0["log_dir"]) / "localhost.stdout").read_text() == "hello, world\n"
    parts = by_name(test1)
    assert {c["cwd"] for c in parts.values()} == {str(netjobs)}
    assert parts["localhost+2"]["state"] == parts["localhost+5"]["state"] == "done"
    log_dir = Path(test1["log_dir"])
    assert (log_dir / "localhost+5.stdout").read_text() == "goodbye, world\n"
    for name in ("localhost+1", "localhost+4"):  # sleep10.py, sleep5.py: -generaltimeout 2s
        assert parts[name]["state"] == "timed_out"
        assert parts[name]["fail_reason"].startswith("timed out after 2s")
    for name in ("localhost+1", "localhost+3", "localhost+4"):  # found, relative as they are
        assert "can't open file" not in (log_dir / f"{name}.stderr").read_text()
    wait_until(lambda: not temporary_workers(cluster), timeout=30,
               message="the temporary worker to stop after the run")


def test_localhost_beside_remote_hosts_uses_this_machines_worker(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    spec = tmp_path / "mixed.toml"
    spec.write_text("""
name = "mixed"
base_dir = "."

[[component]]
name = "load"
host = "h1"
command = "echo load"

[[component]]
name = "report"
host = "localhost"
command = "cat marker.txt"
stage = 1
""")
    # No worker of this machine: one is started for the run.
    (tmp_path / "marker.txt").write_text("typed here\n")
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 0, stderr
    parts = by_name(snapshot)
    assert parts["load"]["worker"] == "h1"
    assert parts["report"]["worker"].startswith(f"{socket.gethostname()}-ensemble-")
    assert parts["report"]["cwd"] == str(tmp_path)
    assert (Path(snapshot["log_dir"]) / "report.stdout").read_text() == "typed here\n"

    # A worker of this machine is connected: that one, in its own working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "marker.txt").write_text("the worker's directory\n")
    cluster.start_worker("here", 1, "--workdir", str(elsewhere))
    code, [snapshot], stderr = run(cluster, spec)
    assert code == 0, stderr
    assert "localhost: worker here, connected from this machine" in stderr
    report = by_name(snapshot)["report"]
    assert (report["worker"], report["cwd"]) == ("here", str(elsewhere))
    assert (Path(snapshot["log_dir"]) / "report.stdout").read_text() == \
        "the worker's directory\n"


def test_output_is_calm_by_default_verbose_with_v_and_logged_with_l(
        cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "talk.txt"
    config.write_text('talk:\n-minhosts: 1\nh0: "echo said on h0; echo warned >&2; exit 1"\n'
                      'h1: "seq 1 100"\nend\n')
    calm = cluster.cli("ensemble", "run", str(config), "--log-dir", str(tmp_path / "calm"),
                       cwd=tmp_path)
    assert calm.returncode == 0
    assert calm.stderr == ""  # no progress lines
    out = calm.stdout.splitlines()
    assert out[0].startswith("ensemble talk: done")
    # After the results: each output, head and tail, with the file holding all of it.
    h0_out = out.index(f"--- h0 (h0) stdout, 1 line: {tmp_path / 'calm' / 'h0.stdout'}")
    assert out[h0_out + 1] == "said on h0"
    assert out[out.index(f"--- h0 (h0) stderr, 1 line: {tmp_path / 'calm' / 'h0.stderr'}")
               + 1] == "warned"
    h1_out = out.index(f"--- h1 (h1) stdout, 100 lines: {tmp_path / 'calm' / 'h1.stdout'}")
    assert out[h1_out + 1:h1_out + 13] == [*map(str, range(1, 11)),
                                           "[... 80 lines more in the file ...]", "91"]

    loud = cluster.cli("ensemble", "run", str(config), "-v", "-q", "-l", "--log-dir",
                       str(tmp_path / "loud"), cwd=tmp_path)
    assert loud.returncode == 0
    assert " h0 (h0): " in loud.stderr and " talk: done\n" in loud.stderr  # a line a change
    assert "---" not in loud.stdout  # -q: the results only
    [log] = tmp_path.glob("talk_*.log")  # NetJobs' -l, beside the configuration
    assert log.read_text().startswith("ensemble talk: done")
    assert "said on h0" in log.read_text()

    planned = cluster.cli("ensemble", "run", str(config), "-s", cwd=tmp_path)
    assert planned.returncode == 0 and "dry run: nothing was started" in planned.stderr
    assert "its worker's working directory" in planned.stdout


def test_the_python_api_runs_an_ensemble_file(cluster: Cluster, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal import Client

    monkeypatch.setenv("SHOAL_HOME", str(cluster.home))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "api.txt"
    config.write_text('api:\nh0: "echo from the api"\nlocalhost: "pwd"\nend\n')
    with Client() as client:
        [snapshot] = client.run_ensemble(config)
        assert snapshot["state"] == "done"
        parts = by_name(snapshot)
        assert cluster.job(parts["h0"]["job_id"])["stdout"]["head"] == "from the api\n"
        assert cluster.job(parts["localhost"]["job_id"])["stdout"]["head"] == f"{tmp_path}\n"
        assert [run["run_id"] for run in client.list_ensembles("api")] == [snapshot["run_id"]]
        # RUN by name, as on the command line: the ensemble's latest run.
        assert client.ensemble("api")["run_id"] == snapshot["run_id"]
        assert client.cancel_ensemble("api") == {"cancelled": True}
        with pytest.raises(InputError, match="no ensemble run is named 'nope'"):
            client.ensemble("nope")


def test_runs_are_kept_across_a_server_restart(cluster: Cluster, hosts: Hosts,
                                               tmp_path: Path) -> None:
    spec = tmp_path / "kept.toml"
    spec.write_text("""
name = "kept"
min_hosts = 1

[[component]]
name = "fine"
host = "h0"
command = "echo fine"

[[component]]
name = "broken"
host = "h1"
command = "exit 4"
""")
    code, [snapshot], _ = run(cluster, spec)
    assert code == 0 and snapshot["state"] == "done"  # min_hosts = 1: one success is enough
    assert cluster.server is not None
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait(timeout=30)
    cluster.start_server("--host", hosts.server_address)

    listed = cluster.cli("ensemble", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (summary,) = [r for r in json.loads(listed.stdout) if r["run_id"] == snapshot["run_id"]]
    assert (summary["name"], summary["state"]) == ("kept", "done")
    shown = cluster.cli("ensemble", "show", str(snapshot["run_id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    parts = by_name(json.loads(shown.stdout))
    assert (parts["fine"]["state"], parts["fine"]["exit_code"]) == ("done", 0)
    assert (parts["broken"]["state"], parts["broken"]["exit_code"]) == ("failed", 4)

"""remote_runner's own example/, as shipped, on five namespace hosts named by the addresses its
config.py uses, each with a /home of its own (its base_dir is /home/odain/testing), run with
the muddler, --extra-args and the arg parser of the example."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts import Hosts, namespace_hosts

from .cluster import Cluster, wait_until
from .test_ensembles import PEERS, by_name

EXAMPLE = PEERS / "remote_runner" / "example"
ADDRESSES = ["172.25.87.96", "172.25.87.48", "172.25.87.53", "172.25.87.200", "172.25.87.184"]
FILES = ["./file1", "./file2", "./sub1/file1", "./sub2/file1", "./sub2/file2", "./script.sh"]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with namespace_hosts(len(ADDRESSES)) as made:
        yield made


def start_worker(hosts: Hosts, k: int, join: str, logs: Path) -> subprocess.Popen[bytes]:
    """Host k's worker, named by its example address, with a private /home (a tmpfs mounted
    in the namespace `ip netns exec` gives it)."""
    log = open(logs / f"h{k}.log", "ab")  # noqa: SIM115 - closed with the process
    script = 'mount -t tmpfs tmpfs /home && exec "$@"'
    return subprocess.Popen(
        ["ip", "netns", "exec", hosts.names[k], "sh", "-c", script, "sh",
         sys.executable, "-m", "shoal.cli.main", "worker", "--join", join,
         "--name", ADDRESSES[k], "--cores", "2", "--spool", str(logs / f"spool-{k}")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Iterator[Cluster]:
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    workers = []
    try:
        instance.start_server("--host", hosts.server_address)
        workers = [start_worker(hosts, k, instance.join, logs) for k in range(len(ADDRESSES))]
        wait_until(lambda: sum(w["connected"] for w in instance.api("GET", "/workers")["workers"])
                   == len(ADDRESSES), timeout=120, message="the namespace workers to connect")
        yield instance
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        instance.stop()


def test_the_example_runs_as_shipped(cluster: Cluster, tmp_path: Path) -> None:
    result = cluster.cli(
        "ensemble", "run", "-c", str(EXAMPLE / "config.py"), "-m", str(EXAMPLE / "arg_muddler.py"),
        "--extra-args=--apple Fuji", "--arg-parser", str(EXAMPLE / "extra_args_parser.py"),
        "--json", "--log-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    [snapshot] = json.loads(result.stdout)
    # Every component is a service (wait = False): they are started, and left to run.
    # (script.sh ends at once: by the time the command returns, they may all have ended.)
    assert snapshot["name"] == "config"
    assert snapshot["state"] == "done" or (snapshot["state"], snapshot["outcome"]) == \
        ("detached", "done")
    parts = by_name(snapshot)
    assert len(parts) == 11
    assert all(c["started_at"] is not None for c in parts.values())
    [first_stage] = {c["stage"] for c in parts.values() if c["name"].startswith("script-1-")}
    assert all(parts[f"script-2-{a}"]["stage"] > first_stage for a in ADDRESSES)
    assert parts["local-script"]["stage"] == max(c["stage"] for c in parts.values())

    wait_until(lambda: json.loads(cluster.cli("ensemble", "show", "config", "--json").stdout)
               ["state"] == "done", timeout=120, message="script.sh to end everywhere")
    final = by_name(json.loads(cluster.cli("ensemble", "show", "config", "--json").stdout))
    for address in ADDRESSES:
        first, second = final[f"script-1-{address}"], final[f"script-2-{address}"]
        assert (first["worker"], second["worker"]) == (address, address)
        assert first["cwd"] == "/home/odain/testing"  # its base_dir, on that host
        assert second["cwd"].startswith("/tmp/shoal-")  # base_dir None: a fresh directory
        for component, number in ((first, 1), (second, 2)):
            assert component["state"] == "done", component
            out = cluster.job(component["job_id"])["stdout"]["head"]
            # extra_options from the arg parser, then the muddler's word, as the config says.
            assert (f"Arg: {number}\nArg: hello\nArg: --apple\nArg: Fuji\nArg: --bread\n"
                    f"Arg: sourdough\nArg: --chese\nArg: cheddar\nArg: muddled\n") in out
            assert f"My current directory:  {component['cwd']}\n" in out
            listed = out.split("The following files exist:\n", 1)[1].splitlines()
            assert set(FILES) <= set(listed), out  # its files are in place on its host
    local = final["local-script"]
    assert (local["state"], local["cwd"]) == ("done", "/tmp")
    out = cluster.job(local["job_id"])["stdout"]["head"]
    assert "Arg: run\nArg: locally\nArg: muddled\n" in out
    assert f"The script is in {EXAMPLE}" in out

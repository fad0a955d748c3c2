"""`shoal up` / `shoal down` against real OpenSSH servers: namespace hosts with an sshd each,
test accounts with their own homes, a real server on the bridge."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts import Hosts, namespace_hosts
from tests.integration.cluster import Cluster, wait_until
from tests.sshd import Account, SshBed, Sshd, install_shared_shoal, keygen, shared_bin

pytestmark = pytest.mark.system

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def shared_shoal() -> Iterator[Path]:
    """shoal installed where every test account can run it (as an admin would)."""
    SshBed().close()  # skips (or fails under SHOAL_REQUIRE_SYSTEM_TESTS) without sshd
    root = install_shared_shoal()
    try:
        yield shared_bin(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bed() -> Iterator[SshBed]:
    testbed = SshBed()
    try:
        yield testbed
    finally:
        testbed.close()


def server_on(hosts: Hosts, tmp_path: Path) -> Cluster:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    cluster = Cluster(tmp_path / "home", logs)
    cluster.start_server("--host", hosts.server_address, "--lease-timeout", "6",
                         "--lost-grace", "2")
    return cluster


@contextlib.contextmanager
def ssh_hosts(count: int, tmp_path: Path, bed: SshBed, shared_shoal: Path
              ) -> Iterator[tuple[Cluster, list[Account], list[Sshd], dict[str, str]]]:
    """`count` namespace hosts, each with an sshd (trusted) and a test account, a server on
    their bridge, and the environment of a client that logs in to them."""
    with namespace_hosts(count) as hosts:
        cluster = server_on(hosts, tmp_path)
        try:
            accounts = [bed.add_account() for _ in range(count)]
            daemons = [bed.start_sshd(hosts.address(k), 22, netns=hosts.names[k],
                                      path=f"{shared_shoal}:{DEFAULT_PATH}")
                       for k in range(count)]
            for daemon in daemons:
                bed.trust(daemon)
            yield cluster, accounts, daemons, bed.client_env(cluster.env)
        finally:
            cluster.stop()


def add_job(cluster: Cluster, cmd: str, worker: str) -> int:
    answer = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": cmd, "cwd": "/", "on_worker": worker}]})
    return int(answer["ids"][0])


def one_line_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("shoal up:")]


def assert_no_processes_left(bed: SshBed, accounts: list[Account]) -> None:
    def clean() -> bool:
        return all(not [p for p in bed.account_processes(account)
                        if p.status() != "zombie"] for account in accounts)

    try:
        wait_until(clean, timeout=30, interval=0.2, message="no process of the accounts")
    except AssertionError:
        left = {a.name: [(p.pid, p.info.get("cmdline")) for p in bed.account_processes(a)]
                for a in accounts}
        raise AssertionError(f"processes left behind: {left}") from None


def test_up_on_four_hosts_runs_jobs_on_each_and_down_leaves_nothing(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    with ssh_hosts(4, tmp_path, bed, shared_shoal) as (cluster, accounts, daemons, env):
        specs = [f"ssh://{a.name}@{d.address}" for a, d in zip(accounts, daemons, strict=True)]
        up = cluster.cli("up", *specs, env=env, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        workers = {w["name"]: w for w in cluster.api("GET", "/workers")["workers"]}
        names = [f"{a.name}@{d.address}" for a, d in zip(accounts, daemons, strict=True)]
        for name in names:
            assert workers[name]["connected"] and workers[name]["provider"] == "ssh"
        table = cluster.cli("workers", env=env).stdout
        assert "STARTED BY" in table and table.count(" ssh") >= 4
        # No token on any command line there.
        token = cluster.join.split("@")[0].removeprefix("shoal://")
        for account in accounts:
            for process in bed.account_processes(account):
                assert token not in " ".join(process.info.get("cmdline") or [])
        ids = [add_job(cluster, f"id -un; : {name}", name) for name in names]
        for job_id, account in zip(ids, accounts, strict=True):
            job = cluster.wait_state(job_id, "done", "failed", timeout=120)
            assert job["state"] == "done", job
            assert cluster.cli("logs", str(job_id), env=env).stdout.strip() == account.name
        # Up again: nothing new is started.
        again = cluster.cli("up", *specs, env=env, timeout=600)
        assert again.returncode == 0 and again.stdout.count("already up") == 4, again.stdout
        # A long job on one host: down stops it too.
        cluster.wait_state(add_job(cluster, "sleep 600", names[0]), "running", timeout=60)
        down = cluster.cli("down", env=env, timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.count("stopped") == 4, down.stdout
        assert_no_processes_left(bed, accounts)
        assert not (cluster.home / "ssh-workers.json").read_text().count('"pid"')


def test_bootstrap_installs_offline_where_shoal_is_missing(
        tmp_path: Path, bed: SshBed) -> None:
    with namespace_hosts(1) as hosts:  # no route out of the namespace: no index to reach
        cluster = server_on(hosts, tmp_path)
        try:
            account = bed.add_account()
            daemon = bed.start_sshd(hosts.address(0), 22, netns=hosts.names[0],
                                    path=DEFAULT_PATH)
            bed.trust(daemon)
            env = bed.client_env(cluster.env)
            spec = daemon.spec(account)
            plain = cluster.cli("up", spec, env=env, timeout=300)
            assert plain.returncode == 1
            assert one_line_errors(plain.stderr) == [
                f"shoal up: {spec}: shoal 0.1.0 is not installed there (no shoal on its "
                "PATH); install it, or use --bootstrap"]
            up = cluster.cli("up", "--bootstrap", spec, env=env, timeout=900)
            assert up.returncode == 0, up.stdout + up.stderr
            venvs = list((account.home / ".shoal" / "venvs").iterdir())
            assert len(venvs) == 1 and (venvs[0] / "bin" / "shoal").exists()
            assert (account.home / ".shoal" / "venv").resolve() == venvs[0]
            name = f"{account.name}@{daemon.address}_22"
            job_id = add_job(cluster, "command -v shoal || echo no-shoal-on-path; echo $HOME", name)
            job = cluster.wait_state(job_id, "done", "failed", timeout=120)
            assert job["state"] == "done", job
            out = cluster.cli("logs", str(job["id"]), env=env).stdout.split()
            assert out == ["no-shoal-on-path", str(account.home)]
            # A second bootstrap reuses what is there: nothing is installed again.
            cluster.cli("down", env=env, timeout=300)
            marker = venvs[0] / ".shoal-installed"
            before = marker.stat().st_mtime
            again = cluster.cli("up", "--bootstrap", spec, env=env, timeout=900)
            assert again.returncode == 0, again.stderr
            assert marker.stat().st_mtime == before
            down = cluster.cli("down", spec, env=env, timeout=300)
            assert down.returncode == 0, down.stderr
            assert_no_processes_left(bed, [account])
        finally:
            cluster.stop()


def test_refusals_are_one_line_naming_the_host_and_the_others_go_on(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    cluster.start_server()
    try:
        path = f"{shared_shoal}:{DEFAULT_PATH}"
        good_account, key_account = bed.add_account(), bed.add_account()
        good = bed.start_sshd(path=path)
        unknown = bed.start_sshd(path=path)
        changed = bed.start_sshd(path=path)
        bed.trust(good)
        bed.trust(changed)
        other_host_key = keygen(bed.root / "other-host-key", "other")
        lines = bed.known_hosts.read_text().replace(changed.host_key_line,
                                                    " ".join(other_host_key.split()[:2]))
        bed.known_hosts.write_text(lines)
        # key_account trusts another key than the client's.
        other_client = keygen(bed.root / "other-client-key")
        (key_account.home / ".ssh" / "authorized_keys").write_text(other_client + "\n")
        closed_port = Sshd("127.0.0.1", _closed_port(), "", good.process, good.log)
        env = bed.client_env(cluster.env)
        specs = {
            "good": good.spec(good_account),
            "unknown": unknown.spec(good_account),
            "changed": changed.spec(good_account),
            "key": good.spec(key_account),
            "closed": closed_port.spec(good_account),
        }
        up = cluster.cli("up", *specs.values(), env=env, timeout=600)
        assert up.returncode == 1
        errors = one_line_errors(up.stderr)
        assert len(errors) == 4, up.stderr
        by_host = {kind: [e for e in errors if e.startswith(f"shoal up: {spec}: ")]
                   for kind, spec in specs.items()}
        assert not by_host["good"]
        assert "host key unknown" in by_host["unknown"][0]
        assert "--accept-new-host-keys" in by_host["unknown"][0]
        assert "host key mismatch" in by_host["changed"][0]
        assert "authentication refused" in by_host["key"][0]
        assert "unreachable" in by_host["closed"][0]
        assert f"{specs['good']}: worker" in up.stdout
        assert "1 of 5 hosts up" in up.stderr
        # Accepting new keys adds the unknown one, never the changed one.
        accepted = cluster.cli("up", "--accept-new-host-keys", specs["unknown"],
                               specs["changed"], env=env, timeout=600)
        assert accepted.returncode == 1
        assert unknown.known_hosts_line() in bed.known_hosts.read_text()
        assert "host key mismatch" in accepted.stderr
        # Bad input: exit 2, one line, nothing started.
        bad = cluster.cli("up", "user@host:99999", env=env)
        assert bad.returncode == 2 and "host 'user@host:99999'" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        down = cluster.cli("down", env=env, timeout=600)
        assert down.returncode == 0, down.stderr
        assert down.stdout.count("stopped") == 2
        assert_no_processes_left(bed, [good_account, key_account])
    finally:
        cluster.stop()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_down_names_a_host_it_never_started(tmp_path: Path, bed: SshBed) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    cluster.start_server()
    try:
        down = cluster.cli("down", "nowhere.example", env=bed.client_env(cluster.env))
        assert down.returncode == 1
        assert down.stderr.strip() == ("shoal down: nowhere.example: no worker started there "
                                       "by `shoal up`")
    finally:
        cluster.stop()


def test_run_with_hosts_spreads_jobs_over_ssh_workers_and_stops_them(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    with namespace_hosts(2) as hosts:
        accounts = [bed.add_account() for _ in range(2)]
        daemons = [bed.start_sshd(hosts.address(k), 22, netns=hosts.names[k],
                                  path=f"{shared_shoal}:{DEFAULT_PATH}") for k in range(2)]
        for daemon in daemons:
            bed.trust(daemon)
        work = bed.root / "work"
        work.mkdir()
        os.chmod(work, 0o777)  # the accounts write their results here too
        jobs = work / "jobs.txt"
        jobs.write_text("".join(f"sleep 2; id -un > out-{i}\n" for i in range(16)))
        env = bed.client_env({k: v for k, v in os.environ.items()
                              if not k.startswith("SHOAL_")})
        specs = ",".join(f"{a.name}@{d.address}" for a, d in zip(accounts, daemons, strict=True))
        run = subprocess.run(
            [sys.executable, "-m", "shoal.cli.main", "run", str(jobs), "-j", "1", "--json",
             "--hosts", specs, "--listen", f"{hosts.server_address}:0"],
            cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        assert summary["done"] == 16, summary
        owners = {(work / f"out-{i}").read_text().strip() for i in range(16)}
        assert owners & {a.name for a in accounts}, owners  # some ran on the SSH hosts
        assert_no_processes_left(bed, accounts)
        # Resumable as ever: a second run finds everything done.
        again = subprocess.run(
            [sys.executable, "-m", "shoal.cli.main", "run", str(jobs), "--json",
             "--hosts", specs, "--listen", f"{hosts.server_address}:0"],
            cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["skipped_done"] == 16
        assert_no_processes_left(bed, accounts)


def test_ensemble_over_ssh_hosts_starts_and_stops_its_workers(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    import json

    with ssh_hosts(2, tmp_path, bed, shared_shoal) as (cluster, accounts, daemons, env):
        server_host, client_host = (f"ssh://{a.name}@{d.address}"
                                    for a, d in zip(accounts, daemons, strict=True))
        spec = tmp_path / "pair.toml"
        spec.write_text(f"""
name = "pair"
timeout = "120s"

[[component]]
name = "server"
host = "{server_host}"
command = "id -un; sleep 120"
wait = false

[[component]]
name = "client"
host = "{client_host}"
command = "id -un"
stage = 1
""")
        result = cluster.cli("ensemble", "run", str(spec), "--json", "--log-dir",
                             str(tmp_path / "runs"), env=env, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        [snapshot] = json.loads(result.stdout)
        assert snapshot["state"] == "done", snapshot
        parts = {c["name"]: c for c in snapshot["components"]}
        assert parts["server"]["state"] == "killed"  # a service, stopped at the end
        assert parts["client"]["state"] == "done"
        for name, account in (("server", accounts[0]), ("client", accounts[1])):
            logs = cluster.cli("logs", str(parts[name]["job_id"]), env=env).stdout
            assert logs.split()[0] == account.name
        workers = cluster.api("GET", "/workers")["workers"]
        assert not [w for w in workers if w["connected"]], workers
        assert_no_processes_left(bed, accounts)


def test_netjobs_targets_are_reached_over_ssh_with_the_flag(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    """A NetJobs file names its targets as NetJobs does (an address, no ssh://): with --ssh,
    each gets a worker over SSH for the run; without it, they match no worker."""
    import json

    with ssh_hosts(2, tmp_path, bed, shared_shoal) as (cluster, accounts, daemons, env):
        # NetJobs names a target by its host alone: the user comes from ~/.ssh/config.
        ssh_config = Path(env["HOME"]) / ".ssh" / "config"
        ssh_config.parent.mkdir(mode=0o700, exist_ok=True)
        with ssh_config.open("a") as out:
            for account, daemon in zip(accounts, daemons, strict=True):
                out.write(f"Host {daemon.address}\n    User {account.name}\n")
        targets = [daemon.address for daemon in daemons]
        config = tmp_path / "netjobs.txt"
        config.write_text("pair:\n-generaltimeout: 120s\n"
                          + "".join(f'{target}: "id -un"\n' for target in targets)
                          + "end\n")
        refused = cluster.cli("ensemble", "run", str(config), env=env, cwd=tmp_path)
        assert refused.returncode == 2 and "matches no connected worker" in refused.stderr
        result = cluster.cli("ensemble", "run", str(config), "--ssh", "--json",
                             "--log-dir", str(tmp_path / "runs"), env=env, timeout=600,
                             cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        [snapshot] = json.loads(result.stdout)
        assert snapshot["state"] == "done", snapshot
        users = sorted(cluster.cli("logs", str(c["job_id"]), env=env).stdout.split()[0]
                       for c in snapshot["components"])
        assert users == sorted(a.name for a in accounts)
        workers = cluster.api("GET", "/workers")["workers"]
        assert not [w for w in workers if w["connected"]], workers
        assert_no_processes_left(bed, accounts)

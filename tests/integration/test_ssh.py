"""`shoal up` / `shoal down` against real OpenSSH servers: namespace hosts with an sshd each,
test accounts with their own homes, a real server on the bridge."""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.provision.remote import PYTHON_CANDIDATES
from tests.hosts import Hosts, namespace_hosts
from tests.integration.cluster import SHOAL, Cluster, wait_until
from tests.sshd import (
    Account,
    SshBed,
    Sshd,
    command_directory,
    install_shared_shoal,
    keygen,
    shared_bin,
)

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
                        if p.info["status"] != psutil.STATUS_ZOMBIE] for account in accounts)

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
        again = subprocess.run(  # -S: GNU parallel's name for --hosts
            [sys.executable, "-m", "shoal.cli.main", "run", str(jobs), "--json",
             "-S", specs, "--listen", f"{hosts.server_address}:0"],
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


@contextlib.contextmanager
def loopback_server(tmp_path: Path) -> Iterator[Cluster]:
    """A real server on loopback, where workers started over SSH to sshds on loopback join."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    cluster.start_server()
    try:
        yield cluster
    finally:
        cluster.stop()


def cli_at_terminal(args: list[str], env: dict[str, str], prompt: str, answer: str,
                    timeout: float) -> subprocess.CompletedProcess[str]:
    """`shoal ARGS` with a terminal for its standard input (and no controlling terminal, so
    it reads from that one), typing `answer` once it has written `prompt`."""
    master, terminal = os.openpty()
    process = subprocess.Popen([*SHOAL, *args], env=env, stdin=terminal,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    os.close(terminal)
    try:
        assert process.stderr is not None
        said = b""
        deadline = time.monotonic() + timeout
        while prompt.encode() not in said:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([process.stderr], [], [], max(left, 0))
            chunk = os.read(process.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                process.kill()
                raise AssertionError(f"no prompt {prompt!r}; it said: {said.decode()!r}")
            said += chunk
        os.write(master, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(),
                                       (said + stderr).decode())


def run_as(cluster: Cluster, worker: str, env: dict[str, str]) -> str:
    """The user a job on `worker` runs as."""
    job_id = add_job(cluster, f"id -un; : {worker}", worker)  # one job per worker
    job = cluster.wait_state(job_id, "done", "failed", timeout=120)
    assert job["state"] == "done" and job["worker"] == worker, job
    return str(cluster.cli("logs", str(job["id"]), env=env).stdout.strip())


def test_password_login_starts_a_worker_and_a_wrong_password_is_one_line(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    path = f"{shared_shoal}:{DEFAULT_PATH}"
    with loopback_server(tmp_path) as cluster:
        by_key = bed.add_account()
        by_password = bed.add_account(authorized_keys=[])  # no key of ours will do there
        password = secrets.token_urlsafe(12)
        bed.set_password(by_password, password)
        keys_only = bed.start_sshd(path=path)
        passwords = bed.start_sshd(path=path, password_authentication=True)
        bed.trust(keys_only)
        bed.trust(passwords)
        env = bed.client_env(cluster.env)
        key_spec, password_spec = keys_only.spec(by_key), passwords.spec(by_password)

        # Keys alone do not get in where only the password does.
        keys = cluster.cli("up", password_spec, env=env, timeout=600)
        assert keys.returncode == 1
        assert one_line_errors(keys.stderr) == [
            f"shoal up: {password_spec}: authentication refused for user {by_password.name} "
            "(tried ssh-agent, keys; an encrypted key needs --passphrase, a password "
            "--password)"]

        # A wrong password: one line naming that host; the host logging in by key goes on.
        wrong_password = "not-" + password
        wrong = cluster.cli("up", "--password", password_spec, key_spec, timeout=600,
                            env={**env, "SHOAL_SSH_PASSWORD": wrong_password})
        assert wrong.returncode == 1, wrong.stdout + wrong.stderr
        assert one_line_errors(wrong.stderr) == [
            f"shoal up: {password_spec}: authentication refused for user {by_password.name} "
            "(tried ssh-agent, keys, password)"]
        assert f"{key_spec}: worker {key_spec.replace(':', '_')} joined" in wrong.stdout
        assert "1 of 2 hosts up" in wrong.stderr
        assert wrong_password not in wrong.stdout + wrong.stderr
        assert f"Failed password for {by_password.name}" in passwords.log.read_text()

        # No password in the environment and no terminal to ask at: bad usage, one line.
        unasked = cluster.cli("up", "--password", password_spec, env=env)
        assert unasked.returncode == 2
        assert unasked.stderr.strip().splitlines() == [
            "shoal: --password: set $SHOAL_SSH_PASSWORD, or run it from a terminal to be "
            "asked"], unasked.stderr

        # The right one, asked for at the terminal, for a host given without its user.
        address = f"{passwords.address}:{passwords.port}"
        right = cli_at_terminal(["up", "--user", by_password.name, "--password", address],
                                env, "SSH password: ", password, timeout=600)
        assert right.returncode == 0, right.stdout + right.stderr
        assert f"{address}: worker {address.replace(':', '_')} joined" in right.stdout
        assert password not in right.stdout + right.stderr
        assert f"Accepted password for {by_password.name}" in passwords.log.read_text()
        assert run_as(cluster, address.replace(":", "_"), env) == by_password.name
        assert run_as(cluster, key_spec.replace(":", "_"), env) == by_key.name

        down = cluster.cli("down", "--password", timeout=600,
                           env={**env, "SHOAL_SSH_PASSWORD": password})
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.count("stopped") == 2, down.stdout
        assert_no_processes_left(bed, [by_key, by_password])


@pytest.mark.parametrize("key_format", [
    "openssh",  # ssh-keygen's own
    "pem",
])
def test_encrypted_key_logs_in_with_its_passphrase(
        tmp_path: Path, bed: SshBed, shared_shoal: Path, key_format: str) -> None:
    with loopback_server(tmp_path) as cluster:
        passphrase = secrets.token_urlsafe(12)
        encrypted = bed.client_home / ".ssh" / "id_ecdsa"
        public = keygen(encrypted, passphrase=passphrase, kind="ecdsa", key_format=key_format)
        account = bed.add_account(authorized_keys=[public])  # that key alone gets in
        daemon = bed.start_sshd(path=f"{shared_shoal}:{DEFAULT_PATH}")
        bed.trust(daemon)
        env = bed.client_env(cluster.env)
        spec = daemon.spec(account)

        without = cluster.cli("up", spec, env=env, timeout=600)
        assert without.returncode == 1
        assert one_line_errors(without.stderr) == [
            f"shoal up: {spec}: authentication refused for user {account.name} (tried "
            "ssh-agent, keys; an encrypted key needs --passphrase, a password --password)"]

        wrong = cluster.cli("up", "--passphrase", spec, timeout=600,
                            env={**env, "SHOAL_SSH_PASSPHRASE": "not-" + passphrase})
        assert wrong.returncode == 1
        [line] = one_line_errors(wrong.stderr)
        assert line.startswith(f"shoal up: {spec}: cannot decrypt an SSH key with the "
                               "passphrase given (wrong passphrase?)"), line
        assert passphrase not in wrong.stdout + wrong.stderr

        right = cluster.cli("up", "--passphrase", spec, timeout=600,
                            env={**env, "SHOAL_SSH_PASSPHRASE": passphrase})
        assert right.returncode == 0, right.stdout + right.stderr
        assert f"Accepted publickey for {account.name}" in daemon.log.read_text()
        assert run_as(cluster, spec.replace(":", "_"), env) == account.name
        down = cluster.cli("down", "--passphrase", timeout=600,
                           env={**env, "SHOAL_SSH_PASSPHRASE": passphrase})
        assert down.returncode == 0, down.stdout + down.stderr
        assert_no_processes_left(bed, [account])


PROBE_COMMANDS = ("sh", "readlink", "head", "sed", "cut")  # what the probe's script calls


def old_python(where: Path, version: tuple[int, int, int]) -> Path:
    """A directory holding the probe's commands and a `python3` that is this machine's
    Python saying, from its start, that it is `version`: shoal's probe runs on it as on any
    Python and reads that version."""
    real = "/usr/bin/python3"
    assert os.path.exists(real)
    command_directory(where, PROBE_COMMANDS)
    site = where.parent / f"{where.name}-site"
    site.mkdir(mode=0o755)
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.version_info = {(*version, 'final', 0)!r}\n")
    python = where / "python3"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {real} "$@"\n')
    python.chmod(0o755)
    check = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:3])"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == str(version), check
    return where


def test_a_host_without_python_3_11_is_one_line_and_the_others_go_on(
        tmp_path: Path, bed: SshBed, shared_shoal: Path) -> None:
    with loopback_server(tmp_path) as cluster:
        account = bed.add_account()
        good = bed.start_sshd(path=f"{shared_shoal}:{DEFAULT_PATH}")
        # Hosts whose logins find no Python at all, or only a Python 3.9.
        bare = bed.start_sshd(path=str(command_directory(bed.root / "bare-bin",
                                                         PROBE_COMMANDS)))
        old = bed.start_sshd(path=str(old_python(bed.root / "old-bin", (3, 9, 18))))
        # And one whose only Python is the one shoal is installed with.
        own = command_directory(bed.root / "own-bin", (*PROBE_COMMANDS, "id"))
        (own / "shoal").symlink_to(shared_shoal / "shoal")
        own_python = bed.start_sshd(path=str(own))
        for daemon in (good, bare, old, own_python):
            bed.trust(daemon)
        env = bed.client_env(cluster.env)
        specs = {"good": good.spec(account), "bare": bare.spec(account),
                 "old": old.spec(account), "own": own_python.spec(account)}
        tried = ", ".join(PYTHON_CANDIDATES)
        no_python = "no Python 3.11 or newer found (tried " + tried + " on its PATH; found {})"

        up = cluster.cli("up", *specs.values(), env=env, timeout=600)
        assert up.returncode == 1, up.stdout + up.stderr
        missing = (f"; shoal {shoal.__version__} needs one, and is not installed there (no "
                   "shoal on its PATH)")
        assert sorted(one_line_errors(up.stderr)) == sorted([
            f"shoal up: {specs['bare']}: {no_python.format('none')}{missing}",
            f"shoal up: {specs['old']}: {no_python.format('python3 3.9.18')}{missing}"])
        for kind in ("good", "own"):
            name = specs[kind].replace(":", "_")
            assert f"{specs[kind]}: worker {name} joined" in up.stdout, up.stdout
            assert run_as(cluster, name, env) == account.name
        assert "2 of 4 hosts up" in up.stderr

        # --bootstrap cannot help there: the same line, and nothing is sent to those hosts.
        bootstrap = cluster.cli("up", "--bootstrap", specs["bare"], specs["old"], env=env,
                                timeout=600)
        assert bootstrap.returncode == 1, bootstrap.stdout + bootstrap.stderr
        assert sorted(one_line_errors(bootstrap.stderr)) == sorted([
            f"shoal up: {specs['bare']}: {no_python.format('none')}; install one to "
            "bootstrap shoal",
            f"shoal up: {specs['old']}: {no_python.format('python3 3.9.18')}; install one to "
            "bootstrap shoal"])
        assert not (account.home / ".shoal" / "wheels").exists()

        down = cluster.cli("down", env=env, timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.count("stopped") == 2, down.stdout
        assert_no_processes_left(bed, [account])

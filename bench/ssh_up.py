"""Time from `shoal up` to every worker joined, for 8 SSH hosts: in parallel, one at a time,
and a plain OpenSSH loop as the peer.

Eight network-namespace hosts on a bridge, each with a real `sshd` and a test account of its
own (as the tests make them: tests/hosts.py, tests/sshd.py), shoal installed for the accounts
as an admin would, a real server on the bridge. Per round, interleaved:

- `shoal up` on the 8 hosts with the default fan-out (all at once);
- `shoal up --parallel 1` (one host after the other);
- the peer: a shell loop of `ssh HOST` (OpenSSH's client) starting `shoal worker` detached on
  each host in turn, timed until the server lists all 8 connected.

Each is followed by `shoal down` (for the loop, killing its workers), outside the timing.
Needs root, `ip netns`, sshd and /usr/bin/python3 3.11+. Reproduce with
`.venv/bin/python bench/ssh_up.py --rounds 3 --write-docs`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import compile_shoal, replace_section, seconds_cell  # noqa: E402
from throughput import machine  # noqa: E402

from tests.hosts import namespace_hosts  # noqa: E402
from tests.integration.cluster import Cluster, wait_until  # noqa: E402
from tests.sshd import SshBed, install_shared_shoal, shared_bin  # noqa: E402

DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- ssh-up:start -->", "<!-- ssh-up:end -->"
HOSTS = 8


def connected(cluster: Cluster, names: set[str]) -> bool:
    live = {w["name"] for w in cluster.api("GET", "/workers")["workers"] if w["connected"]}
    return names <= live


def run(rounds: int) -> dict[str, list[float]]:
    shared = install_shared_shoal()
    bed = SshBed()
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-ssh-"))
    times: dict[str, list[float]] = {"parallel": [], "serial": [], "ssh loop": []}
    try:
        with namespace_hosts(HOSTS) as hosts:
            (work / "logs").mkdir()
            cluster = Cluster(work / "home", work / "logs")
            cluster.start_server("--host", hosts.server_address)
            try:
                path = f"{shared_bin(shared)}:/usr/local/bin:/usr/bin:/bin"
                accounts = [bed.add_account() for _ in range(HOSTS)]
                daemons = [bed.start_sshd(hosts.address(k), 22, netns=hosts.names[k], path=path)
                           for k in range(HOSTS)]
                for daemon in daemons:
                    bed.trust(daemon)
                env = bed.client_env(cluster.env)
                specs = [f"{a.name}@{d.address}" for a, d in zip(accounts, daemons, strict=True)]
                for _ in range(rounds):
                    for label, extra in (("parallel", []), ("serial", ["--parallel", "1"])):
                        began = time.monotonic()
                        up = cluster.cli("up", *extra, *specs, env=env, timeout=900)
                        times[label].append(time.monotonic() - began)
                        assert up.returncode == 0, up.stdout + up.stderr
                        down = cluster.cli("down", env=env, timeout=900)
                        assert down.returncode == 0, down.stderr
                    times["ssh loop"].append(ssh_loop(cluster, bed, specs, env))
            finally:
                cluster.stop()
    finally:
        bed.close()
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return times


def ssh_loop(cluster: Cluster, bed: SshBed, specs: list[str], env: dict[str, str]) -> float:
    """The peer: what one writes by hand with OpenSSH, one host after the other."""
    join = cluster.join
    names = {f"loop-{k}" for k in range(len(specs))}
    remote = ("read -r j; SHOAL_JOIN=$j setsid shoal worker --name {name} "
              "</dev/null >/dev/null 2>&1 & echo started")
    options = ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={bed.known_hosts}",
               "-i", str(bed.client_key)]
    began = time.monotonic()
    for k, spec in enumerate(specs):
        subprocess.run(["ssh", *options, spec, "sh -c " + shlex.quote(
            remote.format(name=f"loop-{k}"))], input=join + "\n", text=True, env=env,
            check=True, capture_output=True, timeout=300)
    wait_until(lambda: connected(cluster, names), timeout=300, interval=0.05,
               message="the loop's workers")
    elapsed = time.monotonic() - began
    for account in bed.accounts:  # outside the timing: stop them
        for process in bed.account_processes(account):
            if "worker" in (process.info.get("cmdline") or []):
                process.terminate()
    wait_until(lambda: not any(w["connected"] and w["name"] in names
                               for w in cluster.api("GET", "/workers")["workers"]),
               timeout=120, message="the loop's workers to stop")
    return elapsed


def report(times: dict[str, list[float]], rounds: int) -> str:
    info = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\nMeasured {now} on {os.cpu_count()} CPUs ({info['cpu model']}), Python "
             f"{info['python']}; {HOSTS} namespace hosts with an sshd each, medians of "
             f"{rounds} interleaved rounds (min-max in brackets).\n",
             "| how | up to all joined |", "|---|---|"]
    what = {"parallel": "`shoal up` (all hosts at once)",
            "serial": "`shoal up --parallel 1` (one at a time)",
            "ssh loop": "OpenSSH `ssh` loop, one at a time (the peer)"}
    for label, values in times.items():
        lines.append(f"| {what[label]} | {seconds_cell(values)} |")
    ratio = statistics.median(times["serial"]) / statistics.median(times["parallel"])
    lines.append(f"\nIn parallel, `shoal up` is {ratio:.1f}x faster than one at a time.\n")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    compile_shoal()
    times = run(args.rounds)
    body = report(times, args.rounds)
    print(body)
    if args.write_docs:
        replace_section(DOCS, START, END, body, scaffold=f"## Starting workers over SSH\n\n"
                        f"{START}\n{END}\n")


if __name__ == "__main__":
    main()

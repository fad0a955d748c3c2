"""A runmaker file shared by `shoal run` processes and the real runmaker4, runset4 and runwait4.

runmaker4's programs are not part of shoal: they are run as they are, from the peers directory
beside the project (../shared/peers/runmaker). Every job appends its id to a ledger; each test
checks that every job ran exactly once and that the file ends consistent: every job line as
written, with its state `d` (or `!` for the jobs that fail on purpose).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts import Hosts, namespace_hosts
from tests.system import require

from .cluster import SHOAL, Cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT.parent / "shared" / "peers" / "runmaker"
FAILING = {7, 23}  # these jobs exit 3 on purpose


@pytest.fixture
def peers() -> Path:
    require((PEERS / "runmaker4.py").exists(), f"runmaker4 in {PEERS}")
    return PEERS


def write_jobs(path: Path, count: int, ledger: Path, sleep: float = 0.05) -> None:
    lines = ["# shared by runmaker4 and shoal"]
    for job in range(1, count + 1):
        fail = "; exit 3" if job in FAILING else ""
        lines.append(f". echo {job} >> {ledger}; sleep {sleep}{fail}")
    path.write_text("\n".join(lines) + "\n")


def check_once(path: Path, ledger: Path, count: int) -> None:
    """Every job ran exactly once, and the file is as written but for final state bytes."""
    ran = Counter(ledger.read_text().split())
    assert ran == Counter(str(job) for job in range(1, count + 1)), ran
    lines = path.read_text().splitlines()
    assert lines[0] == "# shared by runmaker4 and shoal"
    for job, line in enumerate(lines[1:], start=1):
        fail = "; exit 3" if job in FAILING else ""
        assert line[1:].startswith(f" echo {job} >> ") and line.endswith(fail), line
        assert line[0] == ("!" if job in FAILING else "d"), line


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}


def shoal(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, *SHOAL, *args], cwd=cwd, env=environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def peer(peers: Path, program: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(peers / program), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"{process.args!r} did not finish: {err[-2000:]}") from None
    return process.returncode, out, err


def states(path: Path) -> str:
    return "".join(line[0] for line in path.read_text().splitlines()[1:])


@pytest.mark.parametrize(("order", "runmaker_jobs", "shoal_jobs"), [
    ("together", 2, 2), ("runmaker4 first", 2, 2), ("shoal first", 2, 2),
    ("together", 1, 3), ("together", 3, 1),
    ("together", 0, 0),  # -j0: runmaker4's autodetect, one per core in both
])
def test_runmaker4_and_shoal_share_one_file(tmp_path: Path, peers: Path, order: str,
                                            runmaker_jobs: int, shoal_jobs: int) -> None:
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 40
    write_jobs(jobs, count, ledger)
    started: list[subprocess.Popen[str]] = []

    def start_runmaker() -> None:
        started.append(peer(peers, "runmaker4.py", f"-j{runmaker_jobs}", str(jobs),
                            cwd=tmp_path))

    def start_shoal() -> None:
        started.append(shoal("run", str(jobs), "-j", str(shoal_jobs), "--json", cwd=tmp_path))

    first, second = (start_shoal, start_runmaker) if order == "shoal first" else \
        (start_runmaker, start_shoal)
    first()
    if order != "together":
        wait_until(lambda: states(jobs) != "." * count, 60, message="the first runner")
    second()
    results = [finish(process) for process in started]
    check_once(jobs, ledger, count)
    code, out, err = results[1] if order != "shoal first" else results[0]
    assert code == (1 if "!" in _shoal_marks(out) else 0), err
    summary = json.loads(out)
    assert summary["done"] + summary["failed"] == summary["total"]


def _shoal_marks(summary_json: str) -> str:
    summary = json.loads(summary_json)
    return "!" if summary["failed"] else ""


@pytest.mark.parametrize("runners", [2, 3])
def test_several_shoal_runs_share_one_file(tmp_path: Path, runners: int) -> None:
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 60
    write_jobs(jobs, count, ledger)
    processes = [shoal("run", str(jobs), "-j", "2", "--json", cwd=tmp_path)
                 for _ in range(runners)]
    results = [finish(process) for process in processes]
    check_once(jobs, ledger, count)
    summaries = [json.loads(out) for _, out, _ in results]
    assert sum(summary["total"] for summary in summaries) == count
    run = tmp_path / ".shoal" / "runs" / "runs.txt"  # the file's run, as a lines file's
    homes = {run, *(run / "runners" / str(n) for n in range(2, runners + 1))}
    assert all((home / "shoal.db").exists() for home in homes)  # a history each


def test_a_killed_runner_s_lines_are_recovered_never_run_twice(tmp_path: Path) -> None:
    jobs, ledger, started = tmp_path / "runs.txt", tmp_path / "ledger", tmp_path / "started"
    # Lines 1-3 sleep on their first attempt (the runner is killed meanwhile); the rest are
    # quick. A job counts in the ledger only when it has finished.
    lines = ["# shared by runmaker4 and shoal"]
    for job in range(1, 11):
        slow = f"mkdir {tmp_path}/attempt-{job} 2>/dev/null && sleep 120; " if job <= 3 else ""
        lines.append(f". echo {job} >> {started}; {slow}echo {job} >> {ledger}")
    jobs.write_text("\n".join(lines) + "\n")

    victim = shoal("run", str(jobs), "-j", "3", cwd=tmp_path)
    wait_until(lambda: started.exists() and len(started.read_text().split()) == 3, 60,
               message="three slow jobs started")
    # A live runner's lines are never taken, by a check or by another runner.
    checked = subprocess.run([*SHOAL, "file", "check", "--json", str(jobs)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, env=environment())
    assert checked.returncode == 0, checked.stderr
    assert [ref["line"] for ref in json.loads(checked.stdout)["live"]] == [2, 3, 4]
    assert states(jobs)[:3] == "rrr"

    os.killpg(victim.pid, signal.SIGKILL)  # the runner and its guard's session are apart
    victim.wait()

    def judged_dead() -> list[int]:
        looked = subprocess.run([*SHOAL, "file", "check", "--dry-run", "--json", str(jobs)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env=environment())
        return [ref["line"] for ref in json.loads(looked.stdout)["dead"]]

    # The lines stay held until the killed runner's jobs are gone too.
    wait_until(lambda: judged_dead() == [2, 3, 4], 60, interval=0.2,
               message="the killed runner's lines judged dead")
    rerun = shoal("run", str(jobs), "-j", "2", "--json", cwd=tmp_path)
    code, _, err = finish(rerun)
    assert code == 0, err
    assert "lines 2, 3, 4 were held by a shoal runner that is gone" in err
    assert states(jobs) == "d" * 10
    assert Counter(ledger.read_text().split()) == Counter(str(job) for job in range(1, 11))
    starts = Counter(started.read_text().split())
    assert all(starts[str(job)] == 2 for job in (1, 2, 3))  # killed once, then run to the end


def test_a_killed_listening_runner_s_lines_stay_held_while_its_far_workers_run_them(
        tmp_path: Path) -> None:
    """A `--listen` runner killed with SIGKILL while a worker of its own (another process, as
    on another host) runs two lines: they are not judged dead, so no runner takes them again,
    while that worker may still be running them."""
    jobs, ledger, started = tmp_path / "runs.txt", tmp_path / "ledger", tmp_path / "started"
    jobs.write_text("# far\n" + "".join(
        f". echo {job} >> {started}; sleep 60; echo {job} >> {ledger}\n" for job in (1, 2)))
    victim = shoal("run", str(jobs), "--listen", "127.0.0.1:0", cwd=tmp_path)
    join_file = tmp_path / ".shoal" / "runs" / "runs.txt" / "join"
    join = wait_until(lambda: join_file.exists() and join_file.read_text().split()[-1], 60,
                      message="the join line")
    far = subprocess.Popen([*SHOAL, "worker", "--join", join, "--name", "far", "--cores", "2",
                            "--spool", str(tmp_path / "far-spool")], cwd=tmp_path,
                           env=environment(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: started.exists() and len(started.read_text().split()) == 2, 60,
                   message="both lines started on the far worker")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        for _ in range(3):
            looked = subprocess.run([*SHOAL, "file", "check", "--dry-run", "--json", str(jobs)],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                    env=environment())
            assert looked.returncode == 0, looked.stderr
            judged = json.loads(looked.stdout)
            assert judged["dead"] == [] and [ref["line"] for ref in judged["live"]] == [2, 3]
            time.sleep(1.0)
        assert far.poll() is None and not ledger.exists()  # the far copies still run
        assert states(jobs) == "rr"
    finally:
        os.killpg(far.pid, signal.SIGTERM)
        far.wait(timeout=30)
        stop_guards_in(tmp_path)  # each would hold its lines for the workers' whole hold


def stop_guards_in(directory: Path) -> None:
    """Kill the claims guards working in `directory` (the killed runner's, here)."""
    for entry in Path("/proc").iterdir():
        try:
            if b"shoal.runfile.guard" in (entry / "cmdline").read_bytes() \
                    and os.readlink(entry / "cwd") == str(directory):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_lines_runmaker4_holds_are_left_alone_and_listed(tmp_path: Path, peers: Path) -> None:
    jobs, ledger = tmp_path / "runs.txt", tmp_path / "ledger"
    gate = tmp_path / "gate"
    jobs.write_text(f"# shared by runmaker4 and shoal\n. while [ ! -e {gate} ]; do sleep 0.05; "
                    f"done; echo 1 >> {ledger}\n. echo 2 >> {ledger}\n")
    runmaker = peer(peers, "runmaker4.py", "-j1", str(jobs), cwd=tmp_path)
    try:
        wait_until(lambda: states(jobs)[0] == "r", 60, message="runmaker4 running line 2")
        code, _, err = finish(shoal("run", str(jobs), "-j", "2", cwd=tmp_path))
        assert code == 0, err
        assert "lines 2 were marked running by runmaker4" in err
        looked = subprocess.run([*SHOAL, "file", "check", str(jobs)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, env=environment())
        assert "1 lines marked running by runmaker4" in looked.stdout
        assert states(jobs) == "rd"
    finally:
        gate.touch()
        finish(runmaker)
    assert states(jobs) == "dd"
    assert Counter(ledger.read_text().split()) == Counter({"1": 1, "2": 1})


def test_runset4_and_runwait4_on_a_file_shoal_runs(tmp_path: Path, peers: Path) -> None:
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 30
    write_jobs(jobs, count, ledger, sleep=0.1)
    runner = shoal("run", str(jobs), "-j", "2", "--json", cwd=tmp_path)
    wait_until(lambda: "r" in states(jobs) or "d" in states(jobs), 60, message="a line taken")
    listed = peer(peers, "runset4.py", "--all", "--list", str(jobs), cwd=tmp_path)
    waited = peer(peers, "runwait4.py", "--progress", str(jobs), cwd=tmp_path)
    code, out, _ = finish(listed)
    assert code == 0 and len(out.splitlines()) == count
    assert finish(waited)[0] == 0
    assert finish(runner)[0] == 1  # jobs 7 and 23 fail
    check_once(jobs, ledger, count)
    # The file is the truth: reset by runset4, everything runs again (none skipped as done).
    assert finish(peer(peers, "runset4.py", "--all", "--set=.", str(jobs), cwd=tmp_path))[0] == 0
    ledger.unlink()
    code, out, err = finish(shoal("run", str(jobs), "-j", "2", "--json", cwd=tmp_path))
    assert json.loads(out)["total"] == count, err
    check_once(jobs, ledger, count)


def test_shoal_file_verbs_on_a_file_runmaker4_runs(tmp_path: Path, peers: Path) -> None:
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 30
    write_jobs(jobs, count, ledger, sleep=0.1)
    runmaker = peer(peers, "runmaker4.py", "-j2", str(jobs), cwd=tmp_path)
    wait_until(lambda: "r" in states(jobs) or "d" in states(jobs), 60, message="a line taken")
    listed = subprocess.run([*SHOAL, "file", "list", "--json", str(jobs)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=environment())
    assert listed.returncode == 0, listed.stderr
    assert [row["line"] for row in json.loads(listed.stdout)] == list(range(2, count + 2))
    waited = subprocess.run([*SHOAL, "file", "wait", "--progress", "-e", str(jobs)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env=environment())
    assert waited.returncode == 1  # -e: two lines failed
    assert waited.stdout.splitlines()[-1].startswith(f"progress: {count:3d} of {count:3d} jobs")
    finish(runmaker)
    check_once(jobs, ledger, count)
    reset = subprocess.run([*SHOAL, "file", "set", str(jobs), "--state", ".", "8", "24"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env=environment())
    assert reset.returncode == 0, reset.stderr
    assert states(jobs) == "".join("." if job in FAILING else "d" for job in range(1, 31))
    bad = subprocess.run([*SHOAL, "file", "set", str(jobs), "--state", ".", "99"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env=environment())
    assert (bad.returncode, bad.stderr.strip()) == (2, f"shoal: {jobs}:99: not a job line")


def test_runmaker4_options(tmp_path: Path) -> None:
    jobs, log = tmp_path / "runs.txt", tmp_path / "outputs"
    jobs.write_text(". echo one; echo oops >&2\n! echo two\n. exit 4\n. echo four\n")
    log.touch()
    code, out, err = finish(shoal("run", str(jobs), "-1", "--live", "-l", str(log), "-n", "2",
                                  cwd=tmp_path))
    assert code == 0, err
    assert states_of(jobs) == "d!.."  # -1: one job, the first that succeeds
    assert "executing `echo one; echo oops >&2'" in out
    assert "stdout (" in out and "): one" in out and "stderr (" in out and "): oops" in out
    assert 'exit 0 "echo one; echo oops >&2"' in out
    record = log.read_text().splitlines()
    assert len(record) == 3 and all(len(line) == 160 for line in record)
    assert record[0].startswith(".-> echo one; echo oops >&2 (in ")
    assert record[1].startswith("! stderr (") and record[2].startswith("+ status (")
    code, out, err = finish(shoal("run", str(jobs), "-j", "1", "-r", "--json", cwd=tmp_path))
    assert code == 1 and states_of(jobs) == "dd!d"  # -r: the `!` line ran again
    plain = tmp_path / "plain.txt"
    plain.write_text("echo hi\n")
    code, _, err = finish(shoal("run", str(plain), "-r", cwd=tmp_path))
    assert (code, err.strip()) == (2, f"shoal: -r: applies to runmaker files only ({plain} is "
                                      "not one)")


def states_of(path: Path) -> str:
    return "".join(line[0] for line in path.read_text().splitlines())


@pytest.fixture
def three_hosts() -> Iterator[Hosts]:
    with namespace_hosts(3) as hosts:
        yield hosts


def test_shoal_runs_on_several_hosts_share_one_directory(tmp_path: Path, three_hosts: Hosts,
                                                         peers: Path) -> None:
    """Three `shoal run` on three namespace hosts, and runmaker4 here, on one shared file."""
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 60
    write_jobs(jobs, count, ledger)
    names = three_hosts.names
    processes = [shoal("run", str(jobs), "-j", "2", "--json", cwd=tmp_path,
                       prefix=("ip", "netns", "exec", name)) for name in names]
    processes.append(peer(peers, "runmaker4.py", "-j2", str(jobs), cwd=tmp_path))
    for process in processes:
        finish(process)
    check_once(jobs, ledger, count)


def test_listen_lets_workers_on_other_hosts_take_lines(tmp_path: Path, three_hosts: Hosts,
                                                       peers: Path) -> None:
    hosts = three_hosts
    jobs, ledger, count = tmp_path / "runs.txt", tmp_path / "ledger", 24
    lines = ["# shared by runmaker4 and shoal"]
    for job in range(1, count + 1):
        fail = "; exit 3" if job in FAILING else ""
        where = "$(ip -o -4 addr show scope global | awk '{print $4}' | head -1)"
        lines.append(f". echo {job} {where} >> {ledger}; sleep 0.5{fail}")
    jobs.write_text("\n".join(lines) + "\n")
    address = hosts.server_address
    runner = shoal("run", str(jobs), "--listen", f"{address}:0", "--json", cwd=tmp_path)
    join_file = tmp_path / ".shoal" / "runs" / "runs.txt" / "join"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        join = wait_until(lambda: join_file.exists() and join_file.read_text().split()[-1],
                          60, message="the join line")
        assert "rrr" not in states(jobs)  # nothing runs before a worker joins
        for k in (0, 1):
            workers.append(hosts.worker(k, join, tmp_path / f"worker-{k}.log"))
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while runner.poll() is None and time.monotonic() < deadline:
            seen.update(states(jobs))
            if "r" in seen and "d" in seen:
                break
            time.sleep(0.05)
        runmaker = peer(peers, "runmaker4.py", "-j1", str(jobs), cwd=tmp_path)
        _, out, err = finish(runner)
        finish(runmaker)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    assert "r" in seen and "d" in seen  # states written as the remote jobs ran
    ran = Counter(line.split()[0] for line in ledger.read_text().splitlines())
    assert ran == Counter(str(job) for job in range(1, count + 1))
    places = {line.split()[1].split("/")[0] for line in ledger.read_text().splitlines()}
    assert {hosts.address(0), hosts.address(1)} & places
    assert states(jobs) == "".join("!" if job in FAILING else "d" for job in range(1, 25))
    summary = json.loads(out)
    assert summary["done"] + summary["failed"] == summary["total"] >= 1, err


def test_add_takes_only_a_runmaker_file_s_new_lines(tmp_path: Path, cluster: Cluster) -> None:
    jobs = tmp_path / "runs.txt"
    jobs.write_text(". echo new\nd echo done\n! echo failed\nr echo running\n. echo other\n")
    added = cluster.cli("add", "--json", "-f", str(jobs))
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["added"] == 2
    said = f"{jobs}: a runmaker file: adding its 2 new ('.') lines, leaving 3 others"
    assert said in added.stderr
    listed = json.loads(cluster.cli("jobs", "--json").stdout)
    assert sorted(job["cmd"] for job in listed["jobs"]) == ["echo new", "echo other"]


def test_one_only_with_listen_and_no_slots_is_refused(tmp_path: Path) -> None:
    jobs = tmp_path / "runs.txt"
    jobs.write_text("# one\n. echo a\n")
    code, _, err = finish(shoal("run", str(jobs), "-1", "--listen", "127.0.0.1:0",
                                cwd=tmp_path), timeout=60)
    assert code == 2
    assert err.strip() == "shoal: -1 with --listen needs -j N: N slots here, each stopping " \
        "after its first job that succeeds"
    assert states(jobs) == "."

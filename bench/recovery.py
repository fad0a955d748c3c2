"""Recovery time of the shoal server after a kill -9, with N jobs in its database.

A real `shoal server` and one real worker, as child processes sharing a temporary
$SHOAL_HOME. N jobs are added over the API and the worker runs a few thousand of them, so the
database also holds done jobs, attempts and outputs. Then, `--repeat` times, the server is
killed with SIGKILL while the worker is running jobs and started again on the same port; timed
from the restart until it answers the version probe, until its status counts all N jobs, and
until the worker is connected again. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import compile_shoal, replace_section
from throughput import machine

from shoal.trust import client_context

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "recovery.json"
DOCS = ROOT / "docs" / "reliability.md"
START, END = "<!-- recovery:start -->", "<!-- recovery:end -->"
SHOAL = [sys.executable, "-m", "shoal.cli.main"]
ADD_BATCH = 20_000
WORKER = "bench"
WORKER_CORES = 2
WARM_DONE = 2_000  # jobs the worker runs before the first kill
WARM_LIMIT_S = 120.0
BETWEEN_S = 2.0  # the worker runs jobs for this long between a recovery and the next kill
POLL_S = 0.01
WAIT_S = 300.0  # for anything to happen before giving up
START_ATTEMPTS = 5
RETRY_AFTER_S = 60.0  # a server that fails to start may be mid-edit: wait, then try again


class ServerDied(Exception):
    """The server process exited (or never answered) before it was up."""


@dataclass
class Recovery:
    """One kill -9 and restart; seconds from the restart."""

    version_s: float
    version_cpu_s: float  # CPU time of the server process until it answered
    status_s: float
    worker_s: float
    done_before_kill: int
    running_before_kill: int


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return value


class Cluster:
    """The server and the worker as child processes, each in its own session."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        for name in ("SHOAL_SERVER", "SHOAL_TOKEN"):
            self.env.pop(name, None)
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.http = httpx.Client(timeout=60)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.home / f"{name}.log", "ab") as log:
            return subprocess.Popen([*SHOAL, *args], env=self.env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def connection(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.home / "server.json").read_text()))
        except (OSError, ValueError):
            return {}

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.home / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    # ---- the server --------------------------------------------------------------------------

    def start_server(self, port: int) -> tuple[float, float, float]:
        """Start the server and wait for the version probe. Returns when it was spawned
        (perf_counter), seconds until it answered, and the CPU seconds it used until then
        (which other load on the machine does not inflate).

        A server that exits before answering is tried again after a pause, since its code may
        be in the middle of an edit."""
        for attempt in range(1, START_ATTEMPTS + 1):
            spawned = time.perf_counter()
            self.server = self.spawn("server", "server", "--port", str(port))
            try:
                answered = self._await_version(port) - spawned
                cpu = psutil.Process(self.server.pid).cpu_times()
                return spawned, answered, cpu.user + cpu.system
            except ServerDied as exc:
                self.stop_server(signal.SIGKILL)
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(f"the server did not start: {exc}") from None
                print(f"the server did not start ({exc}); trying again in {RETRY_AFTER_S:.0f} s",
                      file=sys.stderr, flush=True)
                time.sleep(RETRY_AFTER_S)
        raise AssertionError("unreachable")

    def _await_version(self, port: int) -> float:
        server = self.server
        assert server is not None
        deadline = time.monotonic() + WAIT_S
        while True:
            if server.poll() is not None:
                raise ServerDied(f"exit {server.returncode}: {self.log_tail('server')}")
            if time.monotonic() > deadline:
                raise ServerDied(f"no answer in {WAIT_S:.0f} s")
            if port == 0:  # the URL is known once the connection file names this process
                if self.connection().get("pid") != server.pid:
                    time.sleep(POLL_S)
                    continue
                self.url = str(self.connection()["url"])
                # The server's own CA, kept in its home across restarts.
                ca_pem = Path(self.connection()["ca_file"]).read_bytes()
                self.http = httpx.Client(timeout=60, verify=client_context(ca_pem))
            try:  # the socket listens before the state is loaded: this waits for the answer
                if self.http.get(f"{self.url}/api/v1/version").status_code == 200:
                    return time.perf_counter()
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)

    def stop_server(self, sig: signal.Signals) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            self.server.wait(timeout=30)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    # ---- the API -----------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self.connection()["admin_token"]
        response = self.http.request(method, f"{self.url}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {token}"}, **kwargs)
        response.raise_for_status()
        return response.json()

    def totals(self) -> dict[str, int]:
        return dict(self.api("GET", "/status")["totals"])

    def bench_worker(self) -> dict[str, Any] | None:
        for worker in self.api("GET", "/workers")["workers"]:
            if worker["name"] == WORKER and worker["connected"]:
                return dict(worker)
        return None

    # ---- the worker --------------------------------------------------------------------------

    def start_worker(self) -> None:
        self.worker = self.spawn("worker", "worker", "--name", WORKER, "--cores",
                                 str(WORKER_CORES))
        wait_until("the worker to connect", self.bench_worker)

    def stop(self) -> None:
        """SIGTERM (the worker then kills its jobs), SIGKILL of the whole session if need be."""
        self.http.close()
        for process in (self.worker, self.server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.worker, self.server):
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# --- measuring ------------------------------------------------------------------------------


def add_jobs(cluster: Cluster, jobs: int) -> float:
    """Add jobs `true 1` .. `true N` in batches; seconds taken."""
    batches = [[{"cmd": f"true {i}", "cwd": "/tmp"}
                for i in range(first, min(first + ADD_BATCH, jobs + 1))]
               for first in range(1, jobs + 1, ADD_BATCH)]
    begin = time.perf_counter()
    for batch in batches:
        added = cluster.api("POST", "/jobs", json={"jobs": batch})["added"]
        if added != len(batch):
            raise RuntimeError(f"add: {added} of {len(batch)} jobs were new")
    return time.perf_counter() - begin


def kill_and_recover(cluster: Cluster, jobs: int) -> Recovery:
    running = wait_until("the worker to be running jobs",
                         lambda: (w := cluster.bench_worker()) and w["running"])
    done = cluster.totals().get("done", 0)
    cluster.stop_server(signal.SIGKILL)
    spawned, answered, cpu = cluster.start_server(cluster.port)
    counted = wait_until(f"the status to count {jobs} jobs",
                         lambda: sum(cluster.totals().values()) == jobs and time.perf_counter())
    back = wait_until("the worker to reconnect",
                      lambda: cluster.bench_worker() and time.perf_counter())
    return Recovery(answered, cpu, counted - spawned, back - spawned, done, running)


def measure(cluster: Cluster, jobs: int, repeat: int) -> dict[str, Any]:
    _, empty_s, empty_cpu_s = cluster.start_server(0)
    add_seconds = add_jobs(cluster, jobs)
    print(f"added {jobs} jobs in {add_seconds:.2f} s", file=sys.stderr, flush=True)
    cluster.start_worker()
    warm = wait_until(f"{WARM_DONE} jobs to be done",
                      lambda: (d := cluster.totals().get("done", 0)) >= WARM_DONE and d,
                      timeout=WARM_LIMIT_S)
    print(f"the worker ran {warm} jobs", file=sys.stderr, flush=True)
    runs = []
    for i in range(repeat):
        if i:
            time.sleep(BETWEEN_S)
        runs.append(kill_and_recover(cluster, jobs))
        print(f"[{i + 1}/{repeat}] {runs[-1]}", file=sys.stderr, flush=True)
    totals = cluster.totals()
    db = cluster.home / "shoal.db"
    wal = db.with_name(db.name + "-wal")
    return {
        "empty_start_s": empty_s,
        "empty_start_cpu_s": empty_cpu_s,
        "add_seconds": add_seconds,
        "runs": runs,
        "totals_after": totals,
        "all_jobs_kept": sum(totals.values()) == jobs,
        "done_kept": totals.get("done", 0) >= runs[-1].done_before_kill,
        "db_bytes": db.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }


# --- reporting ------------------------------------------------------------------------------


def seconds(runs: list[Recovery], key: str) -> list[float]:
    return [float(getattr(run, key)) for run in runs]


def report(result: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    n, runs = args.jobs, result["runs"]
    totals = result["totals_after"]
    kept = sum(totals.values())
    states = ", ".join(f"{count} {state}" for state, count in sorted(totals.items()))
    rows = [
        ("the version probe answers (`GET /api/v1/version`, no token)", "version_s"),
        ("(the CPU time the server used until it answered)", "version_cpu_s"),
        (f"the status counts all {n} jobs (`GET /api/v1/status`)", "status_s"),
        ("the worker is connected again (`GET /api/v1/workers`)", "worker_s"),
    ]
    done = sorted(r.done_before_kill for r in runs)
    span = str(done[0]) if done[0] == done[-1] else f"{done[0]} to {done[-1]}"
    lines = [
        f"{n} jobs in the database, {span} of them done by one worker of {WORKER_CORES} "
        "cores when the server was killed (SIGKILL, with the worker running jobs); "
        f"{len(runs)} kill(s) and restart(s) on the same port.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| from restarting the server until | median | max |",
        "|---|---:|---:|",
        *(f"| {label} | {statistics.median(seconds(runs, key)):.2f} s | "
          f"{max(seconds(runs, key)):.2f} s |" for label, key in rows),
        "",
        f"Adding the {n} jobs over the API, in batches of {ADD_BATCH}: "
        f"{n / result['add_seconds']:.0f} jobs/s ({result['add_seconds']:.2f} s).",
        "",
        f"Database after the last recovery: {result['db_bytes'] / 1e6:.1f} MB, plus "
        f"{result['wal_bytes'] / 1e6:.1f} MB of write-ahead log.",
        "",
        f"Check after the last recovery: {kept} of {n} jobs "
        f"({'nothing lost' if result['all_jobs_kept'] else 'JOBS LOST'}; {states}); "
        + ("no done job went back."
           if result["done_kept"] else "FEWER DONE JOBS THAN BEFORE THE KILL."),
        "",
        f"A new server on an empty database answers after {result['empty_start_s']:.2f} s, "
        f"{result['empty_start_cpu_s']:.2f} s of CPU: the cost of starting the process, "
        "the rest is loading the database. On a shared machine the CPU time is the steadier "
        "figure.",
        "",
        "The worker retries its connection with a growing, jittered delay (0.2 s, doubling up "
        "to 10 s), so its figure includes waiting for its next attempt after the server is up.",
    ]
    return "\n".join(lines) + "\n"


DOC_SECTION = f"""## Recovery time

{START}
{END}
"""

DOC_INTRO = """\
`bench/recovery.py` starts a real server and one worker, adds the jobs over the API, lets the
worker run a few thousand so the database also holds done jobs, attempts and outputs, then
kills the server with SIGKILL while the worker is running jobs and starts it again on the same
port, several times. Each restart is timed until the server answers, until its status counts
every job (the whole queue is loaded back from SQLite), and until the worker has reconnected
and can be given work again. Reproduce with:

```
.venv/bin/python bench/recovery.py --jobs 100000 --repeat 3 --write-docs
```

"""


def write_docs(text: str) -> None:
    replace_section(DOCS, START, END, DOC_INTRO + text, scaffold=DOC_SECTION)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="kills and restarts (default 3)")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.name}")
    args = parser.parse_args()
    compile_shoal()
    if args.jobs < WARM_DONE or args.repeat < 1:
        parser.error(f"--jobs must be at least {WARM_DONE} and --repeat at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            result = measure(cluster, args.jobs, args.repeat)
        finally:
            cluster.stop()
    wanted = ("date", "cpus", "cpu model", "os", "python", "shoal")
    facts = {k: v for k, v in machine().items() if k in wanted}
    text = report(result, facts, args)
    print(text, end="")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs: list[Recovery] = result["runs"]
    summary = {key: {"median": statistics.median(seconds(runs, key)),
                     "max": max(seconds(runs, key))}
               for key in ("version_s", "version_cpu_s", "status_s", "worker_s")}
    RESULTS.write_text(json.dumps({
        "params": {"jobs": args.jobs, "repeat": args.repeat, "add_batch": ADD_BATCH,
                   "worker_cores": WORKER_CORES},
        "machine": facts,
        **result,
        "runs": [asdict(r) for r in runs],
        "add_jobs_per_s": args.jobs / result["add_seconds"],
        "recovery": summary,
    }, indent=2) + "\n")
    if args.write_docs:
        write_docs(text)
    return 0 if result["all_jobs_kept"] and result["done_kept"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Start skew of ensembles: how far apart N components on N hosts really start.

N network-namespace hosts on a bridge, each running a real `shoal worker` (h0..h{N-1}), and a
real `shoal server` on the bridge. Each run is an ensemble of N components `true`, one per
host, started either synchronized (shoal's way: released at one instant) or sequentially
(NetJobs' way: "start" sent to each in turn); the two are interleaved run by run. The spread
of a run is the time between the earliest and the latest real start, each stamped by the
component's own process as it passed the start line. Needs root. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from common import compile_shoal, replace_section
from throughput import machine

from shoal.trust import client_context

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.hosts import Hosts  # noqa: E402 - the namespace hosts of the integration tests

RESULTS = ROOT / "bench" / "results" / "start_skew.json"
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- start-skew:start -->", "<!-- start-skew:end -->"
SHOAL = [sys.executable, "-m", "shoal.cli.main"]
MODES = ("synchronized", "sequential")
FINAL = ("done", "failed", "abandoned", "cancelled")
WARMUP = 1  # runs of each mode before the measured ones, not counted
RUN_TIMEOUT_S = 60.0
WAIT_S = 60.0  # for the server to answer and the workers to connect
RETRY_AFTER_S = 120.0  # a run that fails may meet code being changed: start again later
PATIENCE_S = 2400.0  # ... for this long in all, then give up
TARGET_S = 0.001


class RunFailed(Exception):
    """A run did not end `done`, or did not report what is measured."""


@dataclass
class Run:
    components: int
    mode: str
    index: int  # 1-based; 0 and below are warm-up runs
    run_id: int
    spread_s: float  # stages[0].spread_seconds: the orchestrator's figure
    stamp_spread_s: float  # the same from the raw stamps: one kernel clock for all hosts here
    start_skew_s: list[float | None]  # each component's start minus the release instant
    offset_s: list[float]  # each host's estimated clock offset; the true one is 0 here


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


class Testbed:
    """N namespace hosts, a server on the bridge and one worker per host."""

    def __init__(self, count: int, home: Path):
        self.count = count
        self.home = home
        self.hosts = Hosts(count)
        self.env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        for name in ("SHOAL_SERVER", "SHOAL_TOKEN"):
            self.env.pop(name, None)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(timeout=30)
        self.url = ""

    def connection(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.home / "server.json").read_text()))
        except (OSError, ValueError):
            return {}

    def start(self) -> None:
        """Start the server and the workers (the hosts stay up across restarts)."""
        with open(self.home / "server.log", "ab") as log:
            server = subprocess.Popen(
                [*SHOAL, "server", "--host", self.hosts.server_address, "--port", "0"],
                env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.processes.append(server)
        wait_until("the server's connection file",
                   lambda: server.poll() is not None or self.connection().get("pid") == server.pid)
        if server.poll() is not None:
            raise RuntimeError(f"the server exited {server.returncode}: {self.tail('server')}")
        self.url = str(self.connection()["url"])
        self.http = httpx.Client(timeout=30, verify=client_context(
            Path(self.connection()["ca_file"]).read_bytes()))
        wait_until("the server to answer", self.answers)
        join = (self.home / "join").read_text().strip().removeprefix("shoal worker --join ")
        for k in range(self.count):
            self.processes.append(
                self.hosts.worker(k, join, self.home / f"h{k}.log", env=self.env))
        wait_until(f"{self.count} workers to connect", lambda: self.connected() == self.count)

    def answers(self) -> bool:
        try:
            return self.http.get(f"{self.url}/api/v1/version").status_code == 200
        except httpx.TransportError:
            return False

    def connected(self) -> int:
        return sum(1 for w in self.api("GET", "/workers")["workers"] if w["connected"])

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self.connection()["admin_token"]
        response = self.http.request(method, f"{self.url}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if response.is_error:
            raise RunFailed(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def tail(self, name: str, lines: int = 5) -> str:
        path = self.home / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM to every process, SIGKILL to its session if it lingers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


@contextmanager
def testbed(count: int) -> Iterator[Testbed]:
    with tempfile.TemporaryDirectory(prefix="bench-skew-") as tmp:
        bed = Testbed(count, Path(tmp))
        try:
            bed.hosts.up()
            bed.start()
            yield bed
        finally:
            bed.stop()
            bed.http.close()
            bed.hosts.down()


# --- measuring ------------------------------------------------------------------------------


def run_once(bed: Testbed, mode: str, index: int) -> Run:
    n = bed.count
    components = [{"name": f"c{k}", "host": f"h{k}", "command": "true"} for k in range(n)]
    body = {"ensemble": {"name": f"skew-{n}", "components": components}, "start": mode}
    snap = bed.api("POST", "/ensembles", json=body)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while snap["state"] not in FINAL:
        if time.monotonic() > deadline:
            bed.api("POST", f"/ensembles/{snap['run_id']}/cancel")
            raise RunFailed(f"run {snap['run_id']} still {snap['state']} after "
                            f"{RUN_TIMEOUT_S:.0f} s; log: {snap['log'][-3:]}")
        snap = bed.api("GET", f"/ensembles/{snap['run_id']}",
                       params={"wait": 10, "since": snap["version"]})
    spread = snap["stages"][0].get("spread_seconds") if snap["stages"] else None
    if snap["state"] != "done" or spread is None:
        states = [(c["name"], c["state"], c["fail_reason"]) for c in snap["components"]]
        raise RunFailed(f"run {snap['run_id']} ended {snap['state']} (spread {spread}); "
                        f"log: {snap['log'][-5:]}; components: {states}")
    stamps = [float(bed.api("GET", f"/jobs/{c['job_id']}")["started_at"])
              for c in snap["components"]]
    offsets = [stamp - c["started_at"] for stamp, c in zip(stamps, snap["components"],
                                                           strict=True)]
    return Run(n, mode, index, snap["run_id"], float(spread), max(stamps) - min(stamps),
               [c["start_skew_seconds"] for c in snap["components"]], offsets)


def measure(count: int, runs: int) -> tuple[list[Run], list[str]]:
    """Warm-up, then `runs` runs of each mode, interleaved. A failing run is retried after
    RETRY_AFTER_S with the server and workers started again, for PATIENCE_S in all."""
    done: list[Run] = []
    failures: list[str] = []
    waited, restart = 0.0, False
    with testbed(count) as bed:
        for index in range(1 - WARMUP, runs + 1):
            for mode in MODES:
                while True:
                    label = f"[{count} components, {mode}, run {index}/{runs}]"
                    try:
                        if restart:
                            bed.start()
                            restart = False
                        done.append(run_once(bed, mode, index))
                        last = done[-1]
                        print(f"{label} spread {last.spread_s * 1e6:.0f} µs "
                              f"(stamps {last.stamp_spread_s * 1e6:.0f} µs)",
                              file=sys.stderr, flush=True)
                        break
                    except (RunFailed, RuntimeError, httpx.HTTPError) as exc:
                        logs = {name: bed.tail(name) for name in ("server", "h0")}
                        failures.append(f"{label} {exc}; logs: {logs}")
                        print(f"{label} FAILED: {exc}\n{logs}", file=sys.stderr, flush=True)
                        if waited >= PATIENCE_S:
                            raise RuntimeError(f"giving up after {len(failures)} failures: "
                                               f"{failures[-1]}") from exc
                        bed.stop()
                        time.sleep(RETRY_AFTER_S)
                        waited += RETRY_AFTER_S
                        restart = True
    return [r for r in done if r.index >= 1], failures


# --- reporting ------------------------------------------------------------------------------


def realtime_allowed() -> bool:
    """Whether this process may use SCHED_FIFO, which the workers use at the start line."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def figures(runs: list[Run], count: int, mode: str) -> dict[str, float]:
    mine = [r for r in runs if r.components == count and r.mode == mode]
    spreads, stamps = [r.spread_s for r in mine], [r.stamp_spread_s for r in mine]
    return {"runs": len(mine),
            "median_s": statistics.median(spreads), "worst_s": max(spreads),
            "stamp_median_s": statistics.median(stamps), "stamp_worst_s": max(stamps)}


def offset_errors(runs: list[Run], count: int) -> dict[str, float]:
    """How far the offset estimates were from the true offset, 0 (one kernel clock here)."""
    errors = [abs(o) for r in runs if r.components == count for o in r.offset_s]
    return {"median_s": statistics.median(errors), "worst_s": max(errors)}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


DOC_INTRO = """\
`bench/start_skew.py` makes N network-namespace hosts on a bridge, each running a real
`shoal worker`, with a real server on the bridge, and runs an ensemble of N components `true`,
one per host, over and over. The **spread** of a run is the time between the earliest and the
latest real start of its components. The real start is the instant a component's own process
passed the start line, stamped by that process with bash's `$EPOCHREALTIME` (not the instant
its worker meant to let it go).

Each run is made with shoal's synchronized start (each host is told one instant, converted into
its own clock) and, interleaved with it in the same invocation, with a sequential start like
NetJobs' (`"start": "sequential"`: "start" is sent to each host in turn, the next one once the
previous one has started). Two figures are given for each:

- **reported by shoal**: the run's `stages[0].spread_seconds`, from the stamps converted into
  the server's clock with each host's offset, estimated just before the release. An error in a
  host's estimate moves its release instant and the correction of its stamp alike, so it cancels
  out here: this figure is how precisely each host starts at the instant it was given, with the
  wake-up and scheduling of the held processes.
- **on the shared clock**: the raw stamps compared directly. All namespace hosts share one
  kernel clock, so this is the true spread, offset errors included; the true offsets are zero,
  and the error of the estimates is given below the table. Between machines with their own
  clocks only the first figure can be measured.

The machine has two cores and runs the server and N workers besides the components, so the
hosts' releases compete for the CPUs in a way separate machines' would not. Reproduce with
(root is needed for the namespaces):

```
sudo .venv/bin/python bench/start_skew.py --components 8,16 --runs 20 --write-docs
```

"""


def report(runs: list[Run], failures: list[str], facts: dict[str, str],
           args: argparse.Namespace) -> str:
    lines = [
        f"{args.runs} runs of each start for each number of components, interleaved, after "
        f"{WARMUP} warm-up run of each (not counted); one component per host.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| components | start | reported by shoal: median | worst "
        "| on the shared clock: median | worst | sequential / synchronized (median, worst) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    verdicts, offsets = [], []
    for count in args.components:
        sync = figures(runs, count, "synchronized")
        for mode in MODES:
            f = figures(runs, count, mode)
            vs = (f"{f['median_s'] / sync['median_s']:.0f}x, {f['worst_s'] / sync['worst_s']:.0f}x"
                  if mode != "synchronized" else "")
            lines.append(f"| {count} | {mode} | {us(f['median_s'])} | {us(f['worst_s'])} "
                         f"| {us(f['stamp_median_s'])} | {us(f['stamp_worst_s'])} | {vs} |")
        verdicts.append(f"{count} components: {'met' if sync['worst_s'] < TARGET_S else 'not met'}"
                        f" ({us(sync['worst_s'])} reported, {us(sync['stamp_worst_s'])} on the "
                        "shared clock)")
        err = offset_errors(runs, count)
        offsets.append(f"{count} hosts: median {us(err['median_s'])}, "
                       f"worst {us(err['worst_s'])}")
    lines += [
        "",
        f"Aim, a worst synchronized spread under {TARGET_S * 1e3:.0f} ms: "
        + "; ".join(verdicts) + ".",
        "",
        "Error of the hosts' clock offset estimates (the true offsets are zero): "
        + "; ".join(offsets) + ".",
    ]
    if failures:
        lines += ["", f"{len(failures)} run(s) failed and were retried; see "
                  f"`bench/results/{RESULTS.name}`."]
    return "\n".join(lines) + "\n"


def write_docs(text: str) -> None:
    replace_section(DOCS, START, END, DOC_INTRO + text,
                    scaffold=f"## Start skew of ensembles\n\n{START}\n{END}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", default="8,16",
                        help="comma-separated numbers of components (default 8,16)")
    parser.add_argument("--runs", type=int, default=20, help="runs per mode (default 20)")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.name}")
    args = parser.parse_args()
    compile_shoal()
    try:
        args.components = [int(n) for n in args.components.split(",") if n.strip()]
    except ValueError:
        parser.error("--components takes numbers, such as 8,16")
    if not args.components or min(args.components) < 2 or max(args.components) > 200 \
            or args.runs < 1:
        parser.error("--components must be between 2 and 200, --runs at least 1")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("start_skew.py needs root and the `ip` tool: it makes network namespaces "
              "(run it with sudo)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the hosts are removed

    runs: list[Run] = []
    failures: list[str] = []
    load_before = os.getloadavg()[0]
    for count in args.components:
        measured, failed = measure(count, args.runs)
        runs += measured
        failures += failed
    wanted = ("date", "cpus", "cpu model", "os", "python", "shoal")
    facts = {k: v for k, v in machine().items() if k in wanted}
    facts["real-time priority"] = "available" if realtime_allowed() else "not available"
    facts["load average"] = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    text = report(runs, failures, facts, args)
    print(text, end="")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {str(n): {**{mode: figures(runs, n, mode) for mode in MODES},
                        "offset_error": offset_errors(runs, n)} for n in args.components}
    RESULTS.write_text(json.dumps({
        "params": {"components": args.components, "runs": args.runs, "warmup": WARMUP},
        "machine": facts,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
        "failures": failures,
    }, indent=2, ensure_ascii=False) + "\n")
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of trivial jobs: shoal against xargs, GNU parallel and HyperQueue.

Every runner executes N jobs `bash -c 'true I'` (I = 1..N: distinct commands, as they were
when shoal ran identical lines once; each line is a job of its own now), P at a time, on this
machine. All runners are measured in the
same invocation, interleaved, each `--repeat` times; the median is reported.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import compile_shoal, replace_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "throughput.json"
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- throughput:start -->", "<!-- throughput:end -->"
RUNNERS = ("xargs", "floor", "parallel", "hyperqueue", "shoal", "runmaker")
TIMEOUT_S = 1800


class Unavailable(Exception):
    """The runner cannot be measured on this machine; the message says why."""


@dataclass
class Series:
    """Repeated timings of one runner (one row of the table)."""

    runner: str
    timed: str
    seconds: list[float] = field(default_factory=list)
    note: str = ""
    in_table: bool = True

    def rates(self, jobs: int) -> list[float]:
        return [jobs / s for s in self.seconds]

    def median(self, jobs: int) -> float | None:
        return statistics.median(self.rates(jobs)) if self.seconds else None


# --- runners --------------------------------------------------------------------------------
# Each takes (jobs, parallel) and returns {row name: seconds}; most return a single row.


def run_xargs(jobs: int, parallel: int) -> dict[str, float]:
    script = f"seq {jobs} | xargs -P{parallel} -I{{}} bash -c 'true {{}}'"
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True, timeout=TIMEOUT_S)
    return {"xargs": time.perf_counter() - start}


def run_floor(jobs: int, parallel: int) -> dict[str, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / "spawn_floor.py"), str(jobs),
                    str(parallel)], check=True, timeout=TIMEOUT_S)
    return {"floor": time.perf_counter() - start}


def run_parallel(jobs: int, parallel: int) -> dict[str, float]:
    if shutil.which("parallel") is None:
        raise Unavailable("GNU parallel is not on PATH")
    script = f"seq {jobs} | parallel --will-cite -j{parallel} \"bash -c 'true {{}}'\""
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True, timeout=TIMEOUT_S)
    return {"parallel": time.perf_counter() - start}


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null (HyperQueue prints from native code)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_hyperqueue(jobs: int, parallel: int) -> dict[str, float]:
    try:
        from hyperqueue import Job, LocalCluster
        from hyperqueue.cluster import WorkerConfig
    except ImportError as exc:
        raise Unavailable(f"hyperqueue is not importable ({exc})") from exc
    with tempfile.TemporaryDirectory(prefix="bench-hq-") as tmp, silenced():
        workdir = Path(tmp, "work")
        workdir.mkdir()
        begin = time.perf_counter()
        cluster = LocalCluster(server_dir=str(Path(tmp, "server")))  # a str: Path is rejected
        try:
            cluster.start_worker(WorkerConfig(cores=parallel))
            client = cluster.client()
            job = Job(default_workdir=workdir)  # task stdout/stderr files land here
            for i in range(1, jobs + 1):
                job.program(["bash", "-c", f"true {i}"])
            submit_wall, submit = time.time(), time.perf_counter()
            client.wait_for_jobs([client.submit(job)])
            done = time.perf_counter()
        finally:
            cluster.stop()
        # wait_for_jobs polls about once a second; the newest task output file shows when
        # the last task actually started, which bounds how much of that is polling slack.
        last_output = max(p.stat().st_mtime for p in workdir.iterdir()) - submit_wall
    return {
        "hyperqueue": done - submit,
        "hyperqueue-total": done - begin,
        "hyperqueue-last-task": last_output,
    }


def shoal_path() -> Path:
    return Path(sys.executable).parent / "shoal"


def shoal_once(jobs: int, parallel: int, prefix: str = "") -> tuple[float, float]:
    """Seconds end to end, and shoal's own `wall_seconds`; checks that all jobs ran.

    `prefix` starts every line: ". " makes the file a runmaker file (the file is the queue,
    each line claimed in it before it runs)."""
    exe = shoal_path()
    if not os.access(exe, os.X_OK):
        raise Unavailable(f"{exe} is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-shoal-") as tmp:
        jobfile = Path(tmp, "jobs.txt")
        jobfile.write_text("".join(f"{prefix}true {i}\n" for i in range(1, jobs + 1)))
        env = {k: v for k, v in os.environ.items() if k != "SHOAL_HOME"}  # state beside FILE
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [str(exe), "run", str(jobfile), "-j", str(parallel), "--json"],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"`shoal run` did not finish in {TIMEOUT_S} s") from exc
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise Unavailable(f"`shoal run` exited {proc.returncode}: {tail}")
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise Unavailable(f"`shoal run --json` printed no JSON summary ({exc})") from exc
    if summary.get("done") != jobs:
        raise Unavailable(f"`shoal run` ran {summary.get('done')} of {jobs} jobs")
    return elapsed, float(summary["wall_seconds"])


def run_shoal(jobs: int, parallel: int) -> dict[str, float]:
    before = cpu_seconds_of_children()
    elapsed, internal = shoal_once(jobs, parallel)
    return {"shoal": elapsed, "shoal-internal": internal,
            "shoal-cpu": cpu_seconds_of_children() - before}


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_runmaker(jobs: int, parallel: int) -> dict[str, float]:
    before = cpu_seconds_of_children()
    elapsed, _ = shoal_once(jobs, parallel, prefix=". ")
    return {"runmaker": elapsed, "runmaker-cpu": cpu_seconds_of_children() - before}


RUN: dict[str, Callable[[int, int], dict[str, float]]] = {
    "xargs": run_xargs,
    "floor": run_floor,
    "parallel": run_parallel,
    "hyperqueue": run_hyperqueue,
    "shoal": run_shoal,
    "runmaker": run_runmaker,
}


def rows(parallel: int) -> dict[str, Series]:
    p = parallel
    return {
        "xargs": Series("xargs", f"`seq N | xargs -P{p} -I{{}} bash -c 'true {{}}'`"),
        "floor": Series("Python's floor", "`bench/spawn_floor.py`: an asyncio loop that only "
                        "spawns and reaps, recording nothing; Python's start-up included"),
        "parallel": Series("GNU parallel", f"`seq N | parallel -j{p} \"bash -c 'true {{}}'\"`"),
        "hyperqueue": Series("HyperQueue", f"submit → `wait_for_jobs` returns, {p} cores"),
        "hyperqueue-total": Series(
            "HyperQueue + start-up", "cluster and worker start → `wait_for_jobs` returns"
        ),
        "hyperqueue-last-task": Series(
            "HyperQueue last task", "submit → last task output file written", in_table=False
        ),
        "shoal": Series(
            "shoal", f"`shoal run FILE -j {p} --json` end to end, process start-up included"
        ),
        "shoal-internal": Series(
            "shoal, own clock", "`wall_seconds` of shoal's JSON summary", in_table=False
        ),
        "shoal-cpu": Series("shoal, CPU", "CPU seconds of shoal and its jobs", in_table=False),
        "runmaker": Series(
            "shoal, runmaker file",
            f"`shoal run FILE -j {p} --json`, FILE's lines `. true I`: each claimed in the file",
        ),
        "runmaker-cpu": Series("shoal, runmaker file, CPU", "CPU seconds of shoal and its jobs",
                               in_table=False),
    }


# --- measuring and reporting ----------------------------------------------------------------


def measure(only: list[str], jobs: int, parallel: int, repeat: int) -> dict[str, Series]:
    table = rows(parallel)
    skipped: dict[str, str] = {}
    if "shoal" in only:  # a one-job probe, so a broken install is reported, not timed
        try:
            shoal_once(1, 1)
        except Unavailable as exc:
            skipped["shoal"] = str(exc)
    for i in range(repeat):  # interleaved, so drifting background load hits every runner
        for name in only:
            if name in skipped:
                continue
            print(f"[{i + 1}/{repeat}] {name} ...", file=sys.stderr, flush=True)
            try:
                for key, seconds in RUN[name](jobs, parallel).items():
                    table[key].seconds.append(seconds)
            except Unavailable as exc:
                skipped[name] = str(exc)
    for name, why in skipped.items():
        for key, series in table.items():
            if key.split("-")[0] == name:
                series.note = f"not available: {why}"
                series.seconds.clear()
    return table


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("hyperqueue", "shoal"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hyperqueue": versions["hyperqueue"],
        "shoal": versions["shoal"],
    }


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the markdown table cell


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(table: dict[str, Series], facts: dict[str, str], args: argparse.Namespace) -> str:
    n = args.jobs
    xargs = table["xargs"].median(n)
    lines = [
        f"{n} jobs `bash -c 'true I'` (I = 1..{n}), {args.parallel} at a time, "
        f"median of {args.repeat} interleaved runs.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| runner | what is timed | jobs/s (median) | min..max | vs xargs |",
        "|---|---|---:|---:|---:|",
    ]
    for key, s in table.items():
        if not s.in_table or key.split("-")[0] not in args.only:
            continue
        med = s.median(n)
        if med is None:
            lines.append(f"| {s.runner} | {cell(s.note or 'not run')} | - | - | - |")
            continue
        rates = s.rates(n)
        spread, vs_xargs = f"{min(rates):.0f}..{max(rates):.0f}", ratio(med, xargs)
        lines.append(f"| {s.runner} | {cell(s.timed)} | {med:.0f} | {spread} | {vs_xargs} |")
    shoal = table["shoal"].median(n)
    floor = table["floor"].median(n)
    if shoal and floor:
        lines += [
            "",
            f"shoal / Python's floor: {ratio(shoal, floor)}; Python's floor / xargs: "
            f"{ratio(floor, xargs)}. The floor is what a Python loop pays to start and reap "
            "the same processes; shoal's recording, output and bookkeeping are the rest.",
        ]
    hq, hq_total = table["hyperqueue"].median(n), table["hyperqueue-total"].median(n)
    lines += [
        "",
        f"shoal / HyperQueue: {ratio(shoal, hq)} (HyperQueue from submit), "
        f"{ratio(shoal, hq_total)} (HyperQueue including its start-up). "
        "Above 1x means shoal is faster.",
    ]
    runmaker = table["runmaker"].median(n)
    if shoal and runmaker:
        cpu = {key: statistics.median(table[key].seconds)
               for key in ("shoal-cpu", "runmaker-cpu") if table[key].seconds}
        by_cpu = (f"; by CPU time, which the load of other processes moves less, "
                  f"{cpu['shoal-cpu'] / cpu['runmaker-cpu']:.2f}x ({cpu['runmaker-cpu']:.2f} s "
                  f"against {cpu['shoal-cpu']:.2f} s)" if len(cpu) == 2 else "")
        lines += [
            "",
            f"shoal on a runmaker file / on a plain-lines file: {ratio(runmaker, shoal)} "
            f"by jobs per second{by_cpu}. The same jobs; each line of the runmaker file is "
            "claimed by compare-and-set of its state byte before it runs, and set to `d` after.",
        ]
    secs = {k: statistics.median(s.seconds) for k, s in table.items() if s.seconds}
    if "hyperqueue-last-task" in secs:
        lines += [
            "",
            "HyperQueue's `wait_for_jobs` polls about once a second, so its figure includes up "
            f"to a second of waiting: its last task started {secs['hyperqueue-last-task']:.2f} s "
            f"after submit (median), against {secs['hyperqueue']:.2f} s until it returned.",
        ]
    if "shoal-internal" in secs:
        lines += [
            "",
            f"shoal's own summary reports {secs['shoal-internal']:.2f} s (median) of the "
            f"{secs['shoal']:.2f} s measured end to end; the difference is process start-up "
            "and shut-down.",
        ]
    return "\n".join(lines) + "\n"


DOC_INTRO = f"""# Performance

## Throughput of trivial jobs

`bench/throughput.py` runs the same jobs, `bash -c 'true 1'` to `bash -c 'true 5000'`, two at
a time, through `shoal run`, `xargs -P`, GNU parallel (when installed) and a local HyperQueue
cluster, and reports jobs per second. The jobs do nothing, so the figure is the per-job
overhead of each runner: spawning, bookkeeping and, for shoal, recording every job's state in
`.shoal/`. `xargs` only forks and waits, so it is the ceiling for spawning a `bash -c` per job.
shoal is timed as a whole command, `shoal run FILE -j 2 --json`, including its start-up;
HyperQueue from submitting the job, and separately including the start of its cluster.
See `bench/README.md` for the details of each runner.

Reproduce with `make bench`, or directly:

```
.venv/bin/python bench/throughput.py --jobs 5000 --repeat 3 --write-docs
```

The figures below were measured on a shared two-core virtual machine whose speed varies from
minute to minute. Absolute jobs/s are therefore only indicative; what carries over to another
machine are the ratios, which compare runners measured in the same invocation, interleaved,
under the same load. Re-run the command above to get figures for your machine.

{START}
{END}
"""


def write_docs(text: str) -> None:
    if not DOCS.exists():
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(DOC_INTRO)
    replace_section(DOCS, START, END, text, scaffold=f"{START}\n{END}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--parallel", type=int, default=2, help="jobs at a time (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per runner (default 3)")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.name}")
    parser.add_argument("--only", default=",".join(RUNNERS), help="comma-separated runners")
    args = parser.parse_args()
    compile_shoal()
    args.only = [r.strip() for r in args.only.split(",") if r.strip()]
    if unknown := set(args.only) - set(RUNNERS):
        parser.error(f"unknown runner(s): {', '.join(sorted(unknown))}")

    table = measure(args.only, args.jobs, args.parallel, args.repeat)
    facts = machine()
    text = report(table, facts, args)
    print(text, end="")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    params = {k: getattr(args, k) for k in ("jobs", "parallel", "repeat", "only")}
    series = {k: asdict(s) | {"jobs_per_s": s.median(args.jobs)} for k, s in table.items()}
    result = {"params": params, "machine": facts, "series": series}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scheduling rate of the shoal server, without executing anything.

A real `Service` over a real SQLite `Store` in a temporary directory, in one process and one
event loop, with N simulated workers that acknowledge every assignment at once: each `Assign`
is answered by a `Started` and a `Finished` (exit 0) for every job in it, delivered back on the
next turn of the loop. No process is spawned, so what is timed is the server: placing jobs,
the state changes, the commits to SQLite and the messages. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import replace_section
from throughput import DOCS, cell, machine

from shoal.core.models import JobSpec, JobState
from shoal.core.protocol import (
    PROTOCOL_VERSION,
    Assign,
    AttemptResult,
    Captured,
    Finished,
    Register,
    Resources,
    Started,
    StartedItem,
    ToWorker,
)
from shoal.core.states import Transition
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scheduling.json"
START, END = "<!-- scheduling:start -->", "<!-- scheduling:end -->"
ADD_BATCH = 10_000
WORKER_MEMORY_BYTES = 64 * 1024**3
STALL_S = 60.0
TARGET_JOBS_PER_S = 20_000
TARGET_SETTING = (100_000, 16)  # jobs, workers

# HyperQueue's published figure. Its zero-worker mode needs a build with that feature, which
# the PyPI package is not, so this is quoted, not measured.
HQ_CLAIM = "Overhead per task is around 0.1 ms"
HQ_SOURCE = "https://github.com/It4innovations/hyperqueue/blob/main/docs/README.md"
HQ_EXPERIMENT = ("https://github.com/It4innovations/hyperqueue/blob/main/benchmarks/"
                 "experiment-per-task-overhead.py")
HQ_IMPLIED_JOBS_PER_S = 1 / 0.1e-3


_SILENT = Captured()  # what a job that wrote nothing reports


class SimulatedWorker:
    """A worker link that reports every assigned job started and finished, without running it."""

    def __init__(self, service: Service, seconds: list[float]):
        self.service = service
        self.seconds = seconds  # shared by all simulated workers: time spent building replies
        self.worker_id = 0  # known once `join` returns; no Assign arrives before that
        self.loop = asyncio.get_running_loop()

    def send(self, message: ToWorker) -> None:
        if not isinstance(message, Assign):
            return  # Welcome, Ack, Kill: nothing to do
        begin = time.perf_counter()
        # Built as shoal's own in-process worker builds its reports (`trusted`: the values are
        # its own, not checked field by field); a worker over the network builds them in its
        # own process, and the server pays for decoding them instead.
        started = Started.trusted(items=[
            StartedItem.trusted(job_id=a.job_id, lease_id=a.lease_id, pid=0, started_at=0.0)
            for a in message.items])
        finished = Finished.trusted(items=[
            AttemptResult.trusted(job_id=a.job_id, lease_id=a.lease_id, outcome="exited",
                                  exit_code=0, signal=None, pid=0, started_at=0.0,
                                  ended_at=0.0, wall_seconds=0.0, cpu_seconds=0.0,
                                  peak_rss_bytes=0, stdout=_SILENT, stderr=_SILENT, error=None)
            for a in message.items])
        self.loop.call_soon(self.service.deliver, self.worker_id, started)
        self.loop.call_soon(self.service.deliver, self.worker_id, finished)
        self.seconds[0] += time.perf_counter() - begin

    def close(self, reason: str) -> None:
        pass


@dataclass
class Run:
    """One measured run."""

    add_seconds: float
    schedule_seconds: float
    schedule_cpu_seconds: float  # CPU time of this process over the same span
    worker_seconds: float  # of schedule_seconds, spent building the simulated replies
    commits: int  # store transactions from the join until the last job was done


def count_calls(store: Store, name: str, counter: list[int]) -> None:
    """Wrap a store method so each call (one transaction) bumps counter[0]."""
    method: Callable[..., None] = getattr(store, name)

    def counted(*args: Any, **kwargs: Any) -> None:
        counter[0] += 1
        method(*args, **kwargs)

    setattr(store, name, counted)


async def run_once(jobs: int, workers: int, cores: int, window: int | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-scheduling-") as tmp:
        store = Store(Path(tmp) / "shoal.db")
        commits = [0]
        count_calls(store, "commit_tick", commits)
        service = Service(store, ReactorConfig() if window is None
                          else ReactorConfig(queue_window=window))
        await service.start()
        done = 0
        all_done = asyncio.Event()

        def follow(transitions: list[Transition]) -> None:
            nonlocal done
            done += sum(1 for t in transitions if t.to_state is JobState.DONE)
            if done >= jobs:
                all_done.set()

        service.listeners.append(follow)
        specs = [JobSpec(cmd=f"true {i}", cwd="/tmp") for i in range(1, jobs + 1)]
        begin = time.perf_counter()
        for first in range(0, jobs, ADD_BATCH):
            batch = specs[first:first + ADD_BATCH]
            if service.add(batch)["added"] != len(batch):
                raise RuntimeError("add: some jobs were not new")
        add_seconds = time.perf_counter() - begin

        commits[0] = 0
        worker_seconds = [0.0]
        begin, begin_cpu = time.perf_counter(), time.process_time()
        for index in range(workers):
            link = SimulatedWorker(service, worker_seconds)
            register = Register(protocol_version=PROTOCOL_VERSION, name=f"sim-{index}",
                                host="bench", instance_secret=secrets.token_hex(16),
                                resources=Resources(
                                    cores=cores, memory_bytes=WORKER_MEMORY_BYTES))
            link.worker_id = service.join(register, link)
        while not all_done.is_set():  # fail, rather than hang, if the server stops moving
            before = done
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_done.wait(), STALL_S)
            if done == before and not all_done.is_set():
                totals = service.status()["totals"]
                await service.stop()
                raise RuntimeError(f"no job finished in {STALL_S:.0f} s: {done} of {jobs} "
                                   f"done, states {totals}")
        run = Run(add_seconds, time.perf_counter() - begin, time.process_time() - begin_cpu,
                  worker_seconds[0], commits[0])
        await service.stop()
    return run


# --- reporting -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(runs: list[Run], facts: dict[str, str], args: argparse.Namespace) -> str:
    n = args.jobs
    rates = [n / r.schedule_seconds for r in runs]
    adds = [n / r.add_seconds for r in runs]
    server = [n / (r.schedule_seconds - r.worker_seconds) for r in runs]
    cpu_share = [r.schedule_cpu_seconds / r.schedule_seconds for r in runs]
    per_cpu = [n / r.schedule_cpu_seconds for r in runs]
    commits = median([r.commits for r in runs])
    rate = median(rates)
    slots = args.workers * args.cores
    if (n, args.workers) == TARGET_SETTING:
        verdict = "met" if rate >= TARGET_JOBS_PER_S else "not met"
    else:
        verdict = "not comparable (this run used other parameters)"
    lines = [
        f"{n} jobs, {args.workers} simulated workers of {args.cores} cores ({slots} jobs at a "
        f"time), median of {args.repeat} runs. Workers acknowledge every assignment at once "
        "(started, then finished with exit 0) without spawning anything.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| what is timed | rate (median) | min..max |",
        "|---|---:|---:|",
        f"| add, in batches of {ADD_BATCH} (each batch one fsynced transaction) | "
        f"{median(adds):.0f} jobs/s | {min(adds):.0f}..{max(adds):.0f} |",
        f"| workers join → every job done (assign, started, finished, all committed) | "
        f"{rate:.0f} jobs/s | {min(rates):.0f}..{max(rates):.0f} |",
        "",
        f"Scheduling took {median([r.schedule_seconds for r in runs]):.2f} s (median), "
        f"{1e6 / rate:.0f} µs per job, in {commits:.0f} transactions "
        f"({n / commits:.0f} jobs per transaction). Of that, the simulated workers spent "
        f"{median([r.worker_seconds for r in runs]):.2f} s building their replies; without "
        f"it the server alone ran at {median(server):.0f} jobs/s.",
        "",
        f"The process had the CPU for {100 * median(cpu_share):.0f} % of that time (median); "
        "on a shared machine the rest went to other work. Per second of CPU time the rate "
        f"was {median(per_cpu):.0f} jobs/s, roughly what the server would reach with a core "
        "of this machine to itself.",
        "",
        f"shoal's target is {TARGET_JOBS_PER_S} jobs/s for {TARGET_SETTING[0]} jobs over "
        f"{TARGET_SETTING[1]} workers: {verdict}.",
        "",
        f"HyperQueue, published figure, not measured here: \"{cell(HQ_CLAIM)}\" "
        f"([its documentation]({HQ_SOURCE})), about {HQ_IMPLIED_JOBS_PER_S:.0f} jobs/s if "
        "that overhead is paid one job after another. No setting (machine, workers, task "
        "count) is given with it. HyperQueue's benchmark suite measures tasks per second in "
        f"its zero-worker mode ([experiment]({HQ_EXPERIMENT})), but no result of it was found "
        "published. shoal's rate above / that figure: "
        f"{rate / HQ_IMPLIED_JOBS_PER_S:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


DOC_SECTION = f"""## Scheduling rate

`bench/scheduling.py` measures how many jobs per second the server can schedule when running
them costs nothing: a real server (its reactor, scheduler and SQLite store, every state change
committed) with simulated workers in the same process that report each job they are given as
started and finished at once. It is the ceiling the server puts on throughput, whatever the
workers do; the figures above, with real processes, are bounded by spawning them. The
WebSocket and its JSON codec are not included. HyperQueue is not run: its zero-worker mode
needs a build with that feature, which the PyPI package is not, so its published figure is
quoted instead and labelled as such.

```
.venv/bin/python bench/scheduling.py --jobs 100000 --workers 16 --cores 8 --write-docs
```

The figures below come from the same shared two-core virtual machine as those above, so they
vary from run to run; the min..max column shows by how much.

{START}
{END}
"""


def write_docs(text: str) -> None:
    replace_section(DOCS, START, END, text, scaffold=DOC_SECTION)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per run (default 100000)")
    parser.add_argument("--workers", type=int, default=16, help="simulated workers (default 16)")
    parser.add_argument("--cores", type=int, default=8, help="cores per worker (default 8)")
    parser.add_argument("--queue-window", type=int, default=None,
                        help="queued jobs the server holds in memory (default: the server's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.name}")
    args = parser.parse_args()
    if min(args.jobs, args.workers, args.cores, args.repeat) < 1:
        parser.error("--jobs, --workers, --cores and --repeat must be at least 1")

    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    runs = []
    for i in range(args.repeat):
        print(f"[{i + 1}/{args.repeat}] scheduling {args.jobs} jobs ...", file=sys.stderr,
              flush=True)
        runs.append(asyncio.run(run_once(args.jobs, args.workers, args.cores,
                                         args.queue_window)))
    loads = f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    facts = machine() | {"load average": loads}
    text = report(runs, facts, args)
    print(text, end="")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    params = {k: getattr(args, k) for k in ("jobs", "workers", "cores", "repeat")}
    result = {
        "params": params,
        "machine": facts,
        "runs": [asdict(r) for r in runs],
        "jobs_per_s": median([args.jobs / r.schedule_seconds for r in runs]),
        "adds_per_s": median([args.jobs / r.add_seconds for r in runs]),
        "hyperqueue_published": {"claim": HQ_CLAIM, "source": HQ_SOURCE,
                                 "implied_jobs_per_s": HQ_IMPLIED_JOBS_PER_S},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

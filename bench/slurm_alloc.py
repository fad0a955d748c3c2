"""Time from queued demand to the first job running in a Slurm allocation, on a real
one-node Slurm (munged, slurmctld, slurmd started as the tests start them).

Per round, interleaved:

- shoal's allocation queue: a queue exists, no worker; a job is added; timed until the job
  has started (its `started_at`, taken by the worker) in the allocation the server submitted;
- the peer, by hand: a job is queued with no worker, and `sbatch` of a script that starts a
  `shoal worker` (what one writes without allocation queues) is timed the same way;
- the floor: `sbatch --wrap` of a script that only writes the time it started, i.e. Slurm
  alone, with no worker to start.

HyperQueue's autoalloc would be the natural peer, but its `hq` command is not installable
here (the `hyperqueue` package on PyPI is its Python API, without autoalloc).
Needs root and Debian's slurmctld, slurmd, slurm-client and munge. Reproduce with
`.venv/bin/python bench/slurm_alloc.py --rounds 5 --write-docs`.
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

from shoal.provision.engine import shoal_executable, write_private  # noqa: E402
from tests.integration.cluster import Cluster, wait_until  # noqa: E402
from tests.integration.slurm import Slurm  # noqa: E402

DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- slurm-alloc:start -->", "<!-- slurm-alloc:end -->"
LABELS = {"shoal": "`shoal alloc` queue: job added → running in the allocation it submitted",
          "by hand": "by hand: `sbatch` of a `shoal worker` script → the queued job running",
          "slurm": "Slurm alone: `sbatch --wrap` → the script running (the floor)"}


def started_after(cluster: Cluster, job_id: int, began: float) -> float:
    job = wait_until(lambda: (j := cluster.job(job_id))["started_at"] and j, timeout=300,
                     interval=0.02, message=f"job {job_id} to start")
    return float(job["started_at"]) - began


def add_job(cluster: Cluster, command: str) -> tuple[int, float]:
    began = time.time()
    answer = cluster.api("POST", "/jobs", json={"jobs": [{"cmd": command, "cwd": "/tmp"}]})
    return int(answer["ids"][0]), began


def wait_idle(cluster: Cluster, slurm: Slurm) -> None:
    """Outside the timing: the round's workers gone, Slurm's node free again."""
    wait_until(lambda: not any(w["connected"] for w in cluster.api("GET", "/workers")["workers"]),
               timeout=120, interval=0.2, message="the round's workers to leave")
    wait_until(lambda: not [s for _, s in slurm.squeue() if s in ("RUNNING", "PENDING",
                                                                  "COMPLETING")],
               timeout=120, interval=0.2, message="Slurm's jobs to end")


def run(rounds: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-slurm-"))
    slurm = Slurm(work / "slurm")
    times: dict[str, list[float]] = {label: [] for label in LABELS}
    try:
        slurm.start()
        (work / "logs").mkdir()
        cluster = Cluster(work / "home", work / "logs")
        cluster.env.update(slurm.env)
        cluster.start_server()
        try:
            added = cluster.cli("alloc", "add", "slurm", "--name", "bench", "--max-workers", "1",
                                "--time-limit", "30m", "--idle-timeout", "2s")
            assert added.returncode == 0, added.stderr
            for round_ in range(rounds):
                job_id, began = add_job(cluster, f"true shoal {round_}")
                times["shoal"].append(started_after(cluster, job_id, began))
                wait_idle(cluster, slurm)

                assert cluster.cli("alloc", "pause", "bench").returncode == 0
                times["by hand"].append(by_hand(cluster, slurm, work, round_))
                wait_idle(cluster, slurm)
                assert cluster.cli("alloc", "resume", "bench").returncode == 0

                times["slurm"].append(slurm_alone(slurm, work, round_))
                wait_idle(cluster, slurm)
        finally:
            cluster.stop()
    finally:
        slurm.stop()
        shutil.rmtree(work, ignore_errors=True)
    return times


def by_hand(cluster: Cluster, slurm: Slurm, work: Path, round_: int) -> float:
    join = work / f"join-{round_}"
    write_private(join, cluster.join + "\n")
    worker = shlex.join([*shoal_executable(), "worker", "--join-file", str(join),
                         "--exit-when-idle", "2"])
    script = work / f"worker-{round_}.sh"
    script.write_text(f"#!/bin/bash\nexec {worker}\n")
    job_id, _ = add_job(cluster, f"true by hand {round_}")
    began = time.time()
    subprocess.run(["sbatch", "--parsable", f"--output={work}/hand-{round_}.out",
                    f"--chdir={work}", str(script)], check=True, capture_output=True,
                   env={**os.environ, **slurm.env}, timeout=60)
    return started_after(cluster, job_id, began)


def slurm_alone(slurm: Slurm, work: Path, round_: int) -> float:
    mark = work / f"started-{round_}"
    began = time.time()
    subprocess.run(["sbatch", "--parsable", f"--output={work}/wrap-{round_}.out",
                    f"--chdir={work}", f"--wrap=date +%s.%N > {mark}"], check=True,
                   capture_output=True, env={**os.environ, **slurm.env}, timeout=60)
    wait_until(lambda: mark.exists() and mark.read_text().strip(), timeout=300, interval=0.02,
               message="the wrapped script to run")
    return float(mark.read_text()) - began


def report(times: dict[str, list[float]], rounds: int) -> str:
    info = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\nMeasured {now} on {os.cpu_count()} CPUs ({info['cpu model']}), Python "
             f"{info['python']}; a one-node Slurm 22.05 on the same machine "
             "(SchedulerParameters=sched_interval=1), medians of "
             f"{rounds} interleaved rounds (min-max in brackets).\n",
             "| how | queued demand → first job running |", "|---|---|"]
    for label, values in times.items():
        lines.append(f"| {LABELS[label]} | {seconds_cell(values)} |")
    extra = statistics.median(times["shoal"]) - statistics.median(times["by hand"])
    lines.append(f"\nThe queue's own share, against submitting the worker by hand: {extra:+.2f} s "
                 "(within the rounds' spread: it hears of queued jobs through the server's "
                 "events, not its 2 s timer). The rest is Slurm starting the batch job, and "
                 "the worker starting and joining.\n")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    compile_shoal()
    times = run(args.rounds)
    body = report(times, args.rounds)
    print(body)
    if args.write_docs:
        replace_section(DOCS, START, END, body, scaffold=f"## Workers through Slurm\n\n"
                        f"{START}\n{END}\n")


if __name__ == "__main__":
    main()

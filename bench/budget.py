"""The per-job budget: how much work a runner may do for each job and still reach a ratio of
xargs, and how much shoal does.

Python's floor (bench/spawn_floor.py: an asyncio loop that only spawns and reaps) is run with
W microseconds of CPU spent on each job, for several W, beside xargs and `shoal run` on the
same jobs (N `bash -c 'true I'`, P at a time), interleaved. From the floor's rate at each W:

- the W at which the floor falls to the target ratio of xargs (0.8x by default): the work a
  job may cost a runner that starts as fast as the floor (a one-job floor, timed here too);
- the same for a runner with shoal's start-up (a one-job `shoal run`, timed here too): the
  jobs must then run faster, to make up for the start-up;
- the W at which the floor is as slow as shoal: shoal's whole overhead, start-up included,
  as work per job.

With --helpers, the floor is also run with its spawns off the loop (`spawn_floor.py
--helpers`: a helper process per slot starts and reaps the jobs, the loop only does the W of
each), to see how much work that arrangement allows; with --launcher, with its spawns in
shoal's native launcher, as `shoal run` starts its jobs (`spawn_floor.py --launcher`).

    python bench/budget.py                         # 3000 jobs, 2 at a time, 3 repeats
    python bench/budget.py --work 0,100,200,400 --helpers --launcher --write-docs
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import compile_shoal, replace_section
from throughput import TIMEOUT_S, Unavailable, machine, run_xargs, shoal_once, shoal_path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- budget:start -->", "<!-- budget:end -->"


# The floor with its spawns off the loop: spawn_floor.py's flag -> the row's words.
OFF_LOOP = {"helpers": "the floor's spawns in a helper per slot",
            "launcher": "the floor's spawns in shoal's native launcher"}


def floor_seconds(jobs: int, parallel: int, work_us: float, mode: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / "spawn_floor.py"), str(jobs),
                    str(parallel), str(work_us), *([f"--{mode}"] if mode else [])],
                   check=True, timeout=TIMEOUT_S)
    return time.perf_counter() - start


def shoal_start_seconds() -> float:
    """A one-job `shoal run` end to end: its start-up and shut-down, with one `true`."""
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        jobfile = Path(tmp, "one.txt")
        jobfile.write_text("true\n")
        start = time.perf_counter()
        subprocess.run([str(shoal_path()), "run", str(jobfile), "-j", "1", "--json"],
                       cwd=tmp, check=True, capture_output=True, timeout=TIMEOUT_S)
        return time.perf_counter() - start


def work_at(rate: float, curve: Sequence[tuple[float, float]]) -> str:
    """The work per job (µs) at which the floor runs at `rate`, read off the measured
    (work, rate) points by straight lines between neighbours; a bound if outside them."""
    if rate >= curve[0][1]:
        return f"under {curve[0][0]:.0f}"
    for (w0, r0), (w1, r1) in itertools.pairwise(curve):
        if r1 <= rate <= r0:
            return f"{w0 + (r0 - rate) / (r0 - r1) * (w1 - w0):.0f}" if r0 != r1 else f"{w0:.0f}"
    return f"over {curve[-1][0]:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per run (default 3000)")
    parser.add_argument("--parallel", type=int, default=2, help="jobs at a time (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--work", default="0,50,100,200,300,400,600",
                        help="µs of CPU per job for the floor, comma-separated")
    parser.add_argument("--target", type=float, default=0.8, help="ratio to xargs (0.8)")
    parser.add_argument("--helpers", action="store_true",
                        help="also time the floor with a spawning helper process per slot")
    parser.add_argument("--launcher", action="store_true",
                        help="also time the floor with its spawns in shoal's native launcher")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.name}")
    args = parser.parse_args()
    try:
        work = sorted({float(w) for w in args.work.split(",") if w.strip()})
    except ValueError:
        parser.error(f"--work: not a list of numbers: {args.work}")
    if not work or work[0] < 0:
        parser.error("--work: give at least one number, none negative")
    compile_shoal()
    n, p = args.jobs, args.parallel
    xargs: list[float] = []
    shoal: list[float] = []
    start_up: list[float] = []
    floor_start: list[float] = []
    floor: dict[float, list[float]] = {w: [] for w in work}
    modes = [mode for mode in OFF_LOOP if getattr(args, mode)]
    helped: dict[str, dict[float, list[float]]] = {mode: {w: [] for w in work} for mode in modes}
    try:
        shoal_once(1, 1)  # a broken install is reported, not timed
    except Unavailable as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    for i in range(args.repeat):  # interleaved: a slow spell of the machine hits every row
        print(f"[{i + 1}/{args.repeat}]", file=sys.stderr, flush=True)
        xargs.append(run_xargs(n, p)["xargs"])
        for w in work:
            floor[w].append(floor_seconds(n, p, w))
            for mode in modes:
                helped[mode][w].append(floor_seconds(n, p, w, mode))
        shoal.append(shoal_once(n, p)[0])
        start_up.append(shoal_start_seconds())
        floor_start.append(floor_seconds(1, 1, 0))
    text = report(args, xargs, shoal, start_up, floor_start, floor, helped)
    print(text)
    if args.write_docs:
        replace_section(DOCS, START, END, text, scaffold=f"{START}\n{END}\n")
    return 0


def report(args: argparse.Namespace, xargs: list[float], shoal: list[float],
           start_up: list[float], floor_start_up: list[float],
           floor: dict[float, list[float]],
           helped: dict[str, dict[float, list[float]]]) -> str:
    n, target = args.jobs, args.target
    xargs_rate = n / statistics.median(xargs)
    floor_start = statistics.median(floor_start_up)
    curve = [(w, n / statistics.median(seconds)) for w, seconds in floor.items()]
    shoal_rate = n / statistics.median(shoal)
    shoal_start = statistics.median(start_up)
    wanted = target * xargs_rate
    # With shoal's start-up, the floor (whose own start-up is in its rates) must take no more
    # than N / wanted seconds less the start-up shoal has beyond the floor's.
    budget_s = n / wanted - shoal_start + floor_start
    wanted_after_start = n / budget_s if budget_s > 0 else float("inf")
    facts = machine()
    lines = [
        f"{n} jobs `bash -c 'true I'`, {args.parallel} at a time, median of {args.repeat} "
        "interleaved runs of each row.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items() if k != "hyperqueue")
        + ".",
        "",
        "| runner | jobs/s (median) | vs xargs |",
        "|---|---:|---:|",
        f"| xargs | {xargs_rate:.0f} | 1.00x |",
    ]
    for w, rate in curve:
        lines.append(f"| Python's floor + {w:.0f} µs of CPU a job | {rate:.0f} | "
                     f"{rate / xargs_rate:.2f}x |")
    curves = {mode: [(w, n / statistics.median(seconds)) for w, seconds in times.items()]
              for mode, times in helped.items()}
    for mode, mode_curve in curves.items():
        for w, rate in mode_curve:
            lines.append(f"| {OFF_LOOP[mode]}, + {w:.0f} µs a job | "
                         f"{rate:.0f} | {rate / xargs_rate:.2f}x |")
    lines += [
        f"| shoal | {shoal_rate:.0f} | {shoal_rate / xargs_rate:.2f}x |",
        "",
        f"- {target:.1f}x of xargs is {wanted:.0f} jobs/s. A runner that starts as fast as "
        f"the floor may spend **{work_at(wanted, curve)} µs** of CPU a job beyond the floor's "
        "own.",
        f"- shoal's start-up and shut-down (a one-job `shoal run`, median): "
        f"{shoal_start:.2f} s, against {floor_start:.2f} s for the floor's. With it, the "
        f"jobs must run at {wanted_after_start:.0f} jobs/s, which leaves "
        f"**{work_at(wanted_after_start, curve)} µs** a job.",
        f"- shoal runs as fast as the floor with **{work_at(shoal_rate, curve)} µs** a job "
        "(its start-up counted in that work).",
    ]
    for mode, mode_curve in curves.items():
        where = OFF_LOOP[mode].removeprefix("the floor's ")
        lines.append(
            f"- With {where}, {target:.1f}x leaves "
            f"**{work_at(wanted, mode_curve)} µs** a job on the loop, "
            f"**{work_at(wanted_after_start, mode_curve)} µs** with shoal's start-up.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

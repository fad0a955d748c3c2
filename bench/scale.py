"""A million jobs: adds, listings, restarts and history, with time and memory, beside
HyperQueue in the same run where the two compare (a submit of as many tasks).

    .venv/bin/python bench/scale.py [--size 1000000] [--write-docs]

Each figure is one measurement on a shared machine: the load average is written beside it.
History is made by marking the added jobs done in the database (a stopped server's), which is
what a server holds after running them, without waiting for a million processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compile_shoal, replace_section

ROOT = Path(__file__).resolve().parent.parent
SHOAL = [sys.executable, "-m", "shoal.cli.main"]
MiB = 1 << 20
HQ_JOB_TASKS = 100_000


class PeakMemory:
    """The largest resident size a process (with its children) reaches while watched."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(self.pid)
            while not self._stop.is_set():
                try:
                    rss = process.memory_info().rss + sum(
                        child.memory_info().rss for child in process.children(recursive=True))
                except psutil.Error:
                    return
                self.peak = max(self.peak, rss)
                time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Server:
    def __init__(self, home: Path):
        self.home = home
        self.env = {**os.environ, "SHOAL_HOME": str(home)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; seconds until it answers."""
        began = time.perf_counter()
        self.process = subprocess.Popen([*SHOAL, "server", "--port", "0"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError("the server exited")
            time.sleep(0.02)
        return time.perf_counter() - began

    def _connection(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.home / "server.json").read_text())
        except (OSError, ValueError):
            return None
        return data if self.process and data.get("pid") == self.process.pid else None

    def _answers(self) -> bool:
        connection = self._connection()
        if connection is None:
            return False
        try:
            return self.get("/version", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        connection = self._connection()
        assert connection is not None
        return httpx.get(f"{connection['url']}/api/v1{path}", verify=connection["ca_file"],
                         headers={"Authorization": f"Bearer {connection['admin_token']}"},
                         timeout=kwargs.pop("timeout", 600), **kwargs)

    def rss(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)


def cli(server: Server, *args: str) -> tuple[float, int, subprocess.CompletedProcess[bytes]]:
    began = time.perf_counter()
    process = subprocess.Popen([*SHOAL, *args], env=server.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    peak = PeakMemory(process.pid)
    out, err = process.communicate()
    elapsed = time.perf_counter() - began
    return elapsed, peak.stop(), subprocess.CompletedProcess(args, process.returncode, out, err)


def first_line_of_listing(server: Server) -> tuple[float, float, int]:
    """`shoal jobs`: seconds to its first job line, to its end, and its peak memory."""
    began = time.perf_counter()
    process = subprocess.Popen([*SHOAL, "jobs"], env=server.env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    peak = PeakMemory(process.pid)
    assert process.stdout is not None
    process.stdout.readline()  # the header
    process.stdout.readline()
    first = time.perf_counter() - began
    for _ in process.stdout:
        pass
    process.wait()
    return first, time.perf_counter() - began, peak.stop()


@contextlib.contextmanager
def a_server(tmp: Path) -> Iterator[Server]:
    server = Server(tmp / "home")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def measure_shoal(size: int, tmp: Path) -> dict[str, str]:
    figures: dict[str, str] = {}
    lines = tmp / "jobs.txt"
    lines.write_text("".join(f"echo {i}\n" for i in range(size)))
    with a_server(tmp) as server:
        assert server.process is not None
        server_peak = PeakMemory(server.process.pid)
        took, cli_peak, result = cli(server, "add", "-f", str(lines), "--cwd", "/tmp")
        if result.returncode != 0:
            figures["add -f"] = f"failed: {result.stderr.decode().strip()[:120]}"
        else:
            figures["add -f"] = (f"{took:.1f} s; server {server_peak.stop() / MiB:.0f} MB "
                                 f"at its peak, {server.rss() / MiB:.0f} MB after; "
                                 f"CLI {cli_peak / MiB:.0f} MB")
        first, whole, peak = first_line_of_listing(server)
        figures["shoal jobs"] = (f"first line after {first:.2f} s, all {size:,} after "
                                 f"{whole:.1f} s; CLI {peak / MiB:.0f} MB")
        began = time.perf_counter()
        page = server.get("/jobs", params={"limit": 100_000})
        figures["GET /jobs?limit=100000"] = (
            f"{time.perf_counter() - began:.2f} s ({len(page.json()['jobs']):,} jobs)")
        server.stop()
        answered = server.start()
        figures[f"restart with {size:,} queued"] = (
            f"API answers after {answered:.1f} s; RSS {server.rss() / MiB:.0f} MB")
        server.stop()
        # Closed before the server starts: a connection left open keeps SQLite's log beside
        # the file, and the server's clean stop would then not seal it.
        with contextlib.closing(sqlite3.connect(server.home / "shoal.db")) as db, db:
            db.execute("UPDATE jobs SET state = 'done', ended_at = 1.0, exit_code = 0")
        unsealed = server.start()  # changed behind its back: checked and counted
        server.stop()
        answered = server.start()  # as its clean stop sealed it
        time.sleep(1.0)
        figures[f"{size:,} done jobs in history"] = (
            f"API answers after {answered:.1f} s; RSS {server.rss() / MiB:.0f} MB (after a "
            f"change made behind the server's back, which a start must check: {unsealed:.1f} s)")
    return figures


def measure_array(tasks: int, tmp: Path) -> dict[str, str]:
    """`shoal add --array 1-TASKS`: one record, whatever its size."""
    with a_server(tmp / "array") as server:
        took, _, result = cli(server, "add", "--array", f"1-{tasks}", "--cwd", "/tmp",
                              "--limit", "hold:0", "echo {}")
        if result.returncode != 0:
            return {f"add --array 1-{tasks}": f"failed: {result.stderr.decode().strip()[:120]}"}
        return {f"add --array 1-{tasks}": f"{took:.2f} s (the CLI's start included); server "
                                          f"{server.rss() / MiB:.0f} MB after"}


def measure_run(size: int, tmp: Path) -> dict[str, str]:
    """`shoal run FILE`: seconds to its first job, and the memory of shoal's own processes
    (the run and its keeper; not the jobs, nor a child between fork and exec, whose size is
    the run's own counted twice)."""
    work = tmp / "run"
    work.mkdir()
    first = work / "first"
    (work / "jobs.txt").write_text(f"date +%s.%N > {first}\n" +
                                   "".join(f"true {i}\n" for i in range(size - 1)))
    began = time.time()
    process = subprocess.Popen([*SHOAL, "run", "jobs.txt", "-j", "2", "--quiet"], cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HOME": str(work)})
    peak, started = 0, None
    try:
        watched = psutil.Process(process.pid)
        while time.time() - began < 120 and process.poll() is None:
            with contextlib.suppress(psutil.Error):
                own = [watched, *(child for child in watched.children(recursive=True)
                                  if "shoal.worker.keeper" in child.cmdline())]
                peak = max(peak, sum(p.memory_info().rss for p in own))
            if started is None and first.exists() and first.stat().st_size:
                started = float(first.read_text()) - began
            if started is not None and time.time() - began > started + 5:
                break  # the first job and a few seconds of running: its peak is past
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    when = f"{started:.1f} s" if started is not None else "none within 120 s"
    return {f"shoal run of a {size:,}-line file": f"first job after {when}; shoal's own "
                                                  f"processes {peak / MiB:.0f} MB at most"}


def measure_hyperqueue(size: int, tmp: Path) -> dict[str, str]:
    try:
        from hyperqueue import Job, LocalCluster
    except ImportError as exc:
        return {"submit": f"not measured: hyperqueue is not importable ({exc})"}
    before = psutil.Process().memory_info().rss
    cluster = LocalCluster(server_dir=str(tmp / "hq"))  # its server runs in this process
    try:
        client = cluster.client()
        # One job of a million tasks is refused ("Serialization failed: SizeLimit"): submit
        # jobs of HQ_JOB_TASKS tasks each, as a user of its Python API has to.
        jobs = []
        for start in range(0, size, HQ_JOB_TASKS):
            job = Job(default_workdir=tmp)
            for i in range(start, min(size, start + HQ_JOB_TASKS)):
                job.program(["bash", "-c", f"true {i}"])
            jobs.append(job)
        began = time.perf_counter()
        for job in jobs:
            client.submit(job)
        took = time.perf_counter() - began
        grown = psutil.Process().memory_info().rss - before
        return {"submit": f"{took:.1f} s through its Python API, {len(jobs)} job(s) of at most "
                          f"{HQ_JOB_TASKS:,} tasks (no worker); its server and the jobs in the "
                          f"client grew this process by {grown / MiB:.0f} MB"}
    except Exception as exc:  # the peer's failure is a figure too
        return {"submit": f"failed: {str(exc)[:160]}"}
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()


def report(size: int, shoal: dict[str, str], hq: dict[str, str]) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    rows = [f"| `{what}` | {figure} |" for what, figure in shoal.items()]
    return (
        f"{size:,} jobs, one run of `bench/scale.py --size {size}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {load} "
        "(other work was running).\n\n| shoal | measured |\n|---|---|\n" + "\n".join(rows) +
        f"\n| HyperQueue, {size:,} tasks | {hq['submit']} |\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--no-hyperqueue", action="store_true")
    args = parser.parse_args()
    compile_shoal()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        shoal = measure_shoal(args.size, Path(tmp))
        shoal.update(measure_array(10 * args.size, Path(tmp)))
        shoal.update(measure_run(args.size, Path(tmp)))
    hq = {"submit": "not measured"}
    if not args.no_hyperqueue:
        with tempfile.TemporaryDirectory(prefix="bench-scale-hq-") as tmp:
            hq = measure_hyperqueue(args.size, Path(tmp))
    body = report(args.size, shoal, hq)
    print(body)
    if args.write_docs:
        replace_section(ROOT / "docs" / "performance.md", "<!-- scale:start -->",
                        "<!-- scale:end -->", body,
                        scaffold="## At scale\n\n<!-- scale:start -->\n<!-- scale:end -->\n")


if __name__ == "__main__":
    main()

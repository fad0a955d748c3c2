"""A `Cluster` that faults can be done to: a server restarted on its port, workers started with
any options (or inside a network namespace), signals, and the bookkeeping the checks need."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.cluster import SHOAL, Cluster, wait_until
from tests.ports import free_port

from .ledger import LedgerReport, check_ledger, ledger_command

FINAL = frozenset({"done", "failed", "cancelled"})


class FaultCluster(Cluster):
    """A server on a fixed port (so it can come back where its workers look for it)."""

    def __init__(self, home: Path, log_dir: Path, ledger: Path):
        super().__init__(home, log_dir)
        self.ledger = ledger
        self.server_args: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0

    # ---- the server ----------------------------------------------------------------------

    def start_server(self, *args: str) -> None:
        """Start on `self.host:self.port` (a fixed port, chosen once) with `args`, kept for
        restarts."""
        if not self.port:
            self.port = free_port(self.host)
        self.server_args = list(args)
        super().start_server(*args, "--host", self.host, "--port", str(self.port))

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def restart_server(self, workers: int) -> tuple[float, float]:
        """Start the server again; seconds until its API answered and until `workers`
        workers were connected again, counted from now."""
        began = time.monotonic()
        self.start_server(*self.server_args)
        answered = time.monotonic() - began
        wait_until(lambda: len(self.connected_workers()) >= workers, timeout=60, interval=0.02,
                   message=f"{workers} workers to reconnect")
        return answered, time.monotonic() - began

    # ---- workers -------------------------------------------------------------------------

    def spawn_worker(self, name: str, *args: str, prefix: tuple[str, ...] = (),
                     wait: bool = True) -> subprocess.Popen[bytes]:
        """`shoal worker --name NAME ARGS`, run under `prefix` (e.g. ip netns exec NS)."""
        log = open(self.log_dir / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([*prefix, *SHOAL, "worker", "--name", name, *args],
                                   env=self.env, stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        self.workers[name] = process
        if wait:
            wait_until(lambda: process.poll() is not None or name in self.connected_workers(),
                       message=f"worker {name} to connect")
            assert process.poll() is None, self.log(f"worker-{name}")
        return process

    def connected_workers(self) -> set[str]:
        try:
            listed = self.api("GET", "/workers")["workers"]
        except Exception:
            return set()
        return {w["name"] for w in listed if w["connected"]}

    def signal_worker(self, name: str, signal_number: int) -> None:
        """Signal the worker process itself, not its jobs (they have sessions of their own)."""
        os.kill(self.workers[name].pid, signal_number)

    # ---- jobs ----------------------------------------------------------------------------

    def add_ledger_jobs(self, works: list[str], **options: Any) -> list[int]:
        """One job per shell snippet, each recording itself in the ledger."""
        tag = self.ledger.parent.name
        specs = [{"cmd": ledger_command(self.ledger, work, f"{tag}-{index}"), "cwd": "/tmp",
                  **options} for index, work in enumerate(works)]
        ids: list[int] = []
        for first in range(0, len(specs), 1000):
            ids += self.api("POST", "/jobs", json={"jobs": specs[first:first + 1000]})["ids"]
        assert len(set(ids)) == len(specs)
        return ids

    def jobs(self) -> dict[int, dict[str, Any]]:
        listed = self.api("GET", "/jobs", params={"limit": 100_000})["jobs"]
        return {job["id"]: job for job in listed}

    def wait_final(self, ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
        """Wait until every job in `ids` is done, failed or cancelled."""
        wanted = set(ids)

        def all_final() -> dict[int, dict[str, Any]] | None:
            jobs = self.jobs()
            if all(jobs[i]["state"] in FINAL for i in wanted):
                return jobs
            return None

        try:
            return wait_until(all_final, timeout=timeout, interval=0.2,  # type: ignore[no-any-return]
                              message=f"{len(ids)} jobs to finish")
        except AssertionError:
            jobs = self.jobs()
            unfinished = {i: jobs[i]["state"] for i in sorted(wanted) if jobs[i]["state"]
                          not in FINAL}
            raise AssertionError(f"unfinished after {timeout}s: {list(unfinished.items())[:20]}"
                                 f"\n{self.log('server')[-3000:]}") from None

    def ledger_report(self, ids: list[int]) -> LedgerReport:
        return check_ledger(self.ledger, ids)

    def wait_ledger_quiet(self, seconds: float = 1.0, timeout: float = 30) -> None:
        """Wait until no copy has written to the ledger for `seconds` (orphans included)."""
        def quiet() -> bool:
            with contextlib.suppress(FileNotFoundError):
                return time.time() - self.ledger.stat().st_mtime > seconds
            return True

        wait_until(quiet, timeout=timeout, interval=0.1, message="the ledger to go quiet")

    def kill_leftover_jobs(self) -> None:
        """SIGKILL job copies still alive after the test (orphans of killed workers): only
        process groups whose leader is a bash writing to this ledger."""
        if not self.ledger.exists():
            return
        for line in self.ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5 or not parts[2].isdigit():
                continue
            pid = int(parts[2])
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.ledger).encode() in cmdline:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)


def attempts_of(cluster: Cluster, job_id: int) -> list[dict[str, Any]]:
    return list(cluster.job(job_id)["attempt_history"])

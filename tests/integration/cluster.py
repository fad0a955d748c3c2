"""Real shoal processes for integration tests: a server and workers on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from shoal.trust import client_context

SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Cluster:
    """A server and its workers as child processes, all sharing one $SHOAL_HOME."""

    def __init__(self, home: Path, log_dir: Path):
        self.home = home
        self.log_dir = log_dir
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.ca_file: Path | None = None  # trust this CA rather than the server's own
        self.env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("SHOAL_SERVER", None)
        self.env.pop("SHOAL_TOKEN", None)

    # ---- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([*SHOAL, *args], env=self.env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def start_server(self, *args: str) -> None:
        self.server = self._spawn("server", ["server", "--port", "0", *args])
        server = self.server
        wait_until(lambda: server.poll() is not None or self._connection_pid() == server.pid,
                   message="the server's connection file")
        assert self.server.poll() is None, self.log("server")
        wait_until(self._answers, message="the server to answer")

    def _connection_pid(self) -> int | None:
        try:
            return int(json.loads((self.home / "server.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/version", timeout=1,
                             verify=self.tls).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, name: str, cores: int = 2, *args: str) -> subprocess.Popen[bytes]:
        process = self._spawn(f"worker-{name}", ["worker", "--name", name, "--cores",
                                                 str(cores), *args])
        self.workers[name] = process
        wait_until(lambda: any(w["name"] == name and w["connected"]
                               for w in self.api("GET", "/workers")["workers"]),
                   message=f"worker {name} to connect")
        return process

    def stop(self) -> None:
        for process in [*self.workers.values(), self.server]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers.values(), self.server]:
            if process is None:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- talking to it -----------------------------------------------------------------------

    @property
    def connection(self) -> dict[str, Any]:
        return json.loads((self.home / "server.json").read_text())  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        return str(self.connection["url"])

    @property
    def tls(self) -> ssl.SSLContext | bool:
        """What verifies the server's certificate: its own CA, as the connection file says."""
        ca_file = self.ca_file or self.connection.get("ca_file")
        return client_context(Path(ca_file).read_bytes()) if ca_file else True

    @property
    def join(self) -> str:
        """The connection string the server wrote for workers on other hosts."""
        line = (self.home / "join").read_text().strip()
        return line.removeprefix("shoal worker --join ")

    def api(self, method: str, path: str, token: str | None = "admin", **kwargs: Any) -> Any:
        headers = {}
        if token == "admin":
            headers["Authorization"] = f"Bearer {self.connection['admin_token']}"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = httpx.request(method, f"{self.url}/api/v1{path}", headers=headers,
                                 timeout=30, verify=self.tls, **kwargs)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SHOAL, *args], env=env or self.env, input=input, text=True,
                              capture_output=True, timeout=timeout, cwd=cwd)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.api("GET", f"/jobs/{job_id}")  # type: ignore[no-any-return]

    def wait_state(self, job_id: int, *states: str, timeout: float = 30) -> dict[str, Any]:
        return wait_until(lambda: (job := self.job(job_id))["state"] in states and job,  # type: ignore[no-any-return]
                          timeout=timeout, message=f"job {job_id} to be {'/'.join(states)}")

    def wait_started(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        """Running and started: "running" alone may be a job its worker holds queued, which
        a kill then ends with no attempt."""
        return wait_until(lambda: (job := self.job(job_id))["state"] == "running"  # type: ignore[no-any-return]
                          and job["started_at"] is not None and job,
                          timeout=timeout, message=f"job {job_id} to start")


@contextlib.contextmanager
def running_cluster(tmp_path: Path, *server_args: str,
                    workers: Sequence[tuple[str, int]] = ()) -> Iterator[Cluster]:
    """A real server (started with `server_args`) and real workers (name, cores) in
    `tmp_path`, all stopped afterwards."""
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    try:
        instance.start_server(*server_args)
        for name, cores in workers:
            instance.start_worker(name, cores)
        yield instance
    finally:
        instance.stop()

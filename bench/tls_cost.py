"""What TLS costs a client: the same requests to a real server over TLS and over plain HTTP.

Two real `shoal server` processes, one with its own CA and one with `--insecure-http`, each
with 1000 queued jobs. Measured in the same run, interleaved: a request on a kept-alive
connection (`GET /status`), a request on a new connection (a TCP and, for TLS, a handshake
each), and a whole CLI command (`shoal status`, process start-up included). Reported as
medians and as the TLS/plain ratio.
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
from pathlib import Path
from typing import Any

import httpx
from common import compile_shoal, replace_section
from throughput import machine

from shoal.trust import client_context

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- tls:start -->", "<!-- tls:end -->"
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


class Server:
    def __init__(self, home: Path, *args: str):
        self.home = home
        self.env = {**os.environ, "SHOAL_HOME": str(home)}
        for name in ("SHOAL_SERVER", "SHOAL_TOKEN"):
            self.env.pop(name, None)
        with open(home.parent / f"{home.name}.log", "ab") as log:
            self.process = subprocess.Popen([*SHOAL, "server", "--port", "0", *args],
                                            env=self.env, stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + 60
        while self.connection().get("pid") != self.process.pid:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the server in {home} did not start")
            time.sleep(0.05)
        ca_file = self.connection().get("ca_file")
        self.verify: Any = client_context(Path(ca_file).read_bytes()) if ca_file else False
        self.url = str(self.connection()["url"])
        self.headers = {"Authorization": f"Bearer {self.connection()['admin_token']}"}
        self.kept = httpx.Client(verify=self.verify, headers=self.headers, timeout=30)
        # Keeps no connection: every request opens (and, for TLS, handshakes) a new one.
        self.fresh = httpx.Client(verify=self.verify, headers=self.headers, timeout=30,
                                  limits=httpx.Limits(max_keepalive_connections=0))
        while True:
            try:
                if self.kept.get(f"{self.url}/api/v1/version").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        jobs = [{"cmd": f"true {i}", "cwd": "/"} for i in range(1000)]
        self.kept.post(f"{self.url}/api/v1/jobs", json={"jobs": jobs}).raise_for_status()

    def connection(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.home / "server.json").read_text()))
        except (OSError, ValueError):
            return {}

    def kept_alive(self) -> None:
        self.kept.get(f"{self.url}/api/v1/status").raise_for_status()

    def new_connection(self) -> None:
        self.fresh.get(f"{self.url}/api/v1/status").raise_for_status()

    def cli(self) -> None:
        subprocess.run([*SHOAL, "status"], env=self.env, check=True, capture_output=True)

    def stop(self) -> None:
        self.kept.close()
        self.fresh.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def timed(action: Callable[[], None]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def measure(tls: Server, plain: Server, rounds: int) -> dict[str, dict[str, float]]:
    kinds = {"kept-alive request": ("kept_alive", rounds * 10),
             "request on a new connection": ("new_connection", rounds * 2),
             "`shoal status` (whole command)": ("cli", rounds)}
    result = {}
    for label, (method, count) in kinds.items():
        samples: dict[str, list[float]] = {"tls": [], "plain": []}
        for _ in range(count):  # interleaved, so both see the same load
            samples["tls"].append(timed(getattr(tls, method)))
            samples["plain"].append(timed(getattr(plain, method)))
        result[label] = {name: statistics.median(values) * 1000
                         for name, values in samples.items()}
    return result


def report(result: dict[str, dict[str, float]], facts: dict[str, str], rounds: int) -> str:
    rows = "\n".join(
        f"| {label} | {times['tls']:.2f} ms | {times['plain']:.2f} ms | "
        f"{times['tls'] / times['plain']:.2f}x |" for label, times in result.items())
    return f"""
Measured {facts['date']} on {facts['cpus']} CPUs ({facts['cpu model']}), Python
{facts['python']}; medians of {rounds * 10}, {rounds * 2} and {rounds} interleaved samples.

| what | TLS (own CA) | plain HTTP | TLS / plain |
|---|---|---|---|
{rows}

"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    compile_shoal()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        tls = Server(Path(tmp) / "tls")
        plain = Server(Path(tmp) / "plain", "--insecure-http")
        try:
            result = measure(tls, plain, args.rounds)
        finally:
            tls.stop()
            plain.stop()
    text = report(result, machine(), args.rounds)
    print(text)
    if args.write_docs:
        replace_section(DOCS, START, END, text, scaffold=f"{START}\n{END}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

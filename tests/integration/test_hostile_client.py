"""Clients that send what they like to a real `shoal server` over TLS: huge or trickling bodies
without a token, and TLS connections that never finish their handshake. The server answers them
at once, its memory stays put, and meanwhile it keeps serving others and keeps a worker's lease.

Bounds are generous (the figures measured are far below them); no assertion is a tight timing.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from .cluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(180)
MB = 1_000_000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Cluster]:
    """A real server over TLS, with one worker and a short lease: a stalled server loses it."""
    with running_cluster(tmp_path, "--lease-timeout", "3", "--lost-grace", "1",
                         workers=[("w1", 1)]) as instance:
        yield instance


def address_of(cluster: Cluster) -> tuple[str, int]:
    parts = urlsplit(cluster.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def add_body(size: int) -> bytes:
    """A valid add of many jobs, about `size` bytes of JSON: what parsing would cost most."""
    job = json.dumps({"cmd": "echo " + "x" * 40, "cwd": "/tmp", "env": {"A": "b"}})
    count = size // (len(job) + 2)
    return b'{"jobs": [' + b", ".join([job.encode()] * count) + b"]}"


class Watch:
    """Samples the server's RSS and times `/version` from another client until stopped."""

    def __init__(self, cluster: Cluster):
        assert cluster.server is not None
        self.process = psutil.Process(cluster.server.pid)
        self.cluster = cluster
        self.rss_before = self.process.memory_info().rss
        self.rss_peak = self.rss_before
        self.slowest_version = 0.0
        self.versions = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 30
        while self.versions == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_peak = max(self.rss_peak, self.process.memory_info().rss)

    def _probe(self) -> None:
        with httpx.Client(verify=self.cluster.tls, timeout=60) as client:
            while not self._stop.wait(0.05):
                started = time.monotonic()
                assert client.get(f"{self.cluster.url}/api/v1/version").status_code == 200
                self.slowest_version = max(self.slowest_version, time.monotonic() - started)
                self.versions += 1

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before


def tls_socket(cluster: Cluster) -> ssl.SSLSocket:
    trust = cluster.tls
    assert isinstance(trust, ssl.SSLContext)
    host, port = address_of(cluster)
    return trust.wrap_socket(socket.create_connection((host, port), timeout=10),
                             server_hostname=host)


def read_answer(sock: socket.socket, bound: float) -> tuple[bytes, bool]:
    """What the server sends within `bound` seconds, and whether it then closed."""
    data = b""
    deadline = time.monotonic() + bound
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            return data, True
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_bodies_without_a_token_are_refused_unread_while_a_worker_keeps_its_lease(
        served: Cluster) -> None:
    [job] = served.api("POST", "/jobs", json={"jobs": [
        {"cmd": "sleep 6", "cwd": "/", "retries": 0}]})["ids"]
    served.wait_state(job, "running")
    body = add_body(60 * MB)
    with Watch(served) as watch:
        sent, until = 0, time.monotonic() + 5  # most of the job's run, and at least three
        while sent < 3 or time.monotonic() < until:
            sent += 1
            started = time.monotonic()
            refused = httpx.post(f"{served.url}/api/v1/jobs", content=body, verify=served.tls,
                                 headers={"Content-Type": "application/json"}, timeout=60)
            took = time.monotonic() - started
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthorized"
            assert took < 2.0, f"a 60 MB body without a token took {took:.1f} s to refuse"

        # A body that trickles: the answer does not wait for it.
        trickle = tls_socket(served)
        trickle.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: shoal\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                        b'{"jobs": [')
        answer, closed = read_answer(trickle, 10)
        trickle.close()
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert closed, "the connection stayed open with the body unread"
        # An invented token on an upload: the same.
        forged = httpx.put(f"{served.url}/api/v1/blobs/{'0' * 64}", content=b"y" * (8 * MB),
                           headers={"Authorization": "Bearer shoal-user-invented"},
                           verify=served.tls, timeout=60)
        assert forged.status_code == 401

    assert watch.versions > 0
    assert watch.rss_growth < 200 * MB, f"the server grew by {watch.rss_growth / MB:.0f} MB"
    assert watch.slowest_version < 2.0, f"/version took {watch.slowest_version:.1f} s"
    finished = served.wait_state(job, "done", "failed", "lost", "queued", "delayed",
                                 timeout=60)
    assert finished["state"] == "done", finished
    assert finished["attempts"] == 1, "the worker lost its lease while the server was busy"


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["nothing", "half-a-client-hello"])
def test_a_stalled_tls_handshake_is_closed_after_the_head_deadline(
        served: Cluster, first_bytes: bytes) -> None:
    sock = socket.create_connection(address_of(served), timeout=10)
    try:
        sock.sendall(first_bytes)
        started = time.monotonic()
        answer, closed = read_answer(sock, 45)
        took = time.monotonic() - started
    finally:
        sock.close()
    assert closed, "a TLS handshake that never finished held its connection for 45 s"
    assert answer == b""
    # The documented deadline is 10 s; asyncio's own would be 60 s.
    assert took < 30, f"closed after {took:.0f} s"
    assert served.api("GET", "/version")["version"]

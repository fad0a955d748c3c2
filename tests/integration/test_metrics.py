"""/metrics: who may read it, what it says, and a real Prometheus scraping it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port
from tests.system import require

from .cluster import Cluster, wait_until


def _metrics(cluster: Cluster, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{cluster.url}/metrics", headers=headers, timeout=30, verify=cluster.tls)


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_need_an_admin_or_metrics_token(cluster: Cluster) -> None:
    assert _metrics(cluster, None).status_code == 401
    user = cluster.api("POST", "/tokens", json={"role": "user", "name": "alice"})["token"]
    assert _metrics(cluster, user).status_code == 403
    made = cluster.cli("token", "create", "--role", "metrics", "--name", "scraper")
    assert made.returncode == 0, made.stderr
    scraper = made.stdout.strip().splitlines()[0]
    assert _metrics(cluster, scraper).status_code == 200
    # What to do with it says what it is for: Prometheus' credentials, not a client's server.
    assert "credentials_file" in made.stderr and "SHOAL_SERVER" not in made.stderr
    worker = cluster.cli("token", "create", "--role", "worker", "--name", "w9")
    assert "--join-file" in worker.stderr and "--join shoal://" not in worker.stderr
    # ... and nothing else: a metrics token reads no jobs.
    jobs = httpx.get(f"{cluster.url}/api/v1/jobs", headers={"Authorization": f"Bearer {scraper}"},
                     timeout=30, verify=cluster.tls)
    assert jobs.status_code == 403


def test_metrics_follow_the_work(cluster: Cluster) -> None:
    added = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": "true", "cwd": "/", "group": "ok"},
        {"cmd": "sleep 0.3", "cwd": "/", "group": "ok"},
        {"cmd": "exit 7", "cwd": "/", "group": "bad"}]})
    for job_id in added["ids"]:
        cluster.wait_state(job_id, "done", "failed", timeout=60)
    admin = cluster.connection["admin_token"]
    text = _metrics(cluster, admin).text
    assert _value(text, 'shoal_jobs{group="ok",state="done"}') == 2
    assert _value(text, 'shoal_jobs{group="bad",state="failed"}') == 1
    assert _value(text, 'shoal_jobs_added_total{group="ok"}') == 2
    assert _value(text, 'shoal_job_transitions_total{from_state="running",to_state="done"}') == 2
    assert _value(text, 'shoal_attempts_finished_total{outcome="exited",success="false"}') == 1
    assert _value(text, "shoal_job_schedule_latency_seconds_count") == 3
    assert _value(text, "shoal_job_run_seconds_count") == 3
    assert (_value(text, "shoal_job_run_seconds_sum") or 0) >= 0.3
    assert (_value(text, "shoal_db_commit_seconds_count") or 0) >= 3
    assert _value(text, "shoal_workers") == 2
    host = socket.gethostname()
    assert _value(text, f'shoal_worker_cores_offered{{host="{host}",worker="w1"}}') == 2
    assert (_value(text, 'shoal_websocket_messages_total{direction="in",type="finished"}')
            or 0) >= 1
    assert (_value(text, 'shoal_websocket_messages_total{direction="out",type="assign"}')
            or 0) >= 1
    assert "shoal_ensemble_start_spread_seconds_bucket" in text
    assert "_created" not in text


def test_metrics_public_needs_no_token(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    try:
        cluster.start_server("--metrics-public")
        answer = _metrics(cluster, None)
        assert answer.status_code == 200
        assert "shoal_workers 0.0" in answer.text
        # Only /metrics: the dashboard and the API still want a token.
        assert httpx.get(f"{cluster.url}/api/v1/jobs", verify=cluster.tls,
                         timeout=30).status_code == 401
    finally:
        cluster.stop()


# ---- a real Prometheus ---------------------------------------------------------------------


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the cluster's server every second with a metrics token, over the
    server's TLS (its own CA). Yields Prometheus' URL."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus (Debian package prometheus)")
    assert binary is not None
    token = cluster.api("POST", "/tokens", json={"role": "metrics", "name": "prom"})["token"]
    secret = tmp_path / "prom-token"
    secret.write_text(token)
    secret.chmod(0o600)
    target = cluster.url.split("://", 1)[1]
    ca_file = cluster.connection.get("ca_file")
    tls = f"    tls_config:\n      ca_file: {ca_file}\n" if ca_file else ""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: shoal\n"
        f"    scheme: {cluster.url.split('://')[0]}\n"
        "    authorization:\n"
        f"      credentials_file: {secret}\n"
        f"{tls}"
        f"    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or process.poll() is not None, timeout=60,
                   message="prometheus to start")
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


@pytest.mark.system
def test_prometheus_scrapes_the_server(cluster: Cluster, prometheus: str) -> None:
    added = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"echo {n}", "cwd": "/", "group": "scraped"} for n in range(5)]})
    for job_id in added["ids"]:
        cluster.wait_state(job_id, "done", timeout=60)
    started = time.monotonic()

    def done_series() -> list[dict[str, Any]]:
        found = _query(prometheus, 'shoal_jobs{group="scraped",state="done"}')
        return found if found and found[0]["value"][1] == "5" else []

    series = wait_until(done_series, timeout=90, interval=1.0,
                        message="Prometheus to hold shoal_jobs for the group")
    assert series[0]["metric"]["job"] == "shoal"
    up = _query(prometheus, 'up{job="shoal"}')
    assert up and up[0]["value"][1] == "1"
    assert _query(prometheus, "shoal_workers")[0]["value"][1] == "2"
    rate = _query(prometheus, "sum(shoal_job_run_seconds_count)")
    assert float(rate[0]["value"][1]) >= 5
    assert time.monotonic() - started < 120

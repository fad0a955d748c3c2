"""A worker token in the wrong hands, against a real server and a real honest worker.

The impostor speaks the worker protocol directly: it claims the honest worker's attempts (with
their real lease ids, which a guess could never find), forges and replays results, borrows the
honest worker's name, and sends lists longer than any worker was given. No forged result may be
accepted, no job may run twice, and the honest worker must not notice.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from shoal.core.protocol import (
    MAX_HELD_ATTEMPTS,
    PROTOCOL_VERSION,
    AttemptResult,
    Captured,
    Finished,
    Register,
    Resources,
    RunningAttempt,
    Started,
    StartedItem,
    encode,
)

from .cluster import Cluster, running_cluster, wait_until

FORGED = "FORGED BY evil"


@pytest.fixture
def honest(tmp_path: Path) -> Iterator[Cluster]:
    """A real server (short lease and grace) with one real worker, w1, of two cores."""
    with running_cluster(tmp_path, "--lease-timeout", "3", "--lost-grace", "1",
                         workers=[("w1", 2)]) as instance:
        yield instance


def worker_token(cluster: Cluster, name: str) -> str:
    answer = cluster.api("POST", "/tokens", json={"role": "worker", "name": name})
    return str(answer["token"])


def open_channel(cluster: Cluster, token: str) -> ClientConnection:
    url = cluster.url.replace("https://", "wss://").replace("http://", "ws://")
    tls = cluster.tls
    return connect(f"{url}/api/v1/worker", additional_headers={"Authorization": f"Bearer {token}"},
                   ssl=tls if not isinstance(tls, bool) else None, open_timeout=10,
                   max_size=None)


def register(name: str, running: list[RunningAttempt]) -> str:
    # Built without validation: a hostile peer is not held to the model's own limits.
    return encode(Register.model_construct(
        protocol_version=PROTOCOL_VERSION, name=name, host="evil.example", labels={},
        resources=Resources(cores=2, memory_bytes=1 << 30),
        instance_secret=secrets.token_hex(16), running=running))


def answer(channel: ClientConnection) -> dict[str, Any]:
    return json.loads(channel.recv(timeout=10))  # type: ignore[no-any-return]


def forged_result(job_id: int, lease_id: int) -> str:
    now = time.time()
    return encode(Finished(items=[AttemptResult(
        job_id=job_id, lease_id=lease_id, outcome="exited", exit_code=0, pid=1,
        started_at=now - 1, ended_at=now, wall_seconds=1.0, cpu_seconds=0.0,
        peak_rss_bytes=0, stdout=Captured(head=FORGED, total_bytes=len(FORGED)))]))


def start_ledgered_job(cluster: Cluster, tmp_path: Path, seconds: float) -> tuple[int, int, Path]:
    """A job that appends a line to a ledger each time a copy starts; its id and lease."""
    ledger = tmp_path / "ledger"
    cmd = f"echo start >> {ledger}; sleep {seconds}; echo honest"
    [job_id] = cluster.api("POST", "/jobs", json={"jobs": [{"cmd": cmd, "cwd": "/"}]})["ids"]
    job = cluster.wait_state(job_id, "running")
    wait_until(lambda: ledger.exists(), message="the job to start")
    [attempt] = job["attempt_history"]
    return job_id, int(attempt["lease_id"]), ledger


def test_an_impostor_cannot_claim_forge_or_double_run_anothers_attempt(
        honest: Cluster, tmp_path: Path) -> None:
    job_id, lease_id, ledger = start_ledgered_job(honest, tmp_path, seconds=6)
    token = worker_token(honest, "evil")
    guesses = [RunningAttempt(job_id=job_id, lease_id=lease_id + delta, started_at=0.0)
               for delta in range(-240, 240)]
    with open_channel(honest, token) as evil:
        evil.send(register("evil", guesses))
        assert answer(evil)["type"] == "welcome"
        # The real lease was among the claims: refused, so the forged result is a stale report.
        evil.send(encode(Started(items=[StartedItem(job_id=job_id, lease_id=lease_id, pid=1,
                                                    started_at=time.time())])))
        evil.send(forged_result(job_id, lease_id))
        time.sleep(1.0)
        job = honest.job(job_id)
        assert (job["state"], job["worker"]) == ("running", "w1")
    # The impostor is gone; had it been given the attempt, the job would now be lost, then
    # queued again beside the live copy.
    time.sleep(2.5)
    done = honest.wait_state(job_id, "done", "failed", timeout=30)
    assert (done["state"], done["worker"], done["attempts"]) == ("done", "w1", 1)
    assert "honest" in done["stdout"]["head"] and FORGED not in json.dumps(done)
    assert ledger.read_text().count("start") == 1
    # The honest worker's cores were never held by a ghost: it takes two more jobs at once.
    ids = honest.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"sleep 1; echo {n}", "cwd": "/"} for n in range(2)]})["ids"]
    for new_id in ids:
        assert honest.wait_state(new_id, "done", timeout=30)["worker"] == "w1"


def test_a_shared_token_does_not_let_another_process_take_a_workers_name_or_attempts(
        honest: Cluster, tmp_path: Path) -> None:
    job_id, lease_id, ledger = start_ledgered_job(honest, tmp_path, seconds=5)
    # The honest worker's own token (from the join file), by another process under its name.
    shared = honest.connection["worker_token"]
    claim = [RunningAttempt(job_id=job_id, lease_id=lease_id, started_at=0.0)]
    with open_channel(honest, shared) as evil:
        evil.send(register("w1", claim))
        refusal = answer(evil)
        assert refusal["type"] == "refused"
        assert "already connected" in refusal["reason"]
    # Under a name of its own, the same claim with the same token is still refused.
    with open_channel(honest, shared) as evil:
        evil.send(register("w1-twin", claim))
        assert answer(evil)["type"] == "welcome"
        evil.send(forged_result(job_id, lease_id))
        time.sleep(1.0)
    workers = {w["name"]: w for w in honest.api("GET", "/workers")["workers"]}
    assert workers["w1"]["connected"]
    done = honest.wait_state(job_id, "done", "failed", timeout=30)
    assert (done["state"], done["worker"], done["attempts"]) == ("done", "w1", 1)
    assert "honest" in done["stdout"]["head"] and FORGED not in json.dumps(done)
    assert ledger.read_text().count("start") == 1


def test_a_register_listing_more_attempts_than_any_worker_holds_is_refused(
        honest: Cluster) -> None:
    token = worker_token(honest, "flood")
    too_many = [RunningAttempt(job_id=n, lease_id=n, started_at=0.0)
                for n in range(MAX_HELD_ATTEMPTS + 1)]
    with open_channel(honest, token) as evil:
        evil.send(register("flood", too_many))
        try:
            refusal = answer(evil)
        except ConnectionClosed:
            refusal = {"type": "closed"}
        assert refusal["type"] in ("refused", "closed")
    names = [w["name"] for w in honest.api("GET", "/workers")["workers"]]
    assert "flood" not in names and "w1" in names


def test_lease_ids_are_not_a_sequence(honest: Cluster) -> None:
    ids = honest.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"echo {n}", "cwd": "/"} for n in range(12)]})["ids"]
    leases = []
    for job_id in ids:
        [attempt] = honest.wait_state(job_id, "done")["attempt_history"]
        leases.append(int(attempt["lease_id"]))
    steps = {b - a for a, b in pairwise(sorted(leases))}
    assert len(steps) > 1, f"lease ids step evenly: {sorted(leases)}"


def test_a_workers_name_is_not_taken_while_it_is_away_with_jobs(tmp_path: Path) -> None:
    """The honest worker stopped for longer than two heartbeats (but not its lease): another
    process with the same token asks for its name. Refused while the job waits for its worker,
    which comes back, keeps its name and finishes the job once."""
    with running_cluster(tmp_path, "--lease-timeout", "6", "--lost-grace", "5",
                         workers=[("w1", 2)]) as cluster:
        job_id, _, ledger = start_ledgered_job(cluster, tmp_path, seconds=6)
        honest_worker = cluster.workers["w1"]
        os.kill(honest_worker.pid, signal.SIGSTOP)
        try:
            time.sleep(4.5)  # two heartbeats of 2 s: the server presumes a silent session dead
            with open_channel(cluster, cluster.connection["worker_token"]) as evil:
                evil.send(register("w1", []))
                refusal = answer(evil)
        finally:
            os.kill(honest_worker.pid, signal.SIGCONT)
        assert (refusal["type"], refusal["name_clash"]) == ("refused", "held")
        assert "wait for it to come back" in refusal["reason"]
        done = cluster.wait_state(job_id, "done", "failed", timeout=30)
        assert (done["state"], done["worker"], done["attempts"]) == ("done", "w1", 1)
        assert ledger.read_text().count("start") == 1
        assert honest_worker.poll() is None


def test_a_new_worker_under_a_name_whose_jobs_wait_keeps_trying_then_joins(
        tmp_path: Path) -> None:
    """`shoal worker --name w1` with a spool directory (and so a secret) of its own, started
    while the killed w1's job waits out the grace: not the same worker, so it is refused the
    name for now, says so, keeps trying, and joins once the job has been given up."""
    with running_cluster(tmp_path, "--lease-timeout", "3", "--lost-grace", "6",
                         workers=[("w1", 2)]) as cluster:
        job_id, _, ledger = start_ledgered_job(cluster, tmp_path, seconds=60)
        first = cluster.workers["w1"]
        first.kill()
        first.wait()
        cluster.wait_state(job_id, "lost")
        second = cluster.start_worker("w1", 2, "--spool", str(tmp_path / "another-spool"))
        assert "refused this worker for now" in cluster.log("worker-w1")
        assert second.poll() is None
        # The job, given up after the grace, runs again: on the one worker there is.
        wait_until(lambda: ledger.read_text().count("start") == 2, message="the rerun")
        assert cluster.job(job_id)["worker"] == "w1"


def test_two_workers_started_on_one_host_without_names_both_join(tmp_path: Path) -> None:
    """Default names are HOST-PID: two `shoal worker` on one host never clash. A second
    `--name w1` while w1 answers stops at once with one line naming the clash."""
    with running_cluster(tmp_path, workers=[("w1", 1)]) as cluster:
        unnamed = [cluster._spawn(f"unnamed-{k}", ["worker", "--cores", "1"]) for k in (0, 1)]
        cluster.workers.update({f"unnamed-{k}": p for k, p in enumerate(unnamed)})
        host = socket.gethostname()
        expected = {f"{host}-{process.pid}" for process in unnamed}
        wait_until(lambda: expected <= {w["name"] for w in cluster.api("GET", "/workers")[
            "workers"] if w["connected"]}, message="both unnamed workers to join")
        twin = cluster.cli("worker", "--name", "w1", "--cores", "1", timeout=60)
        [line] = [text for text in twin.stderr.splitlines() if "w1" in text]
        assert "already connected" in line and "another --name" in line
        assert twin.returncode == 2
        by_name = {w["name"]: w for w in cluster.api("GET", "/workers")["workers"]}
        assert by_name["w1"]["connected"] and cluster.workers["w1"].poll() is None

"""Ended jobs live in the database only: a restarted server reads back the live ones, and
everything a user does with history still works. Listings page by id and stream."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx

from .cluster import Cluster, running_cluster, wait_until


def restart(cluster: Cluster) -> None:
    assert cluster.server is not None
    port = cluster.url.rsplit(":", 1)[1]
    cluster.server.send_signal(signal.SIGTERM)
    cluster.server.wait()
    cluster.start_server("--port", port, "--lease-timeout", "3", "--lost-grace", "1")
    wait_until(lambda: sum(w["connected"] for w in cluster.api("GET", "/workers")["workers"])
               == 2, timeout=30, message="workers to reconnect")


def test_history_is_used_after_a_restart_though_only_live_jobs_are_read_back(
        cluster: Cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    specs = [{"cmd": f"echo {i} >> {ledger}", "cwd": "/", "group": "old"} for i in range(20)]
    specs.append({"cmd": "exit 3", "cwd": "/", "group": "old"})
    ids = cluster.api("POST", "/jobs", json={"jobs": specs})["ids"]
    for job_id in ids:
        cluster.wait_state(job_id, "done", "failed")
    restart(cluster)
    info = cluster.api("GET", "/server")
    assert info["jobs"] == 21  # counted from the database, not from jobs held in memory
    status = cluster.api("GET", "/status", params={"group": "old"})
    assert status["totals"] == {"done": 20, "failed": 1}
    # A duplicate of an ended job is found in the database, and --rerun brings it back.
    again = cluster.api("POST", "/jobs", json={"jobs": specs[:2]})
    assert (again["added"], again["existed"], again["ids"]) == (0, 2, ids[:2])
    rerun = cluster.api("POST", "/jobs", json={"jobs": specs[:1], "rerun": True})
    assert rerun["requeued"] == 1
    assert cluster.wait_state(ids[0], "done")["attempts"] == 1
    # A dependency on an ended job, a retry of a failed one, a removal of done ones.
    [later] = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"echo dep >> {ledger}", "cwd": "/", "after": [str(ids[5])]}]})["ids"]
    assert cluster.wait_state(later, "done")
    retried = cluster.api("POST", "/jobs/retry", json={"group": "old"})
    assert retried["ids"] == [ids[-1]]
    assert cluster.wait_state(ids[-1], "failed")["exit_code"] == 3
    removed = cluster.api("POST", "/jobs/remove", json={"ids": ids[10:15]})
    assert removed["ids"] == ids[10:15]
    gone = httpx.get(f"{cluster.url}/api/v1/jobs/{ids[10]}", verify=cluster.tls,
                     headers={"Authorization": f"Bearer {cluster.connection['admin_token']}"})
    assert gone.status_code == 404
    assert cluster.job(ids[3])["stdout"]["total_bytes"] == 0  # read from the database
    assert sorted(ledger.read_text().split()) == sorted(
        [*map(str, range(20)), "0", "dep"])  # each once, the rerun and the dependant


def test_pages_never_skip_or_repeat_while_jobs_come_and_go(cluster: Cluster) -> None:
    assert cluster.api("POST", "/jobs/kill", json={"group": "nothing"})["affected"] == 0
    first = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"sleep 0.01; echo {i}", "cwd": "/", "group": "paged"} for i in range(250)]})
    original = set(first["ids"])
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            added = cluster.api("POST", "/jobs", json={"jobs": [
                {"cmd": f"echo churn {n}", "cwd": "/", "group": "churn"}]})
            cluster.api("POST", "/jobs/remove", json={"ids": added["ids"]})
            n += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        seen: list[int] = []
        after = None
        while True:
            params: dict[str, object] = {"group": "paged", "limit": 7}
            if after is not None:
                params["after_id"] = after
            page = cluster.api("GET", "/jobs", params=params)
            seen += [job["id"] for job in page["jobs"]]
            after = page["next_after_id"]
            if after is None:
                break
    finally:
        stop.set()
        churner.join()
    assert seen == sorted(original)  # every one, once, in order


def test_a_page_larger_than_a_slice_streams_the_same_jobs_as_small_pages(
        cluster: Cluster) -> None:
    # More cores than any worker has: they stay queued, each with its reason.
    added = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"echo big {i}", "cwd": "/", "group": "streamed", "cores": 4096}
        for i in range(12_000)]})
    headers = {"Authorization": f"Bearer {cluster.connection['admin_token']}"}
    try:
        with httpx.stream("GET", f"{cluster.url}/api/v1/jobs", verify=cluster.tls,
                          headers=headers, timeout=60,
                          params={"group": "streamed", "limit": 11_000}) as answer:
            assert answer.status_code == 200
            assert answer.headers.get("transfer-encoding") == "chunked"  # no length: streamed
            body = b"".join(answer.iter_bytes())
        big = json.loads(body)
        small: list[dict[str, object]] = []
        after = None
        while len(small) < 11_000:
            params: dict[str, object] = {"group": "streamed", "limit": 1000}
            if after is not None:
                params["after_id"] = after
            page = cluster.api("GET", "/jobs", params=params)
            small += page["jobs"]
            after = page["next_after_id"]
        assert [job["id"] for job in big["jobs"]] == added["ids"][:11_000]
        assert big["jobs"] == small
        assert (big["total"], big["next_after_id"]) == (12_000, added["ids"][10_999])
        assert "4096" in str(big["jobs"][-1]["pending_reason"])
    finally:
        cluster.api("POST", "/jobs/kill", json={"group": "streamed"})


def test_listing_filters_and_refuses_unknown_parameters(cluster: Cluster) -> None:
    ids = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": "echo findme-alpha", "cwd": "/", "group": "f", "name": "a"},
        {"cmd": "exit 4", "cwd": "/", "group": "f"},
        {"cmd": "echo other", "cwd": "/", "group": "f"}]})["ids"]
    for job_id in ids:
        cluster.wait_state(job_id, "done", "failed")
    listed = cluster.api("GET", "/jobs", params={"cmd": "findme", "group": "f"})
    assert [j["id"] for j in listed["jobs"]] == [ids[0]] and listed["total"] is None
    both = cluster.api("GET", "/jobs", params={"state": "done,failed", "group": "f"})
    assert both["total"] == 3 and len(both["jobs"]) == 3
    assert [j["id"] for j in cluster.api("GET", "/jobs", params={"exit_code": 4})["jobs"]] \
        == [ids[1]]
    assert [j["id"] for j in cluster.api("GET", "/jobs", params={"name": "a"})["jobs"]] \
        == [ids[0]]
    newest = cluster.api("GET", "/jobs", params={"order": "desc", "limit": 1})
    assert newest["jobs"][0]["id"] == ids[-1]
    for params in ({"where": "x"}, {"projection": "id"}, {"offset": 10}, {"state": "nope"}):
        answer = httpx.get(f"{cluster.url}/api/v1/jobs", params=params, verify=cluster.tls,
                           headers={"Authorization":
                                    f"Bearer {cluster.connection['admin_token']}"})
        assert answer.status_code == 400, params
        assert answer.json()["error"]["code"] in ("invalid", "bad_request")
    # The CLI: several states, --limit, --last, a JSON stream that is one document.
    out = cluster.cli("jobs", "--state", "done", "--state", "failed", "--group", "f", "--json")
    assert out.returncode == 0, out.stderr
    assert [j["id"] for j in json.loads(out.stdout)["jobs"]] == ids
    last = cluster.cli("jobs", "--group", "f", "--last", "2", "--json")
    assert [j["id"] for j in json.loads(last.stdout)["jobs"]] == ids[1:]
    first = cluster.cli("jobs", "--group", "f", "--limit", "1")
    assert first.returncode == 0 and "findme-alpha" in first.stdout
    assert "exit 4" not in first.stdout


def test_ended_jobs_are_removed_in_bulk_and_by_age(cluster: Cluster) -> None:
    ids = cluster.api("POST", "/jobs", json={"jobs": [
        *({"cmd": f"echo {i}", "cwd": "/", "group": "h"} for i in range(30)),
        {"cmd": "exit 1", "cwd": "/", "group": "h"}]})["ids"]
    for job_id in ids:
        cluster.wait_state(job_id, "done", "failed")
    info = json.loads(cluster.cli("server", "info", "--json").stdout)
    assert (info["history_jobs"], info["live_jobs"]) == (31, 0)
    assert info["database_bytes"] > 0
    shown = cluster.cli("server", "info").stdout
    assert "31: 0 live (0 running, 0 in the backlog), 31 ended" in shown
    assert "database  " in shown
    recent = cluster.cli("rm", "--state", "done", "--before", "1h")
    assert recent.returncode == 0 and recent.stdout.strip() == "0 jobs removed"
    removed = cluster.cli("rm", "--state", "done", "--group", "h", "--json")
    assert removed.returncode == 0, removed.stderr
    assert sorted(json.loads(removed.stdout)["ids"]) == ids[:30]
    assert cluster.api("GET", "/status", params={"group": "h"})["totals"] == {"failed": 1}
    assert cluster.api("GET", "/jobs", params={"group": "h"})["jobs"][0]["id"] == ids[30]
    refused = cluster.cli("rm", "--state", "queued")
    assert refused.returncode == 2 and "only ended jobs" in refused.stderr
    # The same command added again is a new job: the old one is gone.
    again = cluster.api("POST", "/jobs", json={"jobs": [{"cmd": "echo 1", "cwd": "/",
                                                         "group": "h"}]})
    assert again["added"] == 1


def test_a_server_keeps_history_only_as_long_as_asked(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "--keep-history", "2s", workers=[("w1", 2)]) as instance:
        ids = instance.api("POST", "/jobs", json={"jobs": [
            {"cmd": f"echo {i}", "cwd": "/"} for i in range(5)]})["ids"]
        for job_id in ids:
            instance.wait_state(job_id, "done")
        wait_until(lambda: instance.api("GET", "/status")["totals"] == {}, timeout=30,
                   message="history older than 2 s to be removed")


def test_each_attempt_keeps_why_it_ended(cluster: Cluster) -> None:
    """Not only the job's last reason: every attempt says why it ended, in the API and in
    `shoal status`."""
    failing, killed, fine = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": "exit 3", "cwd": "/", "retries": 1},
        {"cmd": "sleep 300", "cwd": "/"},
        {"cmd": "true", "cwd": "/"}]})["ids"]
    cluster.wait_started(killed)
    cluster.api("POST", "/jobs/kill", json={"ids": [killed]})
    failed = cluster.wait_state(failing, "failed")
    reasons = [a["reason"] for a in failed["attempt_history"]]
    assert len(reasons) == 2 and all("exit code 3" in (r or "") for r in reasons), reasons
    assert [a["reason"] for a in cluster.wait_state(killed, "cancelled")["attempt_history"]] \
        == ["killed by user"]
    assert [a["reason"] for a in cluster.wait_state(fine, "done")["attempt_history"]] == [None]
    shown = cluster.cli("status", str(failing))
    assert shown.returncode == 0 and "REASON" in shown.stdout
    assert shown.stdout.count("exit code 3") >= 2

"""Scheduling with real workers of different shapes: placement, limits, dependencies,
time and memory limits, GPUs and arrays."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster, wait_until


@pytest.fixture
def shaped(tmp_path: Path) -> Iterator[Cluster]:
    """`small`: 1 core. `big`: 4 cores, 2 licenses, rack=a, two GPUs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    try:
        instance.start_server("--retry-base", "0.2")
        instance.start_worker("small", 1)
        instance.start_worker("big", 4, "--resource", "licenses=2", "--label", "rack=a",
                              "--gpus", "2")
        yield instance
    finally:
        instance.stop()


def add(cluster: Cluster, *specs: dict[str, Any]) -> list[int]:
    body = {"jobs": [{"cwd": "/tmp", **spec} for spec in specs]}
    return cluster.api("POST", "/jobs", json=body)["ids"]  # type: ignore[no-any-return]


def spans(cluster: Cluster, ids: list[int]) -> list[tuple[float, float]]:
    jobs = [cluster.job(i) for i in ids]
    return [(job["started_at"], job["ended_at"]) for job in jobs]


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_jobs_land_where_they_fit(shaped: Cluster) -> None:
    ids = add(shaped,
              {"cmd": "echo wide", "cores": 4},
              {"cmd": "echo licensed", "resources": {"licenses": 2}},
              {"cmd": "echo on-rack", "on_worker": "rack=a"},
              {"cmd": "echo on-small", "on_worker": "small"},
              {"cmd": "echo huge", "cores": 64},
              {"cmd": "echo no-such-label", "on_worker": "rack=z"})
    workers = {}
    for job_id in ids[:4]:
        workers[job_id] = shaped.wait_state(job_id, "done")["worker"]
    assert [workers[i] for i in ids[:4]] == ["big", "big", "big", "small"]
    huge = shaped.job(ids[4])
    assert huge["state"] == "queued"
    assert huge["pending_reason"] == "needs 64 cores; largest worker offers 4 cores"
    assert shaped.job(ids[5])["pending_reason"] == "no connected worker has the label rack=z"
    status = shaped.cli("status", str(ids[4]))
    assert "needs 64 cores; largest worker offers 4 cores" in status.stdout


def test_a_worker_never_runs_more_than_it_offers(shaped: Cluster) -> None:
    ids = add(shaped, *[{"cmd": f"sleep 0.3; echo {i}", "resources": {"licenses": 1}}
                        for i in range(6)])
    for job_id in ids:
        shaped.wait_state(job_id, "done")
    assert peak_overlap(spans(shaped, ids)) == 2  # two licenses on the only worker with any


def test_limits_cap_concurrency_and_zero_pauses(shaped: Cluster) -> None:
    assert shaped.cli("limit", "db", "2").returncode == 0
    ids = add(shaped, *[{"cmd": f"sleep 0.4; echo {i}", "limits": ["db"]} for i in range(6)])
    for job_id in ids:
        shaped.wait_state(job_id, "done")
    assert peak_overlap(spans(shaped, ids)) == 2
    assert shaped.cli("limit", "db", "0").returncode == 0
    [paused] = add(shaped, {"cmd": "echo paused", "limits": ["db"]})
    wait_until(lambda: shaped.job(paused)["pending_reason"] == "limit db is paused (cap 0)")
    assert shaped.job(paused)["state"] == "queued"
    listed = json.loads(shaped.cli("limits", "--json").stdout)
    assert {"name": "db", "cap": 0, "running": 0, "queued": 1} in listed["limits"]
    assert shaped.cli("limit", "db", "--unset").returncode == 0
    shaped.wait_state(paused, "done")


def test_chains_and_fan_in_run_in_order(shaped: Cluster) -> None:
    [first] = add(shaped, {"cmd": "sleep 0.2; echo first"})
    [second] = add(shaped, {"cmd": "echo second", "after": [str(first)]})
    parts = add(shaped, *[{"cmd": f"sleep 0.{i}; echo part {i}", "group": "parts",
                           "after": [str(second)]} for i in range(1, 5)])
    [merge] = add(shaped, {"cmd": "echo merge", "after": ["group:parts"]})
    assert shaped.job(merge)["state"] == "waiting"
    done = shaped.wait_state(merge, "done")
    first_job, second_job = shaped.job(first), shaped.job(second)
    assert second_job["started_at"] >= first_job["ended_at"]
    for part in parts:
        part_job = shaped.job(part)
        assert part_job["started_at"] >= second_job["ended_at"]
        assert done["started_at"] >= part_job["ended_at"]


def test_a_failure_cancels_its_dependants(shaped: Cluster) -> None:
    [root] = add(shaped, {"cmd": "exit 4"})
    [child] = add(shaped, {"cmd": "echo child", "after": [str(root)], "group": "kids"})
    [grandchild] = add(shaped, {"cmd": "echo grandchild", "after": ["group:kids"]})
    [cleanup] = add(shaped, {"cmd": "echo cleanup", "after_any": [str(root)]})
    shaped.wait_state(root, "failed")
    assert shaped.wait_state(child, "cancelled")["fail_reason"] == f"dependency {root} failed"
    assert shaped.wait_state(grandchild, "cancelled")["fail_reason"] == \
        "a job of group:kids failed or was cancelled"
    shaped.wait_state(cleanup, "done")


def test_bad_dependencies_are_refused_with_a_clear_error(shaped: Cluster) -> None:
    unknown = shaped.cli("add", "--after", "999", "echo x")
    assert unknown.returncode == 2 and "dependency 999 does not exist" in unknown.stderr
    empty = shaped.cli("add", "--after", "group:nothing", "echo y")
    assert empty.returncode == 2 and "group:nothing has no jobs" in empty.stderr
    cycle = shaped.cli("add", "--group", "loop", "--after", "group:loop", "echo z")
    assert cycle.returncode == 2 and "dependency cycle" in cycle.stderr
    assert shaped.api("GET", "/jobs")["total"] == 0


def test_time_and_memory_limits_kill(shaped: Cluster) -> None:
    slow, hungry = add(shaped, {"cmd": "sleep 30", "time_limit_seconds": 1},
                       {"cmd": "python3 -c \"b = bytearray(400 << 20); import time; "
                               "time.sleep(5)\"", "memory_bytes": 100 << 20})
    slow_job = shaped.wait_state(slow, "failed", timeout=15)
    assert slow_job["fail_reason"] == "time limit" and slow_job["wall_seconds"] < 30  # killed
    hungry_job = shaped.wait_state(hungry, "failed", timeout=15)
    assert hungry_job["fail_reason"] == "memory limit"
    assert hungry_job["peak_rss_bytes"] > 100 << 20


def test_each_gpu_job_sees_only_its_own(shaped: Cluster) -> None:
    ids = add(shaped, *[{"cmd": f"sleep 0.5; echo $CUDA_VISIBLE_DEVICES # {i}", "gpus": 1}
                        for i in range(2)])
    [plain] = add(shaped, {"cmd": "echo \"[$CUDA_VISIBLE_DEVICES]\"", "on_worker": "big"})
    seen = [shaped.wait_state(i, "done")["stdout"]["head"].strip() for i in ids]
    assert sorted(seen) == ["0", "1"]
    assert peak_overlap(spans(shaped, ids)) == 2
    assert shaped.wait_state(plain, "done")["stdout"]["head"].strip() == "[]"


def test_arrays_add_one_job_per_item_atomically(shaped: Cluster, tmp_path: Path) -> None:
    added = shaped.cli("add", "--array", "1-5", "--json",
                       "echo item {} index $SHOAL_ARRAY_INDEX of $SHOAL_ARRAY_ITEM")
    assert added.returncode == 0, added.stderr
    ids = json.loads(added.stdout)["ids"]
    assert len(ids) == 5
    outputs = sorted(shaped.wait_state(i, "done")["stdout"]["head"] for i in ids)
    assert outputs == [f"item {n} index {n} of {n}\n" for n in range(1, 6)]
    items = tmp_path / "items.txt"
    items.write_text("alpha\nbeta\n")
    lines = shaped.cli("add", "--each-line", str(items), "--json", "echo {}")
    assert len(json.loads(lines.stdout)["ids"]) == 2
    refused = shaped.cli("add", "--array", "1-3", "echo no placeholder")
    assert refused.returncode == 2


def test_limits_survive_a_server_restart(shaped: Cluster) -> None:
    assert shaped.cli("limit", "db", "1").returncode == 0
    ids = add(shaped, *[{"cmd": f"sleep 0.3; echo {i}", "limits": ["db"]} for i in range(3)])
    assert shaped.server is not None
    port = shaped.url.rsplit(":", 1)[1]
    shaped.server.terminate()
    shaped.server.wait()
    shaped.start_server("--port", port, "--retry-base", "0.2")
    assert json.loads(shaped.cli("limit", "db", "--json").stdout)["cap"] == 1
    for job_id in ids:
        shaped.wait_state(job_id, "done", timeout=60)
    assert peak_overlap(spans(shaped, ids)) == 1

"""An allocation queue with the user's own engine commands: three small shell scripts play the
engine (submit starts workers in the background and prints an id, status looks for their
processes, cancel kills them). Queued jobs get workers, each job runs once, idle workers
leave, and the API's answers are the documented ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.server.api_answers import AllocLog, AllocQueueInfo, AllocQueueList, AllocRemoved
from tests.integration.cluster import Cluster, wait_until

SUBMIT = """\
cd "$SHOAL_ALLOC_DIR"
echo "$@" > engine-args
for _ in $(seq "$SHOAL_WORKERS"); do
    setsid bash -c "$SHOAL_WORKER_COMMAND" >>stdout 2>>stderr </dev/null &
    echo $! >>pids
done
echo "workers started"
echo "$SHOAL_ALLOC_DIR"
"""
STATUS = """\
for pid in $(cat "$1/pids"); do
    if kill -0 "$pid" 2>/dev/null; then echo running; exit 0; fi
done
echo finished "its workers exited"
"""
CANCEL = """kill $(cat "$1/pids") 2>/dev/null; exit 0"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    made = Cluster(home, logs)
    try:
        made.start_server()
        yield made
    finally:
        made.stop()


def engine_scripts(tmp_path: Path) -> dict[str, str]:
    commands = {}
    for name, text in (("submit", SUBMIT), ("status", STATUS), ("cancel", CANCEL)):
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        commands[name] = f'bash {path} "$@"'
    return commands


def test_a_command_queue_starts_workers_that_run_the_jobs_and_leave(cluster: Cluster,
                                                                    tmp_path: Path) -> None:
    commands = engine_scripts(tmp_path)
    added = cluster.cli("alloc", "add", "command", "--name", "c",
                        "--submit", commands["submit"], "--status", commands["status"],
                        "--cancel", commands["cancel"], "--max-workers", "2", "--backlog", "2",
                        "--cores", "1", "--time-limit", "10m", "--idle-timeout", "3s",
                        "--json", "--", "--queue=fast")
    assert added.returncode == 0, added.stderr
    AllocQueueInfo.model_validate(json.loads(added.stdout))
    ledger = tmp_path / "ledger"
    jobs = "".join(f"echo {i} >> {ledger}\n" for i in range(12))
    assert cluster.cli("add", "-f", "-", input=jobs).returncode == 0
    wait_until(lambda: cluster.api("GET", "/status")["totals"].get("done", 0) == 12,
               timeout=180, interval=0.5, message="12 jobs done by the queue's workers")
    assert sorted(ledger.read_text().split(), key=int) == [str(i) for i in range(12)]
    workers = cluster.api("GET", "/workers")["workers"]
    assert workers and all(w["provider"].startswith("command:c/") for w in workers)

    def ended() -> dict[str, object] | None:
        info = cluster.api("GET", "/alloc/c")
        return info if info["history"] and all(a["state"] == "finished"
                                               for a in info["history"]) else None

    info = wait_until(ended, timeout=120, interval=1, message="the allocations to end")
    AllocQueueInfo.model_validate(info)
    first = info["history"][0]  # type: ignore[index]
    assert first["engine_id"] == first["work_dir"] and first["joined"] == 1
    assert first["reason"] == "its workers exited"
    assert (Path(first["work_dir"]) / "engine-args").read_text().strip() == "--queue=fast"
    AllocQueueList.model_validate(cluster.api("GET", "/alloc"))
    log = cluster.api("GET", "/alloc/c/log", params={"allocation": first["id"]})
    AllocLog.model_validate(log)
    assert "idle for" in log["data"]
    removed = cluster.api("DELETE", "/alloc/c")
    AllocRemoved.model_validate(removed)
    assert removed == {"name": "c", "removed": True, "cancelled": 0}


def test_bad_options_are_one_line_and_exit_2(cluster: Cluster) -> None:
    def refused(*args: str) -> str:
        result = cluster.cli("alloc", *args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        return result.stderr

    slurm = ("add", "slurm", "--max-workers", "2")
    assert "--time-limit" in refused(*slurm, "--time-limit", "soon")
    assert "--workers-per-alloc" in refused(*slurm, "--time-limit", "1h",
                                            "--workers-per-alloc", "3")
    assert "--memory" in refused(*slurm, "--time-limit", "1h", "--memory", "lots")
    assert "--max-workers" in refused("add", "slurm", "--max-workers", "0", "--time-limit", "1h")
    assert "QUEUE" in refused("info", "../etc")
    assert "no allocation queue named 'nope'" in cluster.cli("alloc", "info", "nope").stderr

"""`shoal worker --count N`: N worker processes on one host, stopped together."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.cluster import Cluster, wait_until


def test_count_starts_n_named_workers_that_share_the_host_and_stop_together(
        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "home", logs)
    cluster.start_server()
    try:
        parent = cluster._spawn("workers", ["worker", "--count", "3", "--name", "box",
                                            "--cores", "1", "--started-by", "ssh"])
        names = {"box-1", "box-2", "box-3"}

        def connected() -> dict[str, dict[str, object]]:
            return {w["name"]: w for w in cluster.api("GET", "/workers")["workers"]
                    if w["connected"]}

        wait_until(lambda: names <= set(connected()), timeout=120, message="three workers")
        workers = connected()
        assert all(workers[n]["resources"]["cores"] == 1 for n in names)  # type: ignore[index]
        assert {workers[n]["provider"] for n in names} == {"ssh"}
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
        wait_until(lambda: not names & set(connected()), timeout=60, message="all gone")
        bad = cluster.cli("worker", "--count", "0")
        assert bad.returncode == 2 and "--count" in bad.stderr
    finally:
        cluster.stop()

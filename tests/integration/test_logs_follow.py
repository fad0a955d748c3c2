"""`shoal logs` of a running job: what there is so far; with --follow, output as it comes."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from .cluster import SHOAL, Cluster, wait_until

SLOW = "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done"
HOSTILE = (r"printf '<script>alert(1)</script>\n\033[2J\033]0;owned\007\033[31mred\033[0m\n'; "
           r"printf '\377\376 bad utf-8\n'; sleep 2; echo end")


def _add(cluster: Cluster, cmd: str) -> int:
    job_id: int = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": cmd, "cwd": "/", "group": "logs"}]})["ids"][0]
    return job_id


def test_logs_of_a_running_job_show_what_there_is_so_far(cluster: Cluster) -> None:
    job_id = _add(cluster, SLOW)
    cluster.wait_state(job_id, "running")
    wait_until(lambda: "line 2" in cluster.cli("logs", str(job_id)).stdout, timeout=30,
               message="the output so far")
    assert cluster.job(job_id)["state"] == "running"


def test_follow_streams_output_while_the_job_runs_and_stops_when_it_ends(
        cluster: Cluster) -> None:
    job_id = _add(cluster, SLOW)
    follower = subprocess.Popen([*SHOAL, "logs", str(job_id), "-f"], env=cluster.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        seen_at = time.monotonic()
        assert first == "line 1\n"
        # The first line arrived while the job still had seconds to go.
        assert cluster.job(job_id)["state"] == "running"
        rest, errors = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, errors
    assert first + rest == "".join(f"line {i}\n" for i in range(1, 7))
    assert time.monotonic() - seen_at > 2  # it kept following, then stopped at the end
    assert cluster.job(job_id)["state"] == "done"


def test_hostile_output_reaches_a_terminal_defused(cluster: Cluster) -> None:
    job_id = _add(cluster, HOSTILE)
    cluster.wait_state(job_id, "running")
    main, secondary = pty.openpty()
    follower = subprocess.Popen([*SHOAL, "logs", str(job_id), "--follow"], env=cluster.env,
                                stdout=secondary, stderr=subprocess.PIPE)
    os.close(secondary)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the follower closed its end
                    break
                if not chunk:
                    break
                shown += chunk
            elif follower.poll() is not None:
                break
        follower.wait(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
        os.close(main)
    text = shown.decode("utf-8", errors="strict")  # valid UTF-8 on the terminal
    assert "\x1b" not in text and "\x07" not in text
    assert "<script>alert(1)</script>" in text  # a terminal does not run HTML: shown as is
    assert "red" in text and "end" in text
    assert "\ufffd" in text  # the invalid bytes, replaced

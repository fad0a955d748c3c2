"""`shoal report`: a self-contained page and a PNG, from a server or from `shoal run`'s state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .cluster import SHOAL, Cluster


def _check_outputs(html: Path, png: Path) -> str:
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 4  # plots inlined: nothing to fetch
    assert "src=\"http" not in page and "<script" not in page
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    return page


def test_report_of_a_shoal_run_from_its_state_dir(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo one\nsleep 0.2\nexit 4\necho '<script>alert(1)</script>'\n")
    env = {**os.environ}
    env.pop("SHOAL_HOME", None)
    ran = subprocess.run([*SHOAL, "run", str(jobs), "-j", "2"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, ran.stderr  # one job failed
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    run_dir = tmp_path / ".shoal" / "runs" / "jobs.txt"
    kept = ("shoal.db", "shoal.db-sealed")
    before = {name: (run_dir / name).read_bytes() for name in kept}
    made = subprocess.run([*SHOAL, "report", "--state-dir", str(tmp_path / ".shoal"),
                           "--html", str(html), "--png", str(png)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    # Read only: the run's database and its seal are as the run left them.
    assert {name: (run_dir / name).read_bytes() for name in kept} == before
    page = _check_outputs(html, png)
    assert "exit code 4" in page
    assert "<th>jobs</th><td>4</td>" in page


def test_report_of_a_group_from_a_server(cluster: Cluster, tmp_path: Path) -> None:
    added = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": f"sleep 0.{n}; echo {n}", "cwd": "/", "group": "plotted"} for n in range(6)]
        + [{"cmd": "exit 9", "cwd": "/", "group": "plotted"},
           {"cmd": "true", "cwd": "/", "group": "elsewhere"}]})
    for job_id in added["ids"]:
        cluster.wait_state(job_id, "done", "failed", timeout=60)
    html, png = tmp_path / "group.html", tmp_path / "group.png"
    made = cluster.cli("report", "--group", "plotted", "--html", str(html), "--png", str(png))
    assert made.returncode == 0, made.stderr
    page = _check_outputs(html, png)
    assert "<th>jobs</th><td>7</td>" in page and "exit code 9" in page
    missing = cluster.cli("report", "--group", "nothing-here", "--html", str(html))
    assert missing.returncode == 2 and "no jobs in group nothing-here" in missing.stderr

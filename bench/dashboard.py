"""The dashboard with a million jobs queued: first paint and a page of jobs.

Starts a real `shoal server` (plain HTTP on loopback, no workers, so every job stays queued),
adds N jobs through the API, logs in as a browser does, and times the dashboard's pages and
/metrics, each `--repeat` times (the median is reported). The API's own page of 50 jobs is
timed in the same run as the reference. With Debian's chromium and Playwright, the first
contentful paint of the groups and jobs pages is read from the browser's performance timeline.

    python bench/dashboard.py [--jobs 1000000] [--repeat 5] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import compile_shoal, replace_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dashboard.json"
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- dashboard:start -->", "<!-- dashboard:end -->"
CHROMIUM = "/usr/bin/chromium"
BATCH = 100_000


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {**os.environ, "SHOAL_HOME": str(home)}
    log = open(home.parent / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "server", "--port", "0", "--insecure-http",
         "--rate-limit", "100000"], env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = json.loads((home / "server.json").read_text())
            if connection.get("pid") == server.pid:
                url = connection["url"]
                httpx.get(f"{url}/api/v1/version", timeout=2).raise_for_status()
                return server, url, connection["admin_token"]
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start; see " + str(home.parent / "server.log"))


def add_jobs(url: str, token: str, count: int) -> float:
    started = time.perf_counter()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=1800) as client:
        for first in range(0, count, BATCH):
            jobs = [{"cmd": f"echo job {n}", "cwd": "/", "group": f"batch-{n // BATCH}"}
                    for n in range(first, min(count, first + BATCH))]
            client.post(f"{url}/api/v1/jobs", json={"jobs": jobs}).raise_for_status()
            print(f"  added {min(count, first + BATCH)} jobs", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def login(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=600, headers={"Origin": url})
    answer = client.post("/login", data={"credential": token})
    if answer.status_code != 303:
        raise SystemExit(f"login failed: {answer.status_code}")
    if "shoal_session" not in client.cookies:
        raise SystemExit("login failed")
    return client


def timed(client: httpx.Client, path: str, repeat: int,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    seconds, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path, headers=headers)
        seconds.append(time.perf_counter() - started)
        answer.raise_for_status()
        size = len(answer.content)
    return {"path": path, "median_ms": statistics.median(seconds) * 1000,
            "max_ms": max(seconds) * 1000, "bytes": size}


def paints(url: str, cookie: str, paths: list[str]) -> dict[str, float] | str:
    """First contentful paint of each page in Chromium, or why it could not be measured."""
    if not Path(CHROMIUM).exists():
        return "chromium is not installed"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    found: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        context = browser.new_context()
        host = url.split("://", 1)[1].split(":")[0]
        context.add_cookies([{"name": "shoal_session", "value": cookie, "domain": host,
                              "path": "/"}])
        page = context.new_page()
        page.set_default_timeout(600_000)
        for path in paths:
            page.goto(url + path, wait_until="load")
            page.wait_for_timeout(500)  # paint entries land after the frame is drawn
            paint, loaded = page.evaluate(
                "[(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
                " || null, performance.getEntriesByType('navigation')[0].loadEventEnd]")
            # Headless Chromium does not always record a paint entry: the load event, then.
            found[path] = float(paint if paint is not None else loaded)
        browser.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    compile_shoal()
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-dashboard-"))
    home = work / "home"
    server, url, token = start_server(home)
    try:
        add_seconds = add_jobs(url, token, args.jobs)
        browser = login(url, token)
        api = httpx.Client(base_url=url, timeout=600,
                           headers={"Authorization": f"Bearer {token}"})
        middle = args.jobs // 2
        rows = [
            ("groups page (first load)", timed(browser, "/", args.repeat)),
            ("jobs page, newest 50", timed(browser, "/ui/jobs", args.repeat)),
            ("jobs page, queued, from the middle",
             timed(browser, f"/ui/jobs?state=queued&order=asc&after={middle}", args.repeat)),
            ("jobs page, live refresh (fragment)",
             timed(browser, "/ui/jobs", args.repeat, {"HX-Request": "true"})),
            ("jobs page, one group", timed(browser, "/ui/jobs?group=batch-3", args.repeat)),
            ("jobs page, text in the command (no index)",
             timed(browser, f"/ui/jobs?q=job+{middle}", args.repeat)),
            ("a job's page", timed(browser, f"/ui/jobs/{middle}", args.repeat)),
            ("/metrics", timed(api, "/metrics", args.repeat)),
            ("API: GET /api/v1/jobs?limit=50 (reference)",
             timed(api, "/api/v1/jobs?limit=50", args.repeat)),
        ]
        painted = paints(url, browser.cookies["shoal_session"], ["/", "/ui/jobs"])
        rss = int(subprocess.run(["ps", "-o", "rss=", "-p", str(server.pid)],
                                 capture_output=True, text=True).stdout.strip() or 0) * 1024
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    result = {"when": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "jobs": args.jobs, "repeat": args.repeat, "add_seconds": add_seconds,
              "server_rss_bytes": rss, "rows": [{"what": w, **r} for w, r in rows],
              "first_contentful_paint_ms": painted}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = ["| request | median | slowest | size |", "|---|---:|---:|---:|"]
    for what, row in rows:
        table.append(f"| {what} | {row['median_ms']:.1f} ms | {row['max_ms']:.1f} ms | "
                     f"{row['bytes'] / 1024:.1f} KiB |")
    if isinstance(painted, dict):
        paint = ", ".join(f"`{path}` {ms:.0f} ms" for path, ms in painted.items())
        paint_line = ("First contentful paint in Chromium, from navigation (or the load "
                      f"event where headless Chromium records no paint): {paint}.")
    else:
        paint_line = f"First contentful paint not measured: {painted}."
    body = (f"Measured {result['when']} on {result['machine']} (shared with other work), "
            f"{args.jobs:,} jobs queued in {args.jobs // BATCH or 1} groups, no workers; "
            f"median of {args.repeat}. Adding them took {add_seconds:.0f} s; the server held "
            f"{rss / 2**30:.1f} GiB.\n\n" + "\n".join(table) + f"\n\n{paint_line}\n"
            "\nThe search for text in commands reads every row (`instr` over the jobs table, "
            "no index): the one request here whose cost grows with the queue. Each page's cost "
            "otherwise is its page's: keyset pages by id, and counts kept by the server. "
            "The filters timed here match many jobs; one that few match (a state, worker or "
            "owner rare among a million) reads rows by id until it has a page, up to every "
            "row, as the text search does.\n")
    print(body)
    if args.write_docs:
        replace_section(DOCS, START, END, body, scaffold=(
            "## The dashboard with a million jobs\n\n"
            "`python bench/dashboard.py --write-docs`: the dashboard's pages against a queue of "
            "a million jobs, timed over HTTP as a logged-in browser asks for them, with the "
            "API's page of 50 jobs as the reference in the same run. Pages are keyset pages "
            "read from the database, so their cost does not grow with the queue; only a search "
            "for text in commands reads every row.\n\n" + f"{START}\n{END}\n"))


if __name__ == "__main__":
    main()

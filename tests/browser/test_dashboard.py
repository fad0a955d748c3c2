"""The dashboard as a person uses it, in real Chromium against a real server and workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.integration.cluster import Cluster, wait_until

from .conftest import TIMEOUT_MS


def _page(browser: Any) -> Any:
    """A fresh browser context: no cookies. The page's CSP stays in force (Playwright's own
    string evaluations are refused by it too, so the tests wait on selectors)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []  # console errors (a CSP violation shows here) and dialogs
    page.on("console", lambda message: message.type == "error"
            and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    return page


def _login(page: Any, cluster: Cluster, credential: str) -> None:
    page.goto(cluster.url + "/")
    assert page.url.endswith("/login")  # no session yet: the login page
    page.fill("#credential", credential)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Groups')")
    assert credential not in page.url


def _shot(page: Any, folder: Path, name: str, *expected: str) -> Path:
    """A screenshot a person can look at, checked: a real PNG, with the expected text
    visible on the page it shows."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000, path
    visible = page.inner_text("body")
    for text in expected:
        assert text in visible, f"{text!r} not visible in {path}"
    return path


def _user(cluster: Cluster, name: str) -> str:
    token: str = cluster.api("POST", "/tokens", json={"role": "user", "name": name})["token"]
    return token


def _add(cluster: Cluster, token: str, *jobs: dict[str, Any]) -> list[int]:
    answer = httpx.post(f"{cluster.url}/api/v1/jobs", json={"jobs": list(jobs)},
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answer.raise_for_status()
    ids: list[int] = answer.json()["ids"]
    return ids


def test_login_and_watch_a_group_bar_move(browser: Any, web_cluster: Cluster,
                                          screenshots: Path) -> None:
    page = _page(browser)
    _login(page, web_cluster, web_cluster.connection["admin_token"])
    page.evaluate("window.notReloaded = true")
    admin = web_cluster.connection["admin_token"]
    _add(web_cluster, admin, *({"cmd": f"sleep 1.5; echo {n}", "cwd": "/", "group": "moving"}
                               for n in range(12)))
    row = "tr[data-group='moving']"
    page.wait_for_selector(row)  # appeared without a reload

    def done_count() -> int:
        rect = page.query_selector(f"{row} rect[data-state='done']")
        return int(rect.get_attribute("data-count")) if rect else 0

    seen = set()
    deadline_counts = wait_until(lambda: seen.add(done_count()) or done_count() == 12,
                                 timeout=90, interval=0.2, message="the bar to fill")
    assert deadline_counts
    # The bar moved through intermediate states while the jobs ran, without a reload.
    assert len(seen - {0, 12}) >= 1, seen
    assert page.evaluate("window.notReloaded") is True
    assert "12" in page.inner_text(f"{row} td.num[data-state='done']")
    _shot(page, screenshots, "groups", "moving", "Groups")
    assert not page.problems, page.problems


def test_a_connection_string_logs_in_and_logging_out_ends_the_session(
        browser: Any, web_cluster: Cluster, screenshots: Path) -> None:
    token = _user(web_cluster, "carol")
    connection = f"shoal://{token}@{web_cluster.url.split('://')[1]}?tls=off"
    page = _page(browser)
    _login(page, web_cluster, connection)
    assert "carol (user)" in page.inner_text("header")
    cookies = page.context.cookies()
    [session] = [c for c in cookies if c["name"] == "shoal_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert token not in session["value"]
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    page.click("text=Log out")
    page.wait_for_selector("#credential")
    page.goto(web_cluster.url + "/ui/jobs")
    assert page.url.endswith("/login")
    # A worker token is refused.
    page.fill("#credential", web_cluster.connection["worker_token"])
    page.click("button[type=submit]")
    page.wait_for_selector(".message.error")
    _shot(page, screenshots, "login-refused", "cannot open the dashboard")


def test_job_output_arrives_live(browser: Any, web_cluster: Cluster, screenshots: Path) -> None:
    admin = web_cluster.connection["admin_token"]
    [job_id] = _add(web_cluster, admin, {
        "cmd": "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 1; done; echo oops >&2",
        "cwd": "/", "group": "live"})
    web_cluster.wait_state(job_id, "running")
    page = _page(browser)
    _login(page, web_cluster, admin)
    page.goto(f"{web_cluster.url}/ui/jobs/{job_id}")
    page.wait_for_selector("#live-stdout:has-text('line 2')")
    assert web_cluster.job(job_id)["state"] == "running"  # arrived while it ran
    _shot(page, screenshots, "job-live", "Output, live", "line 2")
    page.wait_for_selector("#live-stdout:has-text('line 4')")
    # When it ends, the page shows its state and kept output without a reload.
    page.wait_for_selector("#job-state:has-text('done')", timeout=60_000)
    page.wait_for_selector("#job pre.output[data-stream='stderr']:has-text('oops')")
    assert page.is_hidden("#live-output")
    _shot(page, screenshots, "job-done", "line 8", "oops", "done")
    assert not page.problems, page.problems


def test_kill_a_job_from_the_page(browser: Any, web_cluster: Cluster, screenshots: Path) -> None:
    token = _user(web_cluster, "dave")
    [job_id] = _add(web_cluster, token, {"cmd": "echo started; sleep 600", "cwd": "/",
                                          "group": "victims"})
    web_cluster.wait_state(job_id, "running")
    page = _page(browser)
    page.on("dialog", lambda dialog: dialog.accept())  # "Kill job N?"
    _login(page, web_cluster, token)
    page.goto(f"{web_cluster.url}/ui/jobs/{job_id}")
    page.wait_for_selector("#job-state:has-text('running')")
    page.click("#job-actions button:has-text('Kill')")
    page.wait_for_selector("#flash:has-text('1 job killed')")
    page.wait_for_selector("#job-state:has-text('cancelled')", timeout=60_000)
    assert web_cluster.job(job_id)["state"] == "cancelled"
    assert "killed by dave" in (web_cluster.job(job_id)["fail_reason"] or "")
    _shot(page, screenshots, "job-killed", "cancelled", "killed by dave")


def test_bulk_actions_from_the_jobs_table(browser: Any, web_cluster: Cluster,
                                          screenshots: Path) -> None:
    admin = web_cluster.connection["admin_token"]
    ids = _add(web_cluster, admin, *({"cmd": f"exit {n + 1}", "cwd": "/", "group": "bulk"}
                                     for n in range(3)))
    for job_id in ids:
        web_cluster.wait_state(job_id, "failed")
    page = _page(browser)
    page.on("dialog", lambda dialog: dialog.accept())
    _login(page, web_cluster, admin)
    page.goto(f"{web_cluster.url}/ui/jobs?group=bulk&state=failed")
    page.wait_for_selector("tr[data-job]")
    page.check("input.select-all")
    page.click(".actions button:has-text('Remove')")
    page.wait_for_selector("#flash:has-text('3 jobs removed')")
    page.wait_for_selector("td.empty:has-text('No jobs match')")
    _shot(page, screenshots, "jobs-removed", "3 jobs removed")


def test_a_user_is_denied_another_users_job(browser: Any, web_cluster: Cluster,
                                            screenshots: Path) -> None:
    alice, bob = _user(web_cluster, "alice"), _user(web_cluster, "bob")
    [job_id] = _add(web_cluster, alice, {"cmd": "echo alice-secret-output", "cwd": "/",
                                          "group": "alices"})
    web_cluster.wait_state(job_id, "done")
    page = _page(browser)
    _login(page, web_cluster, bob)
    assert "alices" not in page.inner_text("main")
    page.goto(f"{web_cluster.url}/ui/jobs/{job_id}")
    assert "does not exist or is not yours" in page.inner_text("main")
    assert "alice-secret-output" not in page.content()
    _shot(page, screenshots, "denied", "does not exist or is not yours")
    answer = page.request.get(f"{web_cluster.url}/ui/jobs/{job_id}/output?offset=0")
    assert answer.status == 404
    page.goto(f"{web_cluster.url}/ui/jobs?group=alices")
    assert "No jobs match" in page.inner_text("main")
    # Alice sees it.
    other = _page(browser)
    _login(other, web_cluster, alice)
    other.goto(f"{web_cluster.url}/ui/jobs/{job_id}")
    other.wait_for_selector("pre.output:has-text('alice-secret-output')")


def test_hostile_output_and_names_are_shown_as_text(browser: Any, web_cluster: Cluster,
                                                   screenshots: Path) -> None:
    admin = web_cluster.connection["admin_token"]
    hostile = (r"printf '<script>alert(1)</script><img src=x onerror=alert(2)>\n"
               r"\033[31mred\033[0m \033]0;title\007\n\377\376 bad bytes\n'")
    [job_id] = _add(web_cluster, admin, {"cmd": hostile, "cwd": "/", "group": "hostile",
                                          "name": "<b>bold</b>", "env": {"<i>": "secret"}})
    web_cluster.wait_state(job_id, "done")
    page = _page(browser)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _login(page, web_cluster, admin)
    page.goto(f"{web_cluster.url}/ui/jobs/{job_id}")
    output = page.inner_text("#job pre.output[data-stream='stdout']")
    assert "<script>alert(1)</script><img src=x onerror=alert(2)>" in output
    assert "\x1b" not in output and "\x07" not in output and "red" in output
    assert "\ufffd" in output  # invalid UTF-8, replaced
    assert page.query_selector("main script, main img, main b, main i") is None
    assert "<b>bold</b>" in page.inner_text("h1")
    assert "secret" not in page.inner_text("main")  # env names only
    page.goto(f"{web_cluster.url}/ui/jobs?group=hostile")
    page.wait_for_selector("tr[data-job]")
    assert page.query_selector("main img") is None
    assert dialogs == []
    _shot(page, screenshots, "hostile", "<script>alert(1)</script>")
    assert not page.problems, page.problems


def test_workers_and_ensembles_pages(browser: Any, web_cluster: Cluster,
                                     screenshots: Path) -> None:
    admin = web_cluster.connection["admin_token"]
    _add(web_cluster, admin, {"cmd": "sleep 3", "cwd": "/", "group": "busy", "cores": 2})
    page = _page(browser)
    _login(page, web_cluster, admin)
    page.goto(f"{web_cluster.url}/ui/workers")
    page.wait_for_selector("tr[data-worker='w1']")
    page.wait_for_selector("#utilisation canvas")  # the chart drew
    page.wait_for_selector("tr[data-worker]:has-text('2 / 2')")
    _shot(page, screenshots, "workers", "w1", "w2", "Utilisation")
    assert not page.problems, page.problems


def test_an_ensemble_runs_timeline(browser: Any, web_cluster: Cluster, screenshots: Path,
                                   tmp_path: Path) -> None:
    spec = tmp_path / "pair.toml"
    spec.write_text("""
name = "pair"
timeout = "60s"

[[component]]
name = "left"
host = "w1"
command = "sleep 1; echo left"

[[component]]
name = "right"
host = "w2"
command = "sleep 2; echo right"
""")
    ran = web_cluster.cli("ensemble", "run", str(spec), cwd=tmp_path, timeout=180)
    assert ran.returncode == 0, ran.stderr
    page = _page(browser)
    _login(page, web_cluster, web_cluster.connection["admin_token"])
    page.goto(f"{web_cluster.url}/ui/ensembles")
    page.click("text=pair")
    page.wait_for_selector("svg.gantt rect.c-done")
    assert len(page.query_selector_all("svg.gantt rect")) == 2
    assert page.query_selector("svg.gantt line.stage") is not None
    _shot(page, screenshots, "ensemble", "pair", "left", "right", "Start spread", " ms")
    metrics = httpx.get(f"{web_cluster.url}/metrics", timeout=30, headers={
        "Authorization": f"Bearer {web_cluster.connection['admin_token']}"}).text
    assert "shoal_ensemble_start_spread_seconds_count 1.0" in metrics
    assert not page.problems, page.problems


def test_headers_another_users_kill_usage_and_paging(browser: Any, web_cluster: Cluster,
                                                     screenshots: Path) -> None:
    """Every page carries the strict security headers; a user's kill of another user's
    running job changes nothing; a job over its expected time is marked so; the jobs table
    pages with Next and Previous, never repeating or skipping a job."""
    alice, bob = _user(web_cluster, "alice"), _user(web_cluster, "bob")
    [running] = _add(web_cluster, alice, {"cmd": "sleep 600", "cwd": "/", "group": "mine"})
    [slow] = _add(web_cluster, bob, {"cmd": "sleep 1.5", "cwd": "/", "group": "slow",
                                     "time_seconds": 0.5})
    many = _add(web_cluster, bob, *({"cmd": f"echo {n}", "cwd": "/", "group": "many"}
                                    for n in range(120)))
    web_cluster.wait_state(running, "running")
    web_cluster.wait_state(slow, "done")
    page = _page(browser)
    _login(page, web_cluster, bob)
    for path in ("/", "/ui/jobs", f"/ui/jobs/{slow}", "/ui/workers", "/ui/ensembles"):
        headers = page.request.get(web_cluster.url + path).headers
        assert "default-src 'none'" in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert (headers["x-frame-options"], headers["x-content-type-options"],
                headers["referrer-policy"]) == ("DENY", "nosniff", "no-referrer"), path

    answer = page.request.post(f"{web_cluster.url}/ui/actions/kill",
                               form={"ids": str(running)},
                               headers={"Origin": web_cluster.url})
    assert answer.status == 200 and f"job {running} does not exist" in answer.text()
    assert web_cluster.job(running)["state"] == "running"

    page.goto(f"{web_cluster.url}/ui/jobs/{slow}")
    over = page.inner_text("tr.over")
    assert "wall time" in over and "over" in over
    assert "over" not in page.inner_text("tr:has-text('memory')")
    _shot(page, screenshots, "usage-over", "Asked for and used", "over")

    seen: list[int] = []
    page.goto(f"{web_cluster.url}/ui/jobs?group=many")
    while True:
        page.wait_for_selector("tr[data-job]")
        seen += [int(row.get_attribute("data-job"))
                 for row in page.query_selector_all("tr[data-job]")]
        following = page.query_selector("a[rel=next]")
        if following is None:
            break
        following.click()
        page.wait_for_load_state()
    assert sorted(seen) == sorted(many) and len(seen) == len(set(seen))
    page.click("a[rel=prev]")
    page.wait_for_selector("tr[data-job]")
    assert len(page.query_selector_all("tr[data-job]")) == 50
    assert not page.problems, page.problems

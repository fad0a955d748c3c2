"""Faults done to real processes: the server killed, a worker killed, frozen, or cut off.

After each fault the same two things are checked, from what the jobs themselves wrote to a
ledger (see `ledger.py`), not from what the server believes:

- every job ended exactly once: no id missing, none twice;
- no two copies of one job were ever alive at the same time.

and then the server's records are checked against them. Each test prints its figures (faults,
jobs, lost attempts, duplicates, times) on a line starting with ``FAULTS``; with
SHOAL_FAULT_REPORT=FILE they are also appended to FILE as JSON lines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import wait_until

from .conftest import require_system
from .harness import FaultCluster
from .ledger import LedgerReport, ticking_work
from .netns import NetnsHost

LEASE = 2.0
GRACE = 4.0
SERVER = ("--retry-base", "0.2", "--lease-timeout", str(LEASE), "--lost-grace", str(GRACE))
LONG_GRACE = 10.0
SERVER_LONG_GRACE = ("--retry-base", "0.2", "--lease-timeout", str(LEASE),
                     "--lost-grace", str(LONG_GRACE))


def report_figures(test: str, **figures: Any) -> None:
    line = {"test": test, **figures}
    print(f"FAULTS {json.dumps(line)}")
    destination = os.environ.get("SHOAL_FAULT_REPORT")
    if destination:
        with open(destination, "a") as out:
            out.write(json.dumps(line) + "\n")


def server_problems(faults: FaultCluster, ids: list[int], ledger: LedgerReport,
                    details_for: Collection[int] = ()) -> list[str]:
    """Where the server's records disagree with the ledger. Jobs that ran more than once, or
    lost an attempt, or are in `details_for`, have their attempt history checked: the copy
    that finished must be the attempt the server recorded as done."""
    problems = []
    jobs = faults.jobs()
    for job_id in ids:
        job = jobs[job_id]
        if job["state"] != "done":
            problems.append(f"job {job_id} is {job['state']} ({job['fail_reason']})")
        if job["attempts"] < 1:
            problems.append(f"job {job_id} has {job['attempts']} attempts")
        elif job["state"] == "done" and job["lost_attempts"] != job["attempts"] - 1:
            # Every copy of these jobs exits 0: all attempts but the one that finished were
            # lost, and the retry budget (attempts - lost_attempts) depends on the count.
            problems.append(f"job {job_id}: accounting: done after {job['attempts']} attempts "
                            f"of which {job['lost_attempts']} counted lost")
        copies = ledger.copies.get(job_id, [])
        if job["attempts"] > 1 or job["lost_attempts"] or len(copies) > 1 or job_id in details_for:
            history = faults.job(job_id)["attempt_history"]
            leases = {a["lease_id"] for a in history}
            exited = sorted(a["lease_id"] for a in history if a["outcome"] == "exited")
            finished = sorted(c.lease_id for c in copies if c.finished)
            if exited != finished:
                attempts = [(a["lease_id"], a["worker"], a["outcome"]) for a in history]
                problems.append(f"job {job_id}: the server has leases {exited} exited, the "
                                f"ledger has {finished} finished; attempts {attempts}")
            strangers = [c.lease_id for c in copies if c.lease_id not in leases]
            if strangers:
                problems.append(f"job {job_id}: copies ran under leases {strangers} the server "
                                f"never gave it")
    return problems


def ledger_starts(faults: FaultCluster) -> int:
    return faults.ledger.read_text().count(" start ") if faults.ledger.exists() else 0


def alive(pid: int, faults: FaultCluster) -> bool:
    """Is this copy of a job (a bash writing to our ledger) still running?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and str(faults.ledger).encode() in cmdline


# ---- the skip-or-fail rule -------------------------------------------------------------------


def test_a_missing_facility_skips_or_fails_as_the_environment_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_system(None)  # nothing missing: carries on
    monkeypatch.delenv("SHOAL_REQUIRE_SYSTEM_TESTS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_system("ip netns")
    monkeypatch.setenv("SHOAL_REQUIRE_SYSTEM_TESTS", "1")
    with pytest.raises(pytest.fail.Exception):
        require_system("ip netns")


# ---- the server ------------------------------------------------------------------------------


def test_server_killed_five_times_during_thousands_of_jobs(faults: FaultCluster) -> None:
    seed = int(os.environ.get("SHOAL_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    faults.start_server(*SERVER)
    faults.spawn_worker("w1", "--cores", "4")
    faults.spawn_worker("w2", "--cores", "4")
    # 0-0.19 s each on 8 slots: more work than the five faults take to do, however fast
    # the server gets.
    ids = faults.add_ledger_jobs(["sleep 0.$((RANDOM % 2))$((RANDOM % 10))"] * 2000)
    began = time.monotonic()

    restarts = []
    for _ in range(5):
        time.sleep(rng.uniform(0.0, 2.0))
        states = [job["state"] for job in faults.jobs().values()]
        assert states.count("done") < len(ids), "the jobs finished before the fifth fault"
        faults.kill_server()
        api_seconds, workers_seconds = faults.restart_server(workers=2)
        restarts.append({"done_at_kill": states.count("done"),
                         "running_at_kill": states.count("running"),
                         "api_seconds": round(api_seconds, 3),
                         "workers_seconds": round(workers_seconds, 3)})

    jobs = faults.wait_final(ids, timeout=120)
    elapsed = time.monotonic() - began
    faults.wait_ledger_quiet()
    ledger = faults.ledger_report(ids)
    report_figures(
        "server_killed_five_times", seed=seed, faults=len(restarts),
        seconds=round(elapsed, 1), restarts=restarts,
        lost_attempts=sum(job["lost_attempts"] for job in jobs.values()),
        reruns=sum(job["attempts"] - 1 for job in jobs.values() if job["attempts"] > 1),
        **ledger.summary())
    problems = server_problems(faults, ids, ledger)
    consistent = ledger.ok and not problems
    assert consistent, ledger.describe() + "\n" + "\n".join(problems[:20])


# ---- a worker killed -------------------------------------------------------------------------


def _four_jobs_running_on(faults: FaultCluster, worker: str, short: float,
                          long: float) -> list[int]:
    """Two short and two long ticking jobs, all started on `worker` (the only one yet)."""
    ids = faults.add_ledger_jobs([ticking_work(short)] * 2 + [ticking_work(long)] * 2)
    wait_until(lambda: ledger_starts(faults) == 4, timeout=20, message="four jobs to start")
    assert {faults.job(i)["worker"] for i in ids} == {worker}
    return ids


def test_worker_killed_mid_job(faults: FaultCluster) -> None:
    """kill -9 of the worker process alone: its jobs, in sessions of their own, are orphaned
    as in a real crash of the agent. They must not go on running beside their reruns, nor
    finish a second time."""
    faults.start_server(*SERVER)
    faults.spawn_worker("victim", "--cores", "4")
    ids = _four_jobs_running_on(faults, "victim", short=2.5, long=7)
    pids = [c.pid for copies in faults.ledger_report(ids).copies.values() for c in copies]
    time.sleep(0.5)

    faults.signal_worker("victim", signal.SIGKILL)
    killed_at = time.monotonic()
    faults.workers["victim"].wait()
    time.sleep(1.0)
    orphans = [pid for pid in pids if alive(pid, faults)]
    faults.spawn_worker("other", "--cores", "4")  # within the grace: the reruns go there

    jobs = faults.wait_final(ids, timeout=60)
    rerun_seconds = time.monotonic() - killed_at
    faults.wait_ledger_quiet(seconds=1.5)
    ledger = faults.ledger_report(ids)
    report_figures("worker_killed", faults=1,
                   orphans_alive_1s_after=len(orphans),
                   lost_attempts=sum(job["lost_attempts"] for job in jobs.values()),
                   seconds_to_all_done=round(rerun_seconds, 1), **ledger.summary())
    assert orphans == [], f"the killed worker's jobs outlived it: pids {orphans}"
    ok = ledger.ok
    assert ok, ledger.describe()
    for job_id in ids:
        job = jobs[job_id]
        assert (job["state"], job["worker"], job["attempts"], job["lost_attempts"]) \
            == ("done", "other", 2, 1), job
        history = faults.job(job_id)["attempt_history"]
        assert [(a["worker"], a["outcome"]) for a in history] \
            == [("victim", None), ("other", "exited")]
    problems = server_problems(faults, ids, ledger)
    assert not problems, "\n".join(problems)


def test_worker_killed_and_restarted_under_the_same_name(faults: FaultCluster) -> None:
    """A supervisor restarts the crashed agent at once: the server hears that its attempts
    are gone and reruns them without waiting for the grace; the orphans must be dead."""
    faults.start_server(*SERVER)
    faults.spawn_worker("w1", "--cores", "4")
    ids = _four_jobs_running_on(faults, "w1", short=1.0, long=6)
    time.sleep(0.3)
    faults.signal_worker("w1", signal.SIGKILL)
    faults.workers["w1"].wait()
    restarted_at = time.monotonic()
    faults.spawn_worker("w1", "--cores", "4")

    wait_until(lambda: ledger_starts(faults) >= 8, timeout=GRACE - 1,
               message="the reruns to start before the lost grace is over")
    rerun_after = time.monotonic() - restarted_at
    jobs = faults.wait_final(ids, timeout=30)
    faults.wait_ledger_quiet(seconds=1.5)
    ledger = faults.ledger_report(ids)
    report_figures("worker_killed_and_restarted", faults=1,
                   reruns_started_after_seconds=round(rerun_after, 2), **ledger.summary())
    ok = ledger.ok
    assert ok, ledger.describe()
    assert [jobs[i]["attempts"] for i in ids] == [2, 2, 2, 2]
    problems = server_problems(faults, ids, ledger)
    assert not problems, "\n".join(problems)


# ---- a worker frozen -------------------------------------------------------------------------


def test_worker_stopped_past_its_lease_is_adopted_when_continued(faults: FaultCluster) -> None:
    """SIGSTOP the worker (its jobs run on: other sessions) past its lease, SIGCONT it within
    the grace (about 4 s). Two of its jobs finish while it is frozen, two are still running
    when it wakes; all four must be adopted: one attempt each, no rerun."""
    faults.start_server(*SERVER_LONG_GRACE)
    faults.spawn_worker("frozen", "--cores", "4")
    ids = _four_jobs_running_on(faults, "frozen", short=2.5, long=8)

    faults.signal_worker("frozen", signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        faults.spawn_worker("other", "--cores", "4")  # where a wrongly requeued job would go
        wait_until(lambda: all(faults.job(i)["state"] == "lost" for i in ids),
                   timeout=LEASE + 3, message="the server to count the attempts lost")
        lost_after = time.monotonic() - stopped_at
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped_at)))
    finally:
        faults.signal_worker("frozen", signal.SIGCONT)
    stopped_for = time.monotonic() - stopped_at

    jobs = faults.wait_final(ids, timeout=30)
    faults.wait_ledger_quiet()
    ledger = faults.ledger_report(ids)
    report_figures("worker_sigstop", faults=1, stopped_seconds=round(stopped_for, 2),
                   lost_after_seconds=round(lost_after, 2),
                   lost_attempts=sum(job["lost_attempts"] for job in jobs.values()),
                   **ledger.summary())
    problems = server_problems(faults, ids, ledger, details_for=set(ids))
    consistent = ledger.ok and not problems
    assert consistent, ledger.describe() + "\n" + "\n".join(problems)
    assert [(jobs[i]["worker"], jobs[i]["attempts"]) for i in ids] == [("frozen", 1)] * 4


def test_an_adopted_attempt_that_fails_spends_the_retry_budget(faults: FaultCluster) -> None:
    """A job with --retries 0 whose attempt was lost and then adopted, and which then fails,
    has failed once: it must end failed, not run again."""
    faults.start_server(*SERVER_LONG_GRACE)
    faults.spawn_worker("frozen", "--cores", "1")
    ids = faults.add_ledger_jobs(["sleep 4; exit 3"], retries=0)
    wait_until(lambda: ledger_starts(faults) == 1, timeout=20, message="the job to start")
    faults.signal_worker("frozen", signal.SIGSTOP)
    try:
        faults.wait_state(ids[0], "lost", timeout=LEASE + 3)
    finally:
        faults.signal_worker("frozen", signal.SIGCONT)
    faults.wait_state(ids[0], "running", timeout=LONG_GRACE)  # adopted
    faults.wait_final(ids, timeout=20)
    time.sleep(1.0)  # a wrongful retry (0.2 s backoff) would have started by now
    job = faults.job(ids[0])
    runs = ledger_starts(faults)
    report_figures("adopted_then_failed", faults=1, runs=runs, attempts=job["attempts"],
                   lost_attempts=job["lost_attempts"], state=job["state"])
    assert (job["state"], job["attempts"], runs) == ("failed", 1, 1), \
        [(a["lease_id"], a["outcome"], a["exit_code"]) for a in job["attempt_history"]]


def test_worker_stopped_past_lease_and_grace_has_its_copy_killed_before_the_rerun(
        faults: FaultCluster) -> None:
    """SIGSTOP the worker running a job for longer than lease + grace (6 s): the server gives
    the job to another worker. The stopped worker's keeper, hearing no heartbeat for the
    worker's server-lost timeout (half of lease + grace), has killed the first copy before
    then, so two copies never run at once. SIGCONT: the woken worker reports its copy killed,
    and the server takes no second result."""
    faults.start_server(*SERVER)
    faults.spawn_worker("frozen", "--cores", "1")
    ids = faults.add_ledger_jobs([ticking_work(12)])  # longer than stop + lease + grace
    wait_until(lambda: ledger_starts(faults) == 1, timeout=20, message="the job to start")
    [first] = faults.ledger_report(ids).copies[ids[0]]
    faults.spawn_worker("other", "--cores", "1")
    time.sleep(0.5)

    faults.signal_worker("frozen", signal.SIGSTOP)
    stopped_at = time.time()
    first_dead_at: float | None = None
    try:
        deadline = time.monotonic() + LEASE + GRACE + 8
        while ledger_starts(faults) < 2:
            assert time.monotonic() < deadline, "the job never started again elsewhere"
            if first_dead_at is None and not alive(first.pid, faults):
                first_dead_at = time.time()
            time.sleep(0.02)
        if first_dead_at is None and not alive(first.pid, faults):
            first_dead_at = time.time()
        time.sleep(1.0)
    finally:
        faults.signal_worker("frozen", signal.SIGCONT)
    [second] = [c for c in faults.ledger_report(ids).copies[ids[0]] if c.lease_id != first.lease_id]
    assert first_dead_at is not None, "the stopped worker's copy was alive when the rerun began"
    assert second.start is not None and first_dead_at <= second.start, \
        (f"the first copy died {first_dead_at - stopped_at:.2f} s after the stop, the second "
         f"started {second.start - stopped_at:.2f} s after it")

    wait_until(lambda: "frozen" in faults.connected_workers(), timeout=30,
               message="the stopped worker to come back")
    jobs = faults.wait_final(ids, timeout=30)
    time.sleep(1.0)  # the woken worker's report of its killed copy has had time to arrive
    ledger = faults.ledger_report(ids)
    report_figures("worker_sigstop_past_grace", faults=1,
                   killed_after_stop_seconds=round(first_dead_at - stopped_at, 2),
                   rerun_after_stop_seconds=round(second.start - stopped_at, 2),
                   margin_seconds=round(second.start - first_dead_at, 2),
                   lost_attempts=jobs[ids[0]]["lost_attempts"], **ledger.summary())
    assert ledger.ok, ledger.describe()
    assert [c.finished for c in ledger.copies[ids[0]]] == [False, True], ledger.describe()
    job = faults.job(ids[0])
    assert (job["state"], job["worker"], job["attempts"], job["exit_code"]) \
        == ("done", "other", 2, 0)
    # The woken worker reported its copy; the server refused the stale lease.
    assert [(a["worker"], a["outcome"]) for a in job["attempt_history"]] \
        == [("frozen", None), ("other", "exited")], job["attempt_history"]
    problems = server_problems(faults, ids, ledger, details_for=set(ids))
    assert not problems, "\n".join(problems)
    assert "keeper killed" in faults.log("worker-frozen")


# ---- a worker cut off ------------------------------------------------------------------------


@pytest.mark.system
def test_partitioned_worker_kills_its_copies_before_they_run_elsewhere(
        netns_host: NetnsHost, faults: FaultCluster) -> None:
    """The link to a worker in another namespace goes down past lease + grace. With
    --on-server-lost kill (the default) its copies die before the server gives the jobs to the
    worker outside; when the link comes back its reports of those copies are refused."""
    faults.host = netns_host.host_address
    faults.start_server(*SERVER)
    assert netns_host.reachable(faults.port)
    inside = ("--join", faults.join)
    faults.spawn_worker("inside", *inside, "--cores", "4", "--on-server-lost", "kill",
                        prefix=netns_host.exec_prefix())
    ids = faults.add_ledger_jobs([ticking_work(10)] * 4)  # longer than cut + lease + grace
    wait_until(lambda: ledger_starts(faults) == 4, timeout=20, message="four jobs to start")
    faults.spawn_worker("outside", "--cores", "4")
    time.sleep(0.5)

    netns_host.cut()
    cut_at = time.monotonic()
    try:
        wait_until(lambda: ledger_starts(faults) == 8, timeout=LEASE + GRACE + 4,
                   message="the jobs to start again outside")
        rerun_after = time.monotonic() - cut_at
        time.sleep(1.0)
    finally:
        netns_host.restore()
    restored_at = time.monotonic()
    wait_until(lambda: "inside" in faults.connected_workers(), timeout=30,
               message="the cut-off worker to come back")
    back_after = time.monotonic() - restored_at
    jobs = faults.wait_final(ids, timeout=30)
    time.sleep(1.0)  # its stale reports have had time to arrive

    ledger = faults.ledger_report(ids)
    killed = ledger.killed
    # How long before its rerun started each cut-off copy was last seen alive.
    margins = [min(c.alive[0] for c in ledger.copies[k.job_id] if c.finished) - k.alive[1]
               for k in killed if any(c.finished for c in ledger.copies[k.job_id])]
    report_figures("partition_past_grace", faults=1,
                   min_margin_seconds=round(min(margins), 2) if margins else None,
                   rerun_after_cut_seconds=round(rerun_after, 2),
                   reconnected_after_restore_seconds=round(back_after, 2),
                   lost_attempts=sum(job["lost_attempts"] for job in jobs.values()),
                   **ledger.summary())
    ok = ledger.ok
    assert ok, ledger.describe()
    assert len(killed) == 4, ledger.describe()
    jobs = faults.jobs()
    for job_id in ids:
        assert (jobs[job_id]["state"], jobs[job_id]["worker"], jobs[job_id]["attempts"]) \
            == ("done", "outside", 2)
        history = faults.job(job_id)["attempt_history"]
        # The returning worker reported the copy it killed; the server refused the stale lease.
        assert [(a["worker"], a["outcome"]) for a in history] \
            == [("inside", None), ("outside", "exited")]
    problems = server_problems(faults, ids, ledger)
    assert not problems, "\n".join(problems)


@pytest.mark.system
def test_partition_healed_within_the_grace_is_adopted(netns_host: NetnsHost,
                                                      faults: FaultCluster) -> None:
    """The link goes down past the lease, comes back within the grace: the worker's attempts
    are adopted, nothing runs twice."""
    faults.host = netns_host.host_address
    faults.start_server(*SERVER_LONG_GRACE)
    inside = ("--join", faults.join)
    faults.spawn_worker("inside", *inside, "--cores", "4", prefix=netns_host.exec_prefix())
    ids = faults.add_ledger_jobs([ticking_work(7)] * 4)
    wait_until(lambda: ledger_starts(faults) == 4, timeout=20, message="four jobs to start")

    netns_host.cut()
    cut_at = time.monotonic()
    try:
        faults.spawn_worker("outside", "--cores", "4")  # where a wrongly requeued job would go
        wait_until(lambda: all(faults.job(i)["state"] == "lost" for i in ids),
                   timeout=LEASE + 3, message="the server to count the attempts lost")
        lost_after = time.monotonic() - cut_at
    finally:
        netns_host.restore()
    restored_at = time.monotonic()
    wait_until(lambda: all(faults.job(i)["state"] == "running" for i in ids), timeout=LONG_GRACE,
               message="the attempts to be adopted")
    adopted_after = time.monotonic() - restored_at
    jobs = faults.wait_final(ids, timeout=30)
    faults.wait_ledger_quiet()
    ledger = faults.ledger_report(ids)
    report_figures("partition_within_grace", faults=1,
                   lost_after_cut_seconds=round(lost_after, 2),
                   adopted_after_restore_seconds=round(adopted_after, 2), **ledger.summary())
    ok = ledger.ok
    assert ok, ledger.describe()
    assert [(jobs[i]["worker"], jobs[i]["attempts"]) for i in ids] == [("inside", 1)] * 4
    problems = server_problems(faults, ids, ledger, details_for=set(ids))
    assert not problems, "\n".join(problems)

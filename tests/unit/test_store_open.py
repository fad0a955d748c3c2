"""Opening the store: a database from a newer shoal is refused with a line naming it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shoal.core.errors import InputError
from shoal.core.models import JobState
from shoal.server.reactor import Reactor
from shoal.store import Store
from shoal.store.schema import SCHEMA_VERSION

from .factories import register, spec


def test_a_database_from_a_newer_shoal_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(InputError, match=rf"{path}: database schema version "
                                         rf"{SCHEMA_VERSION + 1} is newer"):
        Store(path)
    assert path.read_bytes() == before


def test_the_holder_of_a_live_attempt_is_kept_across_a_restart(tmp_path: Path) -> None:
    """Only the worker process an attempt was given to may claim it, after a restart too."""
    store = Store(tmp_path / "shoal.db")
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    plan = reactor.plan_add([spec("sleep 100")], rerun=False, now=0.0)
    store.add_jobs(plan.new_jobs, reactor.journal_of_new(plan, 0.0))
    reactor.apply_add(plan, now=0.0)
    worker = reactor.worker_joined(register("w1"), 0.0, credential="token-digest")
    reactor.schedule(1.0)
    effects = reactor.take_effects()
    store.commit_tick(effects.changed.values(), effects.transitions, effects.new_attempts,
                      effects.results, effects.started, effects.removed)
    holder = reactor.workers[worker].identity
    store.close()
    [job] = Store(tmp_path / "shoal.db").load_jobs()
    assert job.state is JobState.RUNNING and job.holder == holder


def test_jobs_read_back_do_not_share_their_lists(tmp_path: Path) -> None:
    """Texts decoded once are handed out as copies: one job's limits are its own."""
    store = Store(tmp_path / "shoal.db")
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    plan = reactor.plan_add([spec(f"echo {n}", limits=["db"], env={"A": "1"})
                             for n in range(3)], rerun=False, now=0.0)
    store.add_jobs(plan.new_jobs, reactor.journal_of_new(plan, 0.0))
    first, second, third = store.load_jobs()
    first.limits.append("other")
    first.env["B"] = "2"
    assert (second.limits, second.env) == (["db"], {"A": "1"})
    assert third.limits is not second.limits
    # Nor with the jobs read later: the first job's change stays its own.
    again = store.load_jobs()[0]
    assert (again.limits, again.env) == (["db"], {"A": "1"})


def test_an_attempt_lost_a_while_then_done_keeps_no_reason_of_the_loss(tmp_path: Path) -> None:
    """Its worker went away and came back in time, and the job then succeeded: its attempt
    ended well, and its history says no more of the loss."""
    from shoal.core.protocol import RunningAttempt
    from shoal.server.reactor import ReactorConfig

    from .factories import result

    store = Store(tmp_path / "shoal.db")
    reactor = Reactor([], next_job_id=1, next_lease_id=1,
                      config=ReactorConfig(lost_grace_seconds=60))
    plan = reactor.plan_add([spec("sleep 100")], rerun=False, now=0.0)
    store.add_jobs(plan.new_jobs, reactor.journal_of_new(plan, 0.0))
    reactor.apply_add(plan, now=0.0)

    def commit() -> None:
        effects = reactor.take_effects()
        store.commit_tick(effects.changed.values(), effects.transitions, effects.new_attempts,
                          effects.results, effects.started, effects.removed)

    first = reactor.worker_joined(register("w1"), 0.0)
    reactor.schedule(1.0)
    commit()
    [job] = reactor.jobs.values()
    lease = job.lease_id
    assert lease is not None
    reactor.worker_left(first, 2.0)
    commit()
    assert store.attempt_history(job.id)[0]["reason"] == "worker w1 disconnected"
    back = reactor.worker_joined(register("w1", running=[
        RunningAttempt(job_id=job.id, lease_id=lease, started_at=1.0)]), 5.0)
    reactor.finished(back, [result(job.id, lease)], 6.0)
    commit()
    [attempt] = store.attempt_history(job.id)
    assert (attempt["outcome"], attempt["reason"]) == ("exited", None)

"""The pure reactor: adds, leases, retries, kills and lost workers, driven with explicit times."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.errors import Conflict, InputError, NameTaken, NotFound
from shoal.core.models import JobState
from shoal.core.protocol import Assign, Kill, RunningAttempt, StartedItem
from shoal.server.reactor import Reactor, ReactorConfig

from .factories import register, result, spec

S = JobState


def new_reactor(**config: float) -> Reactor:
    return Reactor([], next_job_id=1, next_lease_id=1, config=ReactorConfig(**config))


def add(reactor: Reactor, *cmds: str, now: float = 0.0, **fields: object) -> list[int]:
    plan = reactor.plan_add([spec(cmd, **fields) for cmd in cmds], rerun=False, now=now)
    reactor.apply_add(plan, now=now)
    return plan.ids


def assigned(reactor: Reactor, now: float = 1.0) -> dict[int, list[tuple[int, int]]]:
    """Schedule and return {worker id: [(job id, lease id)]} from the effects."""
    reactor.schedule(now)
    effects = reactor.take_effects()
    out = {}
    for worker_id, messages in effects.messages().items():
        for message in messages:
            if isinstance(message, Assign):
                out[worker_id] = [(a.job_id, a.lease_id) for a in message.items]
    return out


def test_priority_first_then_fifo() -> None:
    reactor = new_reactor()
    low = add(reactor, "a", "b", priority=0)
    high = add(reactor, "c", "d", priority=5)
    worker = reactor.worker_joined(register(cores=3), 0.0)
    got = [job for job, _ in assigned(reactor)[worker]]
    assert got == [high[0], high[1], low[0]]


def test_duplicates_are_not_created_and_rerun_requeues_completed_twins() -> None:
    reactor = new_reactor()
    first = reactor.plan_add([spec("x"), spec("x"), spec("y")], rerun=False, now=0.0)
    assert (len(first.new_jobs), first.existed, first.ids) == (2, 1, [1, 1, 2])
    reactor.apply_add(first, now=0.0)
    again = reactor.plan_add([spec("x")], rerun=False, now=1.0)
    assert (len(again.new_jobs), again.existed, again.requeue) == (0, 1, [])
    worker = reactor.worker_joined(register(), 0.0)
    for job_id, lease in assigned(reactor)[worker]:
        reactor.finished(worker, [result(job_id, lease)], 2.0)
    assert reactor.get(1).state is S.DONE
    rerun = reactor.plan_add([spec("x")], rerun=True, now=3.0)
    assert (rerun.existed, rerun.requeue) == (0, [1])
    reactor.apply_add(rerun, now=3.0)
    assert reactor.get(1).state is S.QUEUED


def test_relative_cwd_is_refused() -> None:
    reactor = new_reactor()
    with pytest.raises(InputError, match=r"jobs\[0\]\.cwd"):
        reactor.plan_add([spec("x").model_copy(update={"cwd": "rel"})], rerun=False, now=0)


def test_a_stale_lease_is_refused_and_the_copy_killed() -> None:
    reactor = new_reactor(lost_grace_seconds=5)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0)
    [(_, lease1)] = assigned(reactor)[w1]
    reactor.worker_left(w1, 2.0)
    assert reactor.get(job_id).state is S.LOST
    reactor.tick(8.0)  # grace over: the job runs again elsewhere
    w2 = reactor.worker_joined(register("w2"), 8.0)
    [(_, lease2)] = assigned(reactor, 8.0)[w2]
    assert lease2 > lease1
    # The first worker returns and reports its old attempt: refused, told to kill it.
    w1b = reactor.worker_joined(register("w1", running=[
        RunningAttempt(job_id=job_id, lease_id=lease1, started_at=1.0)]), 9.0)
    effects = reactor.take_effects()
    kills = [m for m in effects.messages()[w1b] if isinstance(m, Kill)]
    assert kills and kills[0].items[0].lease_id == lease1
    reactor.finished(w1b, [result(job_id, lease1)], 10.0)
    assert reactor.get(job_id).state is S.RUNNING  # the stale report changed nothing
    reactor.finished(w2, [result(job_id, lease2)], 11.0)
    assert reactor.get(job_id).state is S.DONE


def test_a_worker_back_within_grace_keeps_its_attempt() -> None:
    reactor = new_reactor(lost_grace_seconds=60)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0)
    [(_, lease)] = assigned(reactor)[w1]
    reactor.worker_left(w1, 2.0)
    w1b = reactor.worker_joined(register("w1", running=[
        RunningAttempt(job_id=job_id, lease_id=lease, started_at=1.0)]), 5.0)
    job = reactor.get(job_id)
    assert (job.state, job.lease_id, job.lost_attempts) == (S.RUNNING, lease, 0)  # adopted
    reactor.finished(w1b, [result(job_id, lease)], 6.0)
    assert reactor.get(job_id).state is S.DONE


def test_silent_worker_loses_its_lease() -> None:
    reactor = new_reactor(lease_timeout_seconds=10, lost_grace_seconds=0)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0)
    assigned(reactor, 0.0)
    reactor.tick(5.0)
    assert reactor.get(job_id).state is S.RUNNING
    reactor.tick(11.0)
    assert reactor.get(job_id).state is S.QUEUED
    assert w1 in reactor.take_effects().disconnect


def test_a_pause_of_the_server_is_not_a_workers_silence() -> None:
    """A long add holds the loop; the worker's heartbeats wait unread meanwhile."""
    reactor = new_reactor(lease_timeout_seconds=10, lost_grace_seconds=0)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0)
    assigned(reactor, 0.0)
    reactor.excuse_pause(25.0)  # the server was busy from 1 s to 26 s
    reactor.tick(26.0)
    assert reactor.get(job_id).state is S.RUNNING
    assert w1 not in reactor.take_effects().disconnect
    reactor.tick(36.0)  # silent for more than the lease after the pause: gone
    assert reactor.get(job_id).state is S.QUEUED


def test_retries_with_backoff_then_failed() -> None:
    reactor = new_reactor(retry_base_seconds=2)
    [job_id] = add(reactor, "false", retries=1)
    worker = reactor.worker_joined(register(), 0.0)
    [(_, lease)] = assigned(reactor, 0.0)[worker]
    reactor.finished(worker, [result(job_id, lease, exit_code=1, at=1.0)], 1.0)
    job = reactor.get(job_id)
    assert job.state is S.DELAYED and 1.0 + 1.5 <= (job.retry_at or 0) <= 1.0 + 2.5
    assert reactor.next_deadline() == job.retry_at
    reactor.tick(job.retry_at or 0)
    [(_, lease2)] = assigned(reactor, 5.0)[worker]
    reactor.finished(worker, [result(job_id, lease2, exit_code=1, at=6.0)], 6.0)
    assert (job.state, job.fail_reason, job.attempts) == (S.FAILED, "exit code 1", 2)
    assert reactor.retry([job], 7.0) == [job_id]
    assert job.state is S.QUEUED and job.attempts == 0


def test_kill_cancels_queued_at_once_and_running_through_the_worker() -> None:
    reactor = new_reactor()
    running_id, queued_id = add(reactor, "sleep 100", "sleep 200")
    worker = reactor.worker_joined(register(cores=1), 0.0)
    [(_, lease)] = assigned(reactor)[worker]
    reactor.kill([reactor.get(running_id), reactor.get(queued_id)], 2.0)
    assert reactor.get(queued_id).state is S.CANCELLED
    effects = reactor.take_effects()
    [kill] = [m for m in effects.messages()[worker] if isinstance(m, Kill)]
    assert kill.items[0].job_id == running_id
    reactor.finished(worker, [result(running_id, lease, outcome="killed", exit_code=143)], 3.0)
    job = reactor.get(running_id)
    assert (job.state, job.fail_reason) == (S.CANCELLED, "killed by user")


def test_an_assignment_given_back_unstarted_is_no_attempt() -> None:
    """A worker that held an assignment in its backlog and never started it reports it
    killed with no pid: the job ends as the kill says, but with no attempt, no start time
    and no row in its history; given back by a stopping worker, it runs again uncounted."""
    reactor = new_reactor()
    killed_id, returned_id = add(reactor, "sleep 100", "sleep 200")
    worker = reactor.worker_joined(register(cores=2), 0.0)
    leases = dict(assigned(reactor)[worker])
    reactor.take_effects()
    reactor.kill([reactor.get(killed_id)], 2.0, reason="killed by --halt now")
    reactor.kill([reactor.get(killed_id)], 2.1, reason="a later kill")
    unstarted = result(killed_id, leases[killed_id], outcome="killed").model_copy(
        update={"pid": None, "exit_code": None})
    returned = result(returned_id, leases[returned_id], outcome="killed").model_copy(
        update={"pid": None, "exit_code": None})
    reactor.finished(worker, [unstarted, returned], 3.0)
    effects = reactor.take_effects()
    killed, given_back = reactor.get(killed_id), reactor.get(returned_id)
    assert (killed.state, killed.fail_reason) == (S.CANCELLED, "killed by --halt now")
    assert (killed.attempts, killed.started_at, killed.ended_at) == (0, None, None)
    assert (given_back.attempts, given_back.lost_attempts) == (0, 0)
    assert given_back.state in (S.LOST, S.QUEUED)
    assert sorted(effects.withdrawn) == sorted(leases.values()) and effects.results == []
    # One that started and was killed is an attempt, as always.
    [(_, lease)] = assigned(reactor, 4.0)[worker]
    reactor.kill([given_back], 5.0)
    reactor.finished(worker, [result(returned_id, lease, outcome="killed", exit_code=143)],
                     6.0)
    assert (given_back.state, given_back.attempts) == (S.CANCELLED, 1)
    assert reactor.take_effects().withdrawn == []


def test_remove_refuses_running_and_unknown_ids() -> None:
    reactor = new_reactor()
    [job_id] = add(reactor, "sleep 1")
    worker = reactor.worker_joined(register(), 0.0)
    assigned(reactor)
    with pytest.raises(Conflict, match=f"job {job_id} is running"):
        reactor.remove([reactor.get(job_id)], 1.0)
    with pytest.raises(NotFound, match="job 99"):
        reactor.select([99], None)
    assert worker


def test_a_restarted_server_waits_for_workers_to_report() -> None:
    reactor = new_reactor()
    [job_id] = add(reactor, "sleep 100")
    worker = reactor.worker_joined(register("w1"), 0.0)
    [(_, lease)] = assigned(reactor)[worker]
    reactor.started(worker, [StartedItem(job_id=job_id, lease_id=lease, pid=7,
                                         started_at=1.0)], 1.0)
    # A new reactor over the same jobs, as after a restart.
    restarted = Reactor(list(reactor.jobs.values()), next_job_id=2, next_lease_id=lease + 1,
                        config=ReactorConfig(lost_grace_seconds=60), now=50.0)
    assert restarted.get(job_id).state is S.LOST
    back = restarted.worker_joined(register("w1", running=[
        RunningAttempt(job_id=job_id, lease_id=lease, pid=7, started_at=1.0)]), 55.0)
    assert restarted.get(job_id).state is S.RUNNING
    restarted.finished(back, [result(job_id, lease)], 60.0)
    assert restarted.get(job_id).state is S.DONE


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["finish", "fail", "leave", "join", "tick"]),
                          st.integers(0, 2)), max_size=40))
def test_never_two_live_attempts_and_resources_balance(events: list[tuple[str, int]]) -> None:
    """Whatever order workers come, go and report, each job holds at most one lease, held by
    at most one connected worker, and no worker runs more than it offers."""
    reactor = new_reactor(lost_grace_seconds=3, retry_base_seconds=1)
    add(reactor, *[f"job {i}" for i in range(6)], retries=1)
    now = 0.0
    names = ["w0", "w1", "w2"]
    sessions: dict[str, int] = {}
    leases: dict[int, tuple[int, int]] = {}  # lease -> (worker id, job id) as assigned
    for action, index in events:
        now += 1.0
        name = names[index]
        if action == "join":
            running = [RunningAttempt(job_id=j, lease_id=lease, started_at=now)
                       for lease, (w, j) in leases.items() if w == sessions.get(name)]
            sessions[name] = reactor.worker_joined(register(name, running=running), now)
        elif action == "leave" and name in sessions:
            reactor.worker_left(sessions.pop(name), now)
        elif action in ("finish", "fail") and name in sessions:
            mine = [(lease, j) for lease, (w, j) in leases.items() if w == sessions[name]]
            if mine:
                lease, job_id = mine[0]
                code = 0 if action == "finish" else 1
                reactor.finished(sessions[name], [result(job_id, lease, exit_code=code)], now)
                del leases[lease]
        elif action == "tick":
            reactor.tick(now)
        reactor.schedule(now)
        for worker_id, messages in reactor.take_effects().messages().items():
            for message in messages:
                if isinstance(message, Assign):
                    for item in message.items:
                        leases[item.lease_id] = (worker_id, item.job_id)
        holders: dict[int, int] = {}
        for worker in reactor.workers.values():
            if worker.connected:
                assert worker.used_cores <= worker.cores
                for job_id in worker.job_ids:
                    assert job_id not in holders, "a job held by two workers"
                    holders[job_id] = worker.id
        for job in reactor.jobs.values():
            if job.state is S.RUNNING:
                assert holders.get(job.id) is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["finish", "fail", "kill", "retry", "remove"]),
                          st.integers(0, 5)), max_size=30))
def test_counts_always_match_the_jobs(actions: list[tuple[str, int]]) -> None:
    """Counts are kept up to date by each change; they must equal a fresh count."""
    reactor = new_reactor()
    ids = add(reactor, *[f"job {i}" for i in range(6)], group="a")
    ids += add(reactor, "other", group="b")
    worker = reactor.worker_joined(register(cores=3), 0.0)
    leases: dict[int, int] = {}
    now = 0.0
    for action, index in actions:
        now += 1
        for worker_id, items in [(w, i) for w, i in assigned(reactor, now).items()]:
            leases.update({job_id: lease for job_id, lease in items})
            assert worker_id == worker
        job = reactor.jobs.get(ids[index])
        if job is None:
            continue
        if action in ("finish", "fail") and job.id in leases:
            code = 0 if action == "finish" else 1
            reactor.finished(worker, [result(job.id, leases.pop(job.id), exit_code=code)], now)
        elif action == "kill":
            reactor.kill([job], now)
        elif action == "retry":
            reactor.retry([job], now)
        elif action == "remove" and job.state not in (S.RUNNING, S.LOST):
            reactor.remove([job], now)
        fresh: dict[str, dict[str, int]] = {}
        for each in reactor.jobs.values():
            fresh.setdefault(each.group, {}).setdefault(each.state.value, 0)
            fresh[each.group][each.state.value] += 1
        assert reactor.counts() == dict(sorted(fresh.items()))


# ---- who may claim an attempt --------------------------------------------------------------


@pytest.mark.parametrize(("name", "credential", "secret"), [
    ("evil", "worker-token", None),             # another name, another process, same token
    ("evil", "other-token", b"w1".hex().ljust(32, "0")),  # the secret, not the token
])
def test_only_the_process_and_token_an_attempt_was_given_to_may_claim_it(
        name: str, credential: str, secret: str | None) -> None:
    reactor = new_reactor(lost_grace_seconds=60)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0, credential="worker-token")
    [(_, lease)] = assigned(reactor)[w1]
    claim = [RunningAttempt(job_id=job_id, lease_id=lease, started_at=1.0)]
    reactor.worker_left(w1, 2.0)  # even with the holder away, its attempt is not up for grabs
    impostor = reactor.worker_joined(register(name, running=claim, instance_secret=secret),
                                     3.0, credential=credential)
    job = reactor.get(job_id)
    assert (job.state, job.worker) == (S.LOST, "w1")
    assert job_id not in reactor.workers[impostor].job_ids
    kills = [m for m in reactor.take_effects().messages().get(impostor, [])
             if isinstance(m, Kill)]
    assert [k.lease_id for m in kills for k in m.items] == [lease]  # its own copy, if any
    reactor.finished(impostor, [result(job_id, lease)], 4.0)
    assert reactor.get(job_id).state is S.LOST  # a forged result changes nothing
    reactor.worker_left(impostor, 4.5)
    assert reactor.get(job_id).state is S.LOST  # and its leaving takes nothing with it
    back = reactor.worker_joined(register("w1", running=claim), 5.0, credential="worker-token")
    assert reactor.get(job_id).state is S.RUNNING and job_id in reactor.workers[back].job_ids


def test_a_claim_on_a_connected_workers_attempt_leaves_that_worker_untouched() -> None:
    reactor = new_reactor()
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0, credential="t")
    [(_, lease)] = assigned(reactor)[w1]
    claim = [RunningAttempt(job_id=job_id, lease_id=lease, started_at=1.0)]
    evil = reactor.worker_joined(register("evil", running=claim), 1.0, credential="t")
    reactor.worker_left(evil, 2.0)
    job = reactor.get(job_id)
    assert (job.state, job.worker) == (S.RUNNING, "w1")
    assert reactor.workers[w1].used_cores == 1 and reactor.workers[w1].connected


def test_a_second_process_under_a_connected_workers_name_is_refused() -> None:
    reactor = new_reactor(heartbeat_seconds=5)
    w1 = reactor.worker_joined(register("w1"), 0.0, credential="t")
    with pytest.raises(Conflict, match="'w1' is already connected"):
        reactor.worker_joined(register("w1", instance_secret="ab" * 16), 4.0, credential="t")
    assert reactor.workers[w1].connected
    # The same process reconnecting replaces its stale session at once.
    again = reactor.worker_joined(register("w1"), 5.0, credential="t")
    assert not reactor.workers[w1].connected and reactor.workers[again].connected
    # A session silent for two heartbeats is presumed dead: a new process may take the name.
    later = reactor.worker_joined(register("w1", instance_secret="cd" * 16), 16.0,
                                  credential="t")
    assert reactor.workers[later].connected and not reactor.workers[again].connected


def test_lease_ids_increase_but_cannot_be_guessed_from_the_last() -> None:
    reactor = new_reactor()
    add(reactor, *(f"echo {n}" for n in range(64)))
    worker = reactor.worker_joined(register(cores=64), 0.0)
    leases = [lease for _, lease in assigned(reactor)[worker]]
    assert leases == sorted(leases) and len(set(leases)) == 64
    assert len({b - a for a, b in pairwise(leases)}) > 1
    restarted = Reactor(list(reactor.jobs.values()), next_job_id=100,
                        next_lease_id=reactor.next_lease_id)
    assert restarted.next_lease_id > max(leases)


@pytest.mark.parametrize(("credential", "secret", "given_up"), [
    ("t", None, True),                   # the worker restarted: it keeps its secret
    ("t", "ef" * 16, False),             # another process with the shared token
    ("another-token", None, False),      # the secret without the token proves nothing
])
def test_only_the_worker_itself_restarted_gives_up_its_old_attempts_at_once(
        credential: str, secret: str | None, given_up: bool) -> None:
    """A supervisor restarting a crashed worker (its secret kept in its spool directory):
    its old attempts are gone, rerun at once. Any other process is refused the name while
    they wait out the grace, and takes nothing."""
    reactor = new_reactor(lost_grace_seconds=60)
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1"), 0.0, credential="t")
    assigned(reactor)
    reactor.worker_left(w1, 1.0)
    if given_up:
        reactor.worker_joined(register("w1"), 2.0, credential=credential)
        assert reactor.get(job_id).state is S.QUEUED
        return
    with pytest.raises(NameTaken, match=r"1 job.* of another worker named 'w1' wait") as refused:
        reactor.worker_joined(register("w1", instance_secret=secret), 2.0,
                              credential=credential)
    assert refused.value.held
    assert reactor.get(job_id).state is S.LOST
    # Once the grace is over the job runs again, and the name is free.
    reactor.tick(62.0)
    assert reactor.get(job_id).state is S.QUEUED
    reactor.worker_joined(register("w1", instance_secret=secret), 63.0, credential=credential)


def test_a_workers_name_taken_while_it_was_away_is_not_taken_from_it_for_good() -> None:
    """An idle worker away: another process may take the name, and the first is then
    refused as connected (its agent keeps trying); one holding jobs never loses it."""
    reactor = new_reactor(heartbeat_seconds=5)
    w1 = reactor.worker_joined(register("w1"), 0.0, credential="t")
    reactor.worker_left(w1, 1.0)
    reactor.worker_joined(register("w1", instance_secret="ab" * 16), 2.0, credential="x")
    with pytest.raises(NameTaken, match="already connected") as refused:
        reactor.worker_joined(register("w1"), 3.0, credential="t")
    assert not refused.value.held


def test_one_secret_under_two_names_gives_up_nothing_of_the_other() -> None:
    """Two workers that happen to share a secret (a spool directory shared by mistake): the
    second's register lists none of the first's attempts, which go on."""
    reactor = new_reactor()
    [job_id] = add(reactor, "sleep 100")
    w1 = reactor.worker_joined(register("w1", instance_secret="ab" * 16), 0.0, credential="t")
    assigned(reactor)
    reactor.worker_joined(register("w2", instance_secret="ab" * 16), 1.0, credential="t")
    job = reactor.get(job_id)
    assert (job.state, job.worker) == (S.RUNNING, "w1") and reactor.workers[w1].connected

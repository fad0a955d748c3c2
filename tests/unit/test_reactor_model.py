"""A model-based test of leases and reconciliation.

Workers are modelled as what really happens on their hosts: the attempts they run, and the
results they keep until the server acknowledges them. Random sequences of joins, departures,
finishes, clock ticks and server restarts drive the pure reactor; whatever the order:

- a job is accepted as done at most once, and only from the attempt holding its lease;
- a report with a stale lease never changes a job;
- the server never believes a job runs on a worker that is not running it;
- once the dust settles (workers back, time passed, work finished), every job is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.models import JobState
from shoal.core.protocol import Ack, Assign, Kill, RunningAttempt
from shoal.server.reactor import Reactor, ReactorConfig

from .factories import register, result, spec

S = JobState
CONFIG = ReactorConfig(lease_timeout_seconds=5, lost_grace_seconds=10, retry_base_seconds=1)
NAMES = ("w0", "w1", "w2")


@dataclass
class Host:
    """One worker host: its live attempts (lease -> job) and results not yet acknowledged."""

    session: int | None = None
    live: dict[int, int] = field(default_factory=dict)
    unacked: dict[int, tuple[int, int]] = field(default_factory=dict)  # lease -> job, exit code


@dataclass
class World:
    reactor: Reactor
    hosts: dict[str, Host]
    now: float = 0.0
    done_accepted: dict[int, int] = field(default_factory=dict)  # job -> times accepted done

    def deliver(self) -> None:
        effects = self.reactor.take_effects()
        for entry in effects.transitions:
            if entry.to_state is S.DONE:
                self.done_accepted[entry.job_id] = self.done_accepted.get(entry.job_id, 0) + 1
        by_session = {host.session: host for host in self.hosts.values() if host.session}
        for session in effects.disconnect:  # the server closes the link of an expired lease
            if session in by_session:
                by_session.pop(session).session = None
        for session, messages in effects.messages().items():
            host = by_session.get(session)
            if host is None:
                continue
            for message in messages:
                if isinstance(message, Assign):
                    for item in message.items:
                        host.live[item.lease_id] = item.job_id
                elif isinstance(message, Kill):
                    for order in message.items:
                        if order.lease_id in host.live:  # killed: a result to report
                            host.unacked[order.lease_id] = (host.live.pop(order.lease_id), 137)
                elif isinstance(message, Ack):
                    for lease in message.lease_ids:
                        host.unacked.pop(lease, None)

    def report_unacked(self, host: Host) -> None:
        if host.session is None or not host.unacked:
            return
        items = []
        for lease, (job_id, code) in host.unacked.items():
            outcome = "exited" if code != 137 else "killed"
            items.append(result(job_id, lease, exit_code=code, outcome=outcome, at=self.now))
        self.reactor.finished(host.session, items, self.now)

    def step(self, action: str, which: int) -> None:
        self.now += 1.0
        host = self.hosts[NAMES[which]]
        if action == "join" and host.session is None:
            running = [RunningAttempt(job_id=job, lease_id=lease, started_at=0.0)
                       for lease, job in host.live.items()]
            host.session = self.reactor.worker_joined(register(NAMES[which], running=running),
                                                      self.now)
            self.deliver()  # kill orders for stale copies come with the welcome
            self.report_unacked(host)
        elif action == "leave" and host.session is not None:
            self.reactor.worker_left(host.session, self.now)
            host.session = None
        elif action in ("finish", "fail") and host.live:
            lease = min(host.live)
            host.unacked[lease] = (host.live.pop(lease), 0 if action == "finish" else 1)
            self.report_unacked(host)
        elif action == "tick":
            self.now += 7.0
            for other in self.hosts.values():  # connected workers heartbeat
                if other.session is not None:
                    self.reactor.heard_from(other.session, self.now)
            self.reactor.tick(self.now)
        elif action == "restart":
            # As the service restarts: live jobs read back, ended ones kept in the archive.
            old = self.reactor
            old.forget(list(old.jobs))
            self.reactor = Reactor(list(old.jobs.values()), next_job_id=100,
                                   next_lease_id=old.next_lease_id, config=CONFIG, now=self.now,
                                   archive=old.archive, counts=[
                                       (*key, count) for key, count in old._counts.items()])
            for other in self.hosts.values():
                other.session = None
        self.reactor.tick(self.now)
        self.reactor.schedule(self.now)
        self.deliver()
        self.check()

    def check(self) -> None:
        assert all(count == 1 for count in self.done_accepted.values()), self.done_accepted
        sessions = {host.session: host for host in self.hosts.values() if host.session}
        for job in self.reactor.jobs.values():
            if job.state is not S.RUNNING:
                continue
            holders = [w for w in self.reactor.workers.values() if job.id in w.job_ids]
            assert len(holders) == 1, f"job {job.id} held by {len(holders)} workers"
            host = sessions.get(holders[0].id)
            assert host is not None, f"job {job.id} held by a worker that is gone"
            # The lease the server honours is the one the host runs (or has just finished).
            assert job.lease_id in host.live or job.lease_id in host.unacked


actions = st.lists(st.tuples(st.sampled_from(["join", "leave", "finish", "fail", "tick",
                                              "restart"]), st.integers(0, 2)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_leases_and_reconciliation(script: list[tuple[str, int]]) -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1, config=CONFIG)
    plan = reactor.plan_add([spec(f"job {i}", retries=50) for i in range(5)], rerun=False, now=0)
    reactor.apply_add(plan, now=0)
    world = World(reactor, {name: Host() for name in NAMES})
    for action, which in script:
        world.step(action, which)
    # Settle: everyone back (again, if the server dropped them for silence), time passes,
    # every live attempt finishes well.
    for _ in range(40):
        for which in range(3):
            world.step("join", which)
        world.step("tick", 0)
        for which in range(3):
            while world.hosts[NAMES[which]].live:
                world.step("finish", which)
        if all(world.reactor.get(job_id).state is S.DONE for job_id in plan.ids):
            break
    # A restart keeps ended jobs in its archive only: ask for each, wherever it is.
    assert {world.reactor.get(job_id).state for job_id in plan.ids} == {S.DONE}
    assert sorted(world.done_accepted) == sorted(plan.ids)

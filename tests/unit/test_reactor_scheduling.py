"""The reactor's scheduling features: dependencies, limits, GPUs, learned requirements."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.errors import Conflict, Forbidden, InputError
from shoal.core.models import JobState
from shoal.core.protocol import PROTOCOL_VERSION, Assign, Register, Resources
from shoal.server.reactor import Reactor, ReactorConfig

from .factories import result, spec

S = JobState
MiB = 1 << 20


def new_reactor(**config: float) -> Reactor:
    return Reactor([], next_job_id=1, next_lease_id=1, config=ReactorConfig(**config))


def add(reactor: Reactor, *specs_: object, now: float = 0.0) -> list[int]:
    plan = reactor.plan_add(list(specs_), rerun=False, now=now)  # type: ignore[arg-type]
    reactor.apply_add(plan, now=now)
    return plan.ids


def join(reactor: Reactor, name: str = "w", cores: int = 4, gpus: int = 0,
         custom: dict[str, int] | None = None, labels: dict[str, str] | None = None) -> int:
    return reactor.worker_joined(Register(
        protocol_version=PROTOCOL_VERSION, instance_secret=name.encode().hex().ljust(32, "0"),
        name=name, host=name, labels=labels or {},
        resources=Resources(cores=cores, memory_bytes=64 << 30,
                            gpus=[str(i) for i in range(gpus)], custom=custom or {})), 0.0)


def run_all(reactor: Reactor, now: float = 1.0) -> list:  # type: ignore[type-arg]
    reactor.schedule(now)
    return [item for messages in reactor.take_effects().messages().values()
            for message in messages if isinstance(message, Assign) for item in message.items]


def finish(reactor: Reactor, worker: int, item, code: int = 0, now: float = 2.0,  # type: ignore[no-untyped-def]
           **fields: object) -> None:
    outcome = fields.pop("outcome", "exited")
    done = result(item.job_id, item.lease_id, exit_code=code, outcome=outcome, at=now)
    reactor.finished(worker, [done.model_copy(update=fields)], now)


def test_after_id_waits_then_runs() -> None:
    reactor = new_reactor()
    [first] = add(reactor, spec("prep"))
    [second] = add(reactor, spec("use", after=[str(first)]))
    assert reactor.get(second).state is S.WAITING
    assert reactor.pending_reason(reactor.get(second)) == f"waiting for job {first} (queued)"
    worker = join(reactor)
    [item] = run_all(reactor)
    assert item.job_id == first
    finish(reactor, worker, item)
    [item] = run_all(reactor, 3.0)
    assert item.job_id == second


def test_group_dependency_includes_jobs_added_later() -> None:
    reactor = new_reactor()
    add(reactor, spec("a1", group="a"), spec("a2", group="a"))
    [fan_in] = add(reactor, spec("merge", after=["group:a"]))
    worker = join(reactor, cores=1)
    [item] = run_all(reactor)
    finish(reactor, worker, item)
    [late] = add(reactor, spec("a3", group="a"), now=3.0)
    assert "group:a (2 of 3 left)" in (reactor.pending_reason(reactor.get(fan_in)) or "")
    for _ in range(2):
        [item] = run_all(reactor, 4.0)
        assert item.job_id != fan_in
        finish(reactor, worker, item, now=5.0)
    assert reactor.get(late).state is S.DONE
    [item] = run_all(reactor, 6.0)
    assert item.job_id == fan_in


def test_failure_cancels_dependants_recursively_and_after_any_still_runs() -> None:
    reactor = new_reactor()
    [root] = add(reactor, spec("root"))
    [child] = add(reactor, spec("child", after=[str(root)], group="kids"))
    [grandchild] = add(reactor, spec("grandchild", after=["group:kids"]))
    [cleanup] = add(reactor, spec("cleanup", after_any=[str(root)]))
    worker = join(reactor)
    [item] = run_all(reactor)
    finish(reactor, worker, item, code=1)
    assert reactor.get(child).state is S.CANCELLED
    assert reactor.get(child).fail_reason == f"dependency {root} failed"
    assert reactor.get(grandchild).state is S.CANCELLED
    assert reactor.get(grandchild).fail_reason == "a job of group:kids failed or was cancelled"
    assert reactor.get(cleanup).state is S.QUEUED


@pytest.mark.parametrize(("specs_", "message"), [
    ([spec("x", after=["99"])], "dependency 99 does not exist"),
    ([spec("x", after=["group:nobody"])], "group:nobody has no jobs"),
    ([spec("x", group="loop", after=["group:loop"])], "dependency cycle"),
    ([spec("x", group="a", after=["group:b"]), spec("y", group="b", after=["group:a"])],
     "dependency cycle"),
])
def test_bad_dependencies_are_refused_and_nothing_is_added(specs_: list, message: str) -> None:  # type: ignore[type-arg]
    reactor = new_reactor()
    with pytest.raises(InputError, match=message):
        reactor.plan_add(specs_, rerun=False, now=0.0)
    assert reactor.jobs == {}


def test_a_cycle_through_existing_waiting_jobs_is_refused() -> None:
    reactor = new_reactor()
    add(reactor, spec("seed", group="b"))
    add(reactor, spec("x", group="a", after=["group:b"]))
    with pytest.raises(InputError, match="dependency cycle"):
        reactor.plan_add([spec("y", group="b", after=["group:a"])], rerun=False, now=1.0)


def test_limits_hold_across_a_restart() -> None:
    reactor = new_reactor()
    add(reactor, *[spec(f"q{i}", limits=["db:2"]) for i in range(5)])
    assert reactor.limit_caps == {"db": 2}
    worker = join(reactor, cores=8)
    assert len(run_all(reactor)) == 2
    assert reactor.pending_reason(reactor.get(3)) == "limit db is full (2 of 2 running)"
    restarted = Reactor(list(reactor.jobs.values()), next_job_id=6, next_lease_id=3,
                        limit_caps=dict(reactor.limit_caps), now=5.0)
    join(restarted, "other", cores=8)
    assert run_all(restarted, 6.0) == []  # the two lost attempts may still be running
    assert worker
    restarted.set_limit("db", None)
    assert len(run_all(restarted, 7.0)) == 3


def test_gpus_reach_the_assignment_and_are_freed() -> None:
    reactor = new_reactor()
    add(reactor, spec("train a", gpus=2), spec("train b", gpus=2))
    worker = join(reactor, gpus=3)
    [item] = run_all(reactor)
    assert item.gpus == ["0", "1"]
    assert reactor.gpu_ids(item.job_id) == ["0", "1"]
    finish(reactor, worker, item)
    [item] = run_all(reactor, 3.0)
    assert item.gpus == ["0", "1"]


def test_learned_requirements_use_the_95th_percentile() -> None:
    reactor = new_reactor()
    ids = add(reactor, *[spec(f"align {i}", req_group="align") for i in range(20)])
    worker = join(reactor, cores=20)
    for number, item in enumerate(run_all(reactor), start=1):
        finish(reactor, worker, item, peak_rss_bytes=number * 100 * MiB,
               wall_seconds=float(number))
    assert all(reactor.get(i).state is S.DONE for i in ids)
    [learned] = add(reactor, spec("align new", req_group="align"), now=9.0)
    job = reactor.get(learned)
    assert job.memory_bytes == 1900 * MiB and job.time_seconds == 19.0
    assert job.requirements_source == ("memory 1900 MiB and time 19s learned from "
                                       "req-group align (p95 of 20 runs)")
    [explicit] = add(reactor, spec("align explicit", req_group="align",
                                   memory_bytes=64 * MiB), now=9.0)
    assert reactor.get(explicit).memory_bytes == 64 * MiB
    assert reactor.get(explicit).requirements_source == ("time 19s learned from req-group "
                                                        "align (p95 of 20 runs)")


def test_grow_memory_asks_for_more_on_retry() -> None:
    reactor = new_reactor(retry_base_seconds=0.01)
    [job_id] = add(reactor, spec("hungry", memory_bytes=100 * MiB, retries=1, grow_memory=True))
    worker = join(reactor)
    [item] = run_all(reactor)
    finish(reactor, worker, item, code=137, outcome="memory_limit")
    job = reactor.get(job_id)
    assert job.state is S.DELAYED and job.memory_bytes == 150 * MiB
    reactor.tick(5.0)
    [item] = run_all(reactor, 5.0)
    assert item.memory_bytes == 150 * MiB


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.booleans()), max_size=12),
       st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=30))
def test_no_job_starts_before_its_dependencies_are_done(
        edges: list[tuple[int, int, bool]], outcomes: list[tuple[int, bool]]) -> None:
    reactor = new_reactor()
    ids = add(reactor, *[spec(f"base {i}", group=f"g{i}") for i in range(8)])
    for source, target, on_group in edges:
        after = [f"group:g{target}"] if on_group else [str(ids[target])]
        with contextlib.suppress(InputError):  # a cycle is refused, which is right
            add(reactor, spec(f"dep {source}->{target} {on_group}", group=f"g{source}",
                              after=after))
    worker = join(reactor, cores=3)
    now = 1.0
    live: dict[int, object] = {}
    for index, succeed in outcomes:
        now += 1
        reactor.schedule(now)
        for messages in reactor.take_effects().messages().values():
            for message in messages:
                if isinstance(message, Assign):
                    for item in message.items:
                        job = reactor.get(item.job_id)
                        for entry in job.dependencies:
                            if entry.startswith("group:"):
                                group = entry[6:]
                                assert all(j.state is S.DONE for j in reactor.jobs.values()
                                           if j.group == group and j.id != job.id)
                            else:
                                assert reactor.get(int(entry)).state is S.DONE
                        live[item.job_id] = item
        if live:
            key = sorted(live)[index % len(live)]
            finish(reactor, worker, live.pop(key), code=0 if succeed else 1, now=now)


@pytest.mark.parametrize(("before", "entry", "allowed"), [
    ({}, "fresh:3", True),                  # a limit nobody uses yet: its first cap
    ({"shared": 4}, "shared:4", True),      # restating the cap it has
    ({"shared": 4}, "shared:0", False),     # pausing another's limit
    ({"shared": 4}, "shared:9", False),     # raising it
    ({"shared": None}, "shared:1", False),  # capping a limit jobs already use
])
def test_a_cap_in_a_job_follows_the_permission_of_setting_caps(
        before: dict[str, int | None], entry: str, allowed: bool) -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1,
                      limit_caps={k: v for k, v in before.items() if v is not None})
    for name in before:
        add(reactor, spec(f"uses {name}", limits=[name]))
    caps = dict(reactor.limit_caps)
    user_spec = spec("mine", limits=[entry])
    if allowed:
        plan = reactor.plan_add([user_spec], rerun=False, now=0.0, may_set_caps=False)
        reactor.apply_add(plan, now=0.0)
        name, _, cap = entry.partition(":")
        assert reactor.limit_caps[name] == int(cap)
    else:
        with pytest.raises(Forbidden, match=r"jobs\[0\]\.limits: .*only an admin"):
            reactor.plan_add([user_spec], rerun=False, now=0.0, may_set_caps=False)
        assert reactor.limit_caps == caps
    # An admin may set any cap.
    plan = reactor.plan_add([spec("admin's", limits=[entry])], rerun=False, now=0.0)
    reactor.apply_add(plan, now=0.0)
    name, _, cap = entry.partition(":")
    assert reactor.limit_caps[name] == int(cap)


# ---- changing jobs after adding them (shoal mod) --------------------------------------------


def test_a_priority_raised_in_the_queue_runs_first_and_once() -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    ids = add(reactor, *[spec(f"q{i}") for i in range(4)])
    reactor.modify([reactor.get(ids[3])], {"priority": 9}, 1.0)
    join(reactor, cores=1)
    assert [item.job_id for item in run_all(reactor)] == [ids[3]]
    join(reactor, "w2", cores=8)
    assert sorted(item.job_id for item in run_all(reactor, now=2.0)) == ids[:3]  # none twice


def test_new_dependencies_make_a_queued_job_wait_and_a_group_move_keeps_counts() -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    first, second = add(reactor, spec("a", group="g1"), spec("b", group="g1"))
    reactor.modify([reactor.get(second)], {"after": [str(first)], "group": "g2"}, 1.0)
    assert reactor.get(second).state is S.WAITING
    assert reactor.counts() == {"g1": {"queued": 1}, "g2": {"waiting": 1}}
    worker = join(reactor, cores=4)
    [item] = run_all(reactor)
    reactor.finished(worker, [result(item.job_id, item.lease_id)], 2.0)
    assert reactor.get(second).state is S.QUEUED


@pytest.mark.parametrize(("changes", "error"), [
    ({"after": ["3"]}, "dependency cycle"),
    ({"after": ["99"]}, "dependency 99 does not exist"),
])
def test_a_change_that_cannot_apply_to_every_job_changes_none(
        changes: dict[str, object], error: str) -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    ids = add(reactor, spec("a"), spec("b"))
    add(reactor, spec("c", after=[str(ids[1])]))
    before = [(j.dependencies, j.state) for j in map(reactor.get, ids)]
    with pytest.raises(InputError, match=error):
        reactor.modify([reactor.get(i) for i in ids], changes, 1.0)
    assert [(j.dependencies, j.state) for j in map(reactor.get, ids)] == before


def test_a_running_job_cannot_be_changed() -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    ids = add(reactor, spec("a"), spec("b"))
    join(reactor, cores=1)
    run_all(reactor)
    with pytest.raises(Conflict, match="is running"):
        reactor.modify([reactor.get(i) for i in ids], {"priority": 3}, 1.0)
    assert [reactor.get(i).priority for i in ids] == [0, 0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["g1", "g2", "g3"]),
                          st.integers(-2, 2)), max_size=15))
def test_counts_stay_true_whatever_is_moved(moves: list[tuple[int, str, int]]) -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    ids = add(reactor, *[spec(f"j{i}", group="g1") for i in range(6)])
    worker = join(reactor, cores=2)
    for item in run_all(reactor):
        reactor.finished(worker, [result(item.job_id, item.lease_id)], 1.0)
    for index, group, priority in moves:
        job = reactor.get(ids[index])
        if job.state is not S.RUNNING:
            reactor.modify([job], {"group": group, "priority": priority}, 2.0)
    fresh: dict[str, dict[str, int]] = {}
    for job_id in ids:
        job = reactor.get(job_id)
        fresh.setdefault(job.group, {}).setdefault(job.state.value, 0)
        fresh[job.group][job.state.value] += 1
    assert reactor.counts() == dict(sorted(fresh.items()))


def test_the_jobs_waiting_on_one_come_from_the_dependency_index() -> None:
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    [first] = add(reactor, spec("a", group="g"))
    by_id, by_group, other = add(reactor, spec("b", after=[str(first)]),
                                 spec("c", after=["group:g"]), spec("d", group="h"))
    assert [job.id for job in reactor.waiting_on(reactor.get(first))] == [by_id, by_group]
    assert reactor.waiting_on(reactor.get(other)) == []

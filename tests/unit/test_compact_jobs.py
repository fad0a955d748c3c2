"""Queued jobs are held compactly: jobs share their empty collections and the few strings
(directory, group, owner) they repeat, whether added or read back after a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shoal.core.models import EMPTY_DICT, EMPTY_LIST, Job, JobState, own_dict, own_list
from shoal.server.reactor import Reactor
from shoal.store import Store
from shoal.store.repository import _RUN_COLUMNS as NEW_JOB_NULLS

from .factories import spec


def test_a_shared_empty_refuses_every_change_in_place() -> None:
    for change in (lambda: EMPTY_LIST.append("x"), lambda: EMPTY_LIST.extend(["x"]),
                   lambda: EMPTY_LIST.__iadd__(["x"]), lambda: EMPTY_LIST.insert(0, "x"),
                   lambda: EMPTY_DICT.__setitem__("k", "v"), lambda: EMPTY_DICT.update(k="v"),
                   lambda: EMPTY_DICT.setdefault("k", "v")):
        with pytest.raises(TypeError, match="never changed in place"):
            change()
    assert EMPTY_LIST == [] and EMPTY_DICT == {}


def test_own_copies_are_separate_unless_empty() -> None:
    given = ["a"]
    copied = own_list(given)
    copied.append("b")
    assert given == ["a"]
    assert own_list([]) is EMPTY_LIST and own_dict({}) is EMPTY_DICT
    assert own_dict({"K": "v"}) == {"K": "v"} and own_dict({"K": "v"}) is not EMPTY_DICT


def _added(tmp_path: Path) -> tuple[Store, list]:
    store = Store(tmp_path / "shoal.db")
    reactor = Reactor([], next_job_id=1, next_lease_id=1)
    specs = [spec(f"echo {i}", group="nightly") for i in range(3)]
    specs.append(spec("env", env={"K": "v"}, limits=["db"], after=["group:nightly"]))
    plan = reactor.plan_add(specs, rerun=False, now=0.0, owner="alice")
    store.add_jobs(plan.new_jobs, reactor.journal_of_new(plan, 0.0))
    return store, plan.new_jobs


def test_added_jobs_share_what_they_repeat(tmp_path: Path) -> None:
    _, jobs = _added(tmp_path)
    plain = jobs[:3]
    assert all(job.env is EMPTY_DICT and job.limits is EMPTY_LIST and job.files is EMPTY_LIST
               and job.dependencies is EMPTY_LIST for job in plain)
    assert len({id(job.cwd) for job in plain}) == 1
    assert len({id(job.group) for job in plain}) == 1
    special = jobs[3]
    assert special.env == {"K": "v"} and special.limits == ["db"]
    assert special.dependencies == ["group:nightly"] and special.env is not EMPTY_DICT


def test_jobs_read_back_share_what_they_repeat(tmp_path: Path) -> None:
    store, _ = _added(tmp_path)
    store.close()
    loaded = Store(tmp_path / "shoal.db").load_jobs(live_only=True)
    assert [job.cmd for job in loaded] == ["echo 0", "echo 1", "echo 2", "env"]
    plain = loaded[:3]
    assert all(job.env is EMPTY_DICT and job.resources is EMPTY_DICT
               and job.dependencies_any is EMPTY_LIST for job in plain)
    assert len({id(job.cwd) for job in loaded}) == 1
    assert len({id(job.owner) for job in loaded}) == 1
    assert loaded[3].env == {"K": "v"} and loaded[3].limits == ["db"]


def test_every_field_of_a_job_reads_back_as_written(tmp_path: Path) -> None:
    """Rows are read positionally, in Job's field order: a field moved or added in one place
    and not the other shows here. Every field gets a value of its own (holder aside: kept
    with the attempt, not the job)."""
    values: dict[str, object] = {}
    for number, field in enumerate(dataclasses.fields(Job), start=1):
        if field.name == "holder":
            values[field.name] = None
        elif field.name == "state":
            values[field.name] = JobState.FAILED
        elif field.name in ("env", "resources"):
            values[field.name] = {f"K{number}": number if field.name == "resources"
                                  else str(number)}
        elif field.name in ("dependencies", "dependencies_any", "limits"):
            values[field.name] = [f"group:g{number}"] if "depend" in field.name else [f"l{number}"]
        elif field.name == "files":
            values[field.name] = [{"path": f"f{number}", "mode": 0o644, "size": 1,
                                   "sha256": "0" * 64}]
        elif field.type in ("bool",):
            values[field.name] = True
        elif "float" in str(field.type) and "int" not in str(field.type):
            values[field.name] = number + 0.5
        elif "int" in str(field.type):
            values[field.name] = number
        else:
            values[field.name] = f"{field.name}-{number}"
    job = Job(**values)  # type: ignore[arg-type]
    store = Store(tmp_path / "shoal.db")
    # Written as the server writes it: added (a new job's row leaves its run's columns
    # out), then changed by a tick (which writes them).
    added = dataclasses.replace(job, **{name: None for name in NEW_JOB_NULLS})
    store.add_jobs([added], [])
    assert store.jobs_by_id([job.id]) == [added]
    store.commit_tick([job], [], [], [], [], [])
    [loaded] = store.jobs_by_id([job.id])
    assert loaded == job

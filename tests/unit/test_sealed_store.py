"""A clean stop seals the database with the jobs' counts the server kept: the next start, if
it finds the file exactly as it was left, neither checks it page by page nor counts its jobs
again. The counts kept must then be the database's own, whatever was done to the jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.errors import ShoalError
from shoal.core.models import JobChanges, JobState
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store, repository
from shoal.store.files import SEAL_SUFFIX, sealed_counts
from shoal.store.schema import SCHEMA_VERSION

from .factories import spec
from .test_backlog import run_everything

OPERATIONS = st.lists(st.sampled_from([
    "add g", "add h", "add h again", "run", "kill g", "retry g", "remove h", "purge done",
    "modify g", "remove first"]), max_size=8)


def counted(path: Path) -> list[tuple[str, str, JobState, int]]:
    """Counted by a scan of the jobs."""
    store = Store.read_only(path)
    try:
        return sorted(store.job_counts())
    finally:
        store.close()


def apply(service: Service, operation: str, added: list[int]) -> None:
    if operation.startswith("add"):
        group = operation.split()[1]
        added.append(service.add([spec(f"{group} {n}", group=group) for n in range(25)],
                                 rerun=operation.endswith("again"))["added"])
    elif operation == "run":
        run_everything(service)
    elif operation == "purge done":
        service.purge([JobState.DONE])
    elif operation == "modify g":
        service.modify(None, "g", JobChanges(priority=3))
    elif operation == "remove first":
        service.act("remove", [1], None)
    else:
        action, group = operation.split()
        service.act(action, None, group)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_the_counts_sealed_at_a_clean_stop_are_the_databases(operations: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shoal.db"
        service = Service(Store(path), ReactorConfig(queue_window=10))
        added: list[int] = []
        for operation in operations:
            with contextlib.suppress(ShoalError):  # refused (job 1 gone): nothing changed
                apply(service, operation, added)
        asyncio.run(service.stop())

        sealed = sealed_counts(path, SCHEMA_VERSION)
        assert sealed is not None
        assert sorted(sealed) == [(owner, group, state.value, jobs)
                                  for owner, group, state, jobs in counted(path)]


def test_a_file_as_sealed_is_not_checked_again_and_one_written_since_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[Path] = []
    check = repository.check_database
    monkeypatch.setattr(repository, "check_database",
                        lambda db, path, **kw: (checked.append(path), check(db, path, **kw)))
    path = tmp_path / "shoal.db"
    service = Service(Store(path))
    service.add([spec(f"echo {n}") for n in range(3)])
    asyncio.run(service.stop())
    assert checked == []  # a new database: nothing to check

    seal = path.with_name(path.name + SEAL_SUFFIX)
    assert seal.exists()
    service = Service(Store(path))
    assert checked == []  # as the clean stop left it
    assert not seal.exists()  # taken: only the next clean stop vouches for the file again
    assert service.status()["totals"] == {"queued": 3}
    service.add([spec("echo more")])
    service.store.close()  # not a clean stop of the server: no seal

    service = Service(Store(path))
    assert checked == [path]
    assert service.status()["totals"] == {"queued": 4}
    asyncio.run(service.stop())

    # Written behind its back (here, the same bytes again), even with its times set back:
    # its change time tells.
    status = path.stat()
    with path.open("r+b") as handle:
        handle.seek(100)
        same = handle.read(4)
        handle.seek(100)
        handle.write(same)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    Store(path).close()
    assert checked == [path, path]

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import require

from .harness import FaultCluster
from .netns import NetnsHost, netns_missing


def require_system(missing: str | None) -> None:
    """`require_system(what_is_missing())`: go on if nothing is missing; else skip the test,
    or fail it when SHOAL_REQUIRE_SYSTEM_TESTS=1 (where the system tests must run)."""
    require(missing is None, missing or "")


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[FaultCluster]:
    """A cluster not started yet: each test starts the server and workers it needs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = FaultCluster(tmp_path / "home", logs, tmp_path / "ledger")
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            cluster.kill_leftover_jobs()


@pytest.fixture
def netns_host() -> Iterator[NetnsHost]:
    """A second host in a network namespace, removed afterwards whatever happened.
    Ask for it before `faults`, so the workers inside it are stopped first."""
    require_system(netns_missing())
    host = NetnsHost()
    try:
        host.create()
        yield host
    finally:
        host.destroy()
        assert host.leftovers() == []

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A real server with two real workers of two cores each."""
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(home, logs)
    try:
        instance.start_server("--retry-base", "0.2", "--lease-timeout", "3", "--lost-grace", "1")
        instance.start_worker("w1", 2)
        instance.start_worker("w2", 2)
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Cluster]:
    """A real server over TLS, with its defaults and no workers."""
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    try:
        instance.start_server()
        yield instance
    finally:
        instance.stop()

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A real server with two real workers of two cores each."""
    with running_cluster(tmp_path, "--retry-base", "0.2", "--lease-timeout", "3",
                         "--lost-grace", "1", workers=[("w1", 2), ("w2", 2)]) as instance:
        yield instance


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Cluster]:
    """A real server over TLS, with its defaults and no workers."""
    with running_cluster(tmp_path) as instance:
        yield instance

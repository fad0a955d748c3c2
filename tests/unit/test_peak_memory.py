"""Which figure a finished job reports as its peak memory."""

from __future__ import annotations

import pytest

from shoal.worker.measure import peak_memory_bytes

MiB = 1 << 20


@pytest.mark.parametrize(("cgroup", "reaped", "sampled", "over", "peak"), [
    (30 * MiB, 48 * MiB, 40 * MiB, 0, 30 * MiB),  # the cgroup's, without the worker's image
    (None, 48 * MiB, 40 * MiB, 0, 48 * MiB),  # no cgroup: the larger of the others
    (0, 10 * MiB, 40 * MiB, 0, 40 * MiB),  # a cgroup that counted nothing is no figure
    # Killed for sampled use over its limit: never reported under what it was killed for.
    (96 * MiB, 48 * MiB, 101 * MiB, 101 * MiB, 101 * MiB),
    (120 * MiB, 48 * MiB, 101 * MiB, 101 * MiB, 120 * MiB),
    (None, 48 * MiB, 101 * MiB, 101 * MiB, 101 * MiB),
])
def test_the_peak_reported(cgroup: int | None, reaped: int, sampled: int, over: int,
                           peak: int) -> None:
    assert peak_memory_bytes(cgroup_peak_bytes=cgroup, reaped_max_rss_bytes=reaped,
                             sampled_tree_bytes=sampled, over_limit_bytes=over) == peak

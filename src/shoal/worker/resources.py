"""What this host can offer: the cores this process may run on and the memory it may use."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from shoal.core.protocol import Resources

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def detect_resources() -> Resources:
    """Cores from the CPU affinity mask; memory from the host total, lowered by a cgroup limit."""
    cores = len(os.sched_getaffinity(0))
    memory_bytes = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    if limit is not None:
        memory_bytes = min(memory_bytes, limit)
    return Resources(cores=cores, memory_bytes=memory_bytes)


def cgroup_memory_limit() -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors, if any is set."""
    limits = [limit for path in _limit_files() if (limit := _read_limit(path)) is not None]
    return min(limits) if limits else None


def _limit_files() -> list[Path]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2: limits apply from every ancestor
            files += _along_path(_CGROUP_ROOT, cgroup_path, "memory.max")
        elif "memory" in controllers.split(","):  # cgroup v1 memory controller
            files += _along_path(_CGROUP_ROOT / "memory", cgroup_path, "memory.limit_in_bytes")
    return files


def _along_path(mount: Path, cgroup_path: str, filename: str) -> list[Path]:
    """The limit file at the mount root and at each level down to the process's own cgroup.

    Inside a cgroup namespace the mount root already is the process's cgroup, so the root is
    always looked at, and deeper levels only where they exist.
    """
    parts = [part for part in cgroup_path.split("/") if part]
    return [mount.joinpath(*parts[:depth], filename) for depth in range(len(parts) + 1)]


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2) means no limit
        return None
    value = int(text)
    return value if value < 2**62 else None  # v1 writes a huge page-rounded number for "none"

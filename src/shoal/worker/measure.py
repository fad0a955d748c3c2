"""Resident memory of a job's whole process tree, from one pass over /proc shared by all jobs.

One read of /proc/PID/stat gives a process's parent, process group and resident pages, so a
single scan per sampling round serves every running job. (psutil's ``children()`` rescans /proc
for each job it is asked about, and still needs a second read per process for the RSS.)

`peak_memory_bytes` picks the figure a job reports as its ``peak_rss_bytes``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

_PROC = "/proc"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Fields after "pid (comm) ", counted from 0: state, ppid, pgrp, ... rss is field 24 of stat(5).
_PPID, _PGRP, _RSS = 1, 2, 21


@dataclass(slots=True)
class ProcessTable:
    """A snapshot of every process's parent, group and resident bytes."""

    rss_bytes: dict[int, int] = field(default_factory=dict)
    children: defaultdict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    group_members: defaultdict[int, list[int]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def scan(cls) -> ProcessTable:
        table = cls()
        for name in os.listdir(_PROC):
            if not name.isdigit():
                continue
            fields = _stat_fields(name)
            if fields is None:  # exited during the scan
                continue
            pid = int(name)
            table.rss_bytes[pid] = int(fields[_RSS]) * _PAGE_SIZE
            table.children[int(fields[_PPID])].append(pid)
            table.group_members[int(fields[_PGRP])].append(pid)
        return table

    def tree_rss_bytes(self, leader_pid: int) -> int:
        """Summed RSS of the leader, its descendants, and anything left in its process group.

        The group catches children whose parent already exited (re-parented away from the
        tree); the descendants catch children that moved to a group of their own.
        """
        members: set[int] = set()
        pending = [leader_pid, *self.group_members.get(leader_pid, ())]
        while pending:
            pid = pending.pop()
            if pid not in members:
                members.add(pid)
                pending.extend(self.children.get(pid, ()))
        return sum(self.rss_bytes.get(pid, 0) for pid in members)


def peak_memory_bytes(*, cgroup_peak_bytes: int | None, reaped_max_rss_bytes: int,
                      sampled_tree_bytes: int, over_limit_bytes: int = 0) -> int:
    """A finished job's peak memory.

    Its cgroup's peak (``memory.peak``, ``memory.max_usage_in_bytes``) when the job had one
    with a memory controller: it counts every process of the job, however short-lived or far
    it wandered, and only what the job itself used. Otherwise the larger of ``wait4``'s
    ``ru_maxrss`` (the largest single process among the leader and the descendants it reaped;
    it includes the worker's own image, copied at the fork before the exec) and the largest
    sum over the process tree seen while sampling.

    A job killed for its memory (``over_limit_bytes``, the sampled use it was killed for)
    reports at least that: its cgroup counts less than its processes' resident sets (pages of
    shared files charged elsewhere), and its peak must not read as under the limit it was
    killed for passing.
    """
    if cgroup_peak_bytes is not None and cgroup_peak_bytes > 0:
        return max(cgroup_peak_bytes, over_limit_bytes)
    return max(reaped_max_rss_bytes, sampled_tree_bytes, over_limit_bytes)


def _stat_fields(pid_name: str) -> list[bytes] | None:
    try:
        fd = os.open(f"{_PROC}/{pid_name}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name may contain spaces and parentheses; it ends at the last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    return fields if len(fields) > _RSS else None

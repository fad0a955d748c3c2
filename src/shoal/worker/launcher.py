"""Start each slot's next job the moment its previous one ends, off the interpreter.

A runner that starts and reaps its jobs on its event loop leaves a slot empty from the instant
a job ends until the loop has run: while it records one job's end, the job beside it may
end too and wait. With short jobs on few cores that idle time, and the loop's own CPU for
each spawn and reap, are most of what a Python runner costs beyond `xargs -P`
(docs/performance.md).

The native launcher (``_launcher.c``, built with shoal where a C compiler is found) holds a
queue per slot. A thread per lane (slot ``i`` is lane ``i % lanes``) waits on its running jobs'
pidfds; when one ends it SIGKILLs what is left of the job's process group while the leader is
still an unreaped zombie, reaps it with ``wait4``, reads whether anything of it is left in
its cgroup (what left the group: the runner kills it) and starts that slot's next job at once,
with ``vfork`` and ``execve``, the child entering the job's directory and moving itself into
its cgroups first. The
runner learns of each end and start afterwards (`events`) and keeps each slot's queue a few
jobs long (`runner.QUEUED_PER_SLOT`); with nothing else to start and a slot free, it takes
back what waits behind running jobs (`withdraw`) to start it there. The runner is told of
ends and starts at once when a slot runs low (`notify_below`), else within `notify_delay`
seconds: one wake-up of its loop handles several jobs. A job not wholly in its cgroups has
its pid in the keeper's table while it runs, put there by the thread that started it
(`share_pids`): the keeper knows it before the runner does.

Without the compiled part, or with ``SHOAL_LAUNCHER=python`` in the environment, the runner
spawns and reaps on its loop as before (`available` is False).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple, Protocol

try:
    from shoal.worker._launcher import Launcher as _Native
except ImportError:  # built without a C compiler
    _Native = None

LANES = 16  # threads at most; each is started by the first job of its lane
LAUNCHER_VARIABLE = "SHOAL_LAUNCHER"


class LaunchEvent(NamedTuple):
    """What the launcher saw: kind ``e`` a job ended, ``s`` it started, ``f`` it failed to."""

    kind: str
    token: int  # the lease id
    pid: int
    status: int  # ``e``: the wait status (-1: reaped elsewhere); ``f``: errno
    user_seconds: float
    system_seconds: float
    max_rss_kib: int
    wall: float  # time.time() when it ended or was started
    monotonic: float  # time.monotonic() then
    in_cwd: bool  # ``f``: it could not enter its directory
    empty: int  # ``e``: its cgroup was empty once it was reaped (1), was not (0), unread (-1)
    entered: int  # ``s``: how many of the cgroups it was given it entered itself


Fallback = tuple[bytes, Sequence[bytes], Sequence[bytes]]  # (path, argv, envp)


class Launcher(Protocol):
    def queue(self, slot: int, token: int, path: bytes, argv: Sequence[bytes],
              envp: Sequence[bytes], fds: tuple[int, int, int], cgroup_fds: Sequence[int],
              fallback: Fallback | None = None, rlimit: tuple[int, int] | None = None,
              cwd: bytes | None = None, procs: bytes | None = None,
              contained_at: int = -1) -> None: ...

    def share_pids(self, fd: int, count: int) -> None: ...

    def withdraw(self, token: int) -> bool: ...

    def signal(self, token: int, signal_number: int) -> bool: ...

    def events(self) -> list[tuple[str, int, int, int, float, float, int, float, float,
                                   bool, int, int]]: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def available() -> bool:
    return _Native is not None and os.environ.get(LAUNCHER_VARIABLE, "native") != "python"


def make_launcher(notify_below: int = 0, notify_delay: float = 0.0) -> Launcher:
    """`notify_below` 0: the events' eventfd becomes readable at each end and start."""
    assert _Native is not None
    launcher: Launcher = _Native(LANES, notify_below, notify_delay)
    return launcher


def read_events(launcher: Launcher) -> list[LaunchEvent]:
    return [LaunchEvent._make(event) for event in launcher.events()]

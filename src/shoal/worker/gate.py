"""The start line of a gated attempt, and waiting for an instant precisely.

A gated command is spawned as ``bash -c GATE_SCRIPT bash CMD``. The script blocks reading a pipe
the runner holds (the gate). Releasing writes one byte to it; bash then writes its own
``$EPOCHREALTIME`` to a second pipe (the stamp), the instant it really passed the line, closes
both pipes and runs CMD with ``eval`` in that same shell. ``eval`` rather than ``exec bash -c``:
a second bash start-up (about 2 ms, and uneven from host to host) would otherwise sit between
the stamp and the command. After ``shift`` the command sees ``$0`` = bash and no arguments, as
under a plain ``bash -c CMD``. The descriptor numbers are written into the script, so nothing of
the gate shows in the job's environment.

If the gate pipe closes without a byte (the runner is gone) the script exits with 125 and never
runs the command.

Where the system allows it (root, CAP_SYS_NICE or an RLIMIT_RTPRIO), the start line is crossed
at real-time priority: held processes get SCHED_FIFO just before their release and lose it as
soon as their stamp has been read, and the releasing thread outranks them while it opens the
gates. Otherwise a released process may wait a scheduler slice (milliseconds) behind whatever
else keeps the CPUs busy. Their children are born without it (SCHED_RESET_ON_FORK), so only the
shell that passed the line has it, until the runner reads its stamp; at most one process fewer
than this worker has CPUs is boosted at a time, so the runner always finds a CPU to do that.
Elsewhere this is silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

GATE_CLOSED_EXIT_CODE = 125
# Sleep in the event loop until this long before the instant; the loop may wake a little late.
LOOP_SLEEP_MARGIN_SECONDS = 0.015
# Then block in time.sleep until this long before it (the kernel's wake-up is that precise),
# and spin on the clock for the rest.
SPIN_MARGIN_SECONDS = 0.0003
_LONGEST_LOOP_SLEEP_SECONDS = 1.0  # re-read the wall clock now and then: it may be stepped
# SCHED_FIFO priorities at the line: the releasing thread above the processes it releases, so
# the first one woken cannot hold up the gates of the others; the two lowest there are.
_HELD_PRIORITY = 1
_RELEASER_PRIORITY = 2


def gate_script(gate_fd: int, stamp_fd: int) -> str:
    return (
        f"read -r -u {gate_fd} _ || exit {GATE_CLOSED_EXIT_CODE}\n"
        f'printf %s "$EPOCHREALTIME" >&{stamp_fd}\n'
        f"exec {gate_fd}<&- {stamp_fd}>&-\n"
        'eval "shift;$1"'
    )


@dataclass(slots=True, eq=False)
class Gate:
    """The runner's ends of one attempt's gate and stamp pipes."""

    gate_write_fd: int
    stamp_read_fd: int
    child_fds: tuple[int, int]  # the child's ends (gate read, stamp write), until spawned
    stamp: bytearray = field(default_factory=bytearray)
    opened: bool = False
    boosted: bool = False  # runs at real-time priority until its stamp is read
    boosted_from: tuple[int, os.sched_param] | None = None

    @classmethod
    def create(cls) -> Gate:
        gate_read, gate_write = os.pipe2(os.O_CLOEXEC)
        try:
            stamp_read, stamp_write = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(gate_read)
            os.close(gate_write)
            raise
        os.set_blocking(stamp_read, False)  # read from the event loop
        return cls(gate_write, stamp_read, (gate_read, stamp_write))

    def argv(self, cmd: str) -> list[str]:
        gate_read, stamp_write = self.child_fds
        return ["bash", "-c", gate_script(gate_read, stamp_write), "bash", cmd]

    def close_child_ends(self) -> None:
        """After the spawn: the child has its own copies, so EOF on the stamp means it is done."""
        for fd in self.child_fds:
            if fd >= 0:
                os.close(fd)
        self.child_fds = (-1, -1)

    def read_stamp(self) -> bool:
        """Read what the process wrote to the stamp pipe; True once it has been closed."""
        while True:
            try:
                chunk = os.read(self.stamp_read_fd, 64)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self.stamp += chunk

    def started_at(self) -> float | None:
        """The process's own clock reading as it passed the line, if it wrote one."""
        # A locale with a decimal comma writes $EPOCHREALTIME as 1700000000,123456.
        text = self.stamp.decode("ascii", errors="replace").strip().replace(",", ".")
        try:
            return float(text)
        except ValueError:
            return None

    def close(self) -> None:
        self.close_child_ends()
        for fd in (self.gate_write_fd, self.stamp_read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.gate_write_fd = self.stamp_read_fd = -1


def open_gates(gates: list[Gate]) -> None:
    """Write the release byte to every gate, back to back: nothing else between them."""
    for gate in gates:
        try:
            os.write(gate.gate_write_fd, b"\n")
        except OSError:  # the process is gone; its exit is reported as usual
            continue
        gate.opened = True


async def sleep_until_shortly_before(at: float) -> None:
    """Sleep in the event loop until LOOP_SLEEP_MARGIN_SECONDS before `at` (time.time() scale)."""
    while (remaining := at - time.time() - LOOP_SLEEP_MARGIN_SECONDS) > 0:
        await asyncio.sleep(min(remaining, _LONGEST_LOOP_SLEEP_SECONDS))


def block_until(at: float) -> None:
    """Return at `at` (time.time() scale) as exactly as this host can: sleep, then spin."""
    remaining = at - time.time() - SPIN_MARGIN_SECONDS
    if remaining > 0:
        time.sleep(remaining)
    while time.time() < at:
        pass


class _RealTime:
    allowed = True  # until the system says otherwise; then never asked again
    boosted = 0  # held processes at real-time priority now, on this worker
    # Always leave a CPU to the rest: a boosted shell runs its command's builtins at real-time
    # priority until the runner has read its stamp, and the runner (and anything it waits
    # for) must find a CPU to do that on. More components than CPUs cannot start together
    # anyway.
    most = len(os.sched_getaffinity(0)) - 1


def boost(gate: Gate, pid: int) -> None:
    """Real-time priority for a held process, so it runs the moment its gate opens."""
    if not _RealTime.allowed or _RealTime.boosted >= _RealTime.most or gate.boosted:
        return
    try:
        before = os.sched_getscheduler(pid), os.sched_getparam(pid)
        os.sched_setscheduler(
            pid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(_HELD_PRIORITY)
        )
    except PermissionError:
        _RealTime.allowed = False
    except OSError:  # gone already
        return
    else:
        gate.boosted, gate.boosted_from = True, before
        _RealTime.boosted += 1


def unboost(gate: Gate, pid: int | None) -> None:
    """Back to the priority it had; `pid` None if the process is gone (reaped: its pid could
    be someone else's by now)."""
    if not gate.boosted:
        return
    gate.boosted = False
    _RealTime.boosted -= 1
    if pid is not None and gate.boosted_from is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, *gate.boosted_from)


@contextlib.contextmanager
def releasing_priority() -> Iterator[None]:
    """This thread outranks the held processes while it opens their gates (a few hundred
    microseconds of spinning, then one write per gate)."""
    before = None
    if _RealTime.allowed:
        with contextlib.suppress(OSError):
            policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RELEASER_PRIORITY))
            before = policy, param
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, *before)

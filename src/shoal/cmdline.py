"""Secrets given as arguments: every user of a host can read a process's command line (`ps`,
`/proc/PID/cmdline`), so a token put there is shown to all of them.

`hide_arguments` overwrites such a secret in place, in the memory the kernel shows as the
command line (Linux; it needs no privilege, the memory is the process's own). It was visible
from the process's start until then, so this is a mitigation: the safe forms (a file, the
environment, standard input) never put it there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# Fields 48 and 49 of /proc/PID/stat (Linux 3.5 on): where the arguments lie in memory.
_ARG_START_FIELD = 48
_FIRST_FIELD_AFTER_NAME = 3


def hide_arguments(secrets: Iterable[str], proc: Path = Path("/proc/self")) -> bool:
    """Overwrite every occurrence of each secret in this process's command line with '*'.

    True if the command line now holds none of them; False if it still may (no /proc, or the
    kernel refused the write)."""
    wanted = [os.fsencode(secret) for secret in secrets if secret]
    if not wanted:
        return True
    try:
        start, end = _argument_area(proc / "stat")
        with (proc / "mem").open("r+b", buffering=0) as memory:
            memory.seek(start)
            arguments = memory.read(end - start)
            hidden = arguments
            for secret in wanted:
                hidden = hidden.replace(secret, b"*" * len(secret))
            if hidden != arguments:
                memory.seek(start)
                memory.write(hidden)
        shown = (proc / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    return not any(secret in shown for secret in wanted)


def _argument_area(stat_path: Path) -> tuple[int, int]:
    stat = stat_path.read_bytes()
    # The process's name, in parentheses, may hold spaces and ')': count from the last one.
    fields = stat[stat.rindex(b")") + 2 :].split()
    index = _ARG_START_FIELD - _FIRST_FIELD_AFTER_NAME
    start, end = int(fields[index]), int(fields[index + 1])
    if not 0 < start < end:
        raise ValueError("no argument area")
    return start, end

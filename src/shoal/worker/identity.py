"""The secret a worker proves itself with on every register.

The server gives a worker's attempts to the token and secret that registered it: another
process, whatever its token, can neither claim them nor take the worker's name while they
wait for it. A worker keeps its secret in its spool directory, in a file of its host's name
(mode 0600), locked while it lives, so that the same worker restarted under its name (a
supervisor, after a crash) is known as the one whose attempts ended, and they run again at
once instead of after the server's lost grace. A second live process of that directory finds
the file locked and draws a secret of its own; so does a worker whose spool directory cannot
be written or locked (a shared file system without locks): a restart then waits out the grace.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import socket
import stat
from pathlib import Path

log = logging.getLogger(__name__)

_SECRET = re.compile(r"[0-9a-f]{32}")
_held: list[int] = []  # the locked files' descriptors, open for the process's life


def secret_file(spool_dir: Path) -> Path:
    """Where the secret is kept: one file a host, so that two hosts sharing a spool directory
    on a file system whose locks are local to each host never share a secret."""
    return spool_dir / f"worker-{socket.gethostname()}.secret"


def kept_secret(spool_dir: Path) -> str:
    """This worker's secret: the one kept in `spool_dir`, or a new one kept there."""
    path = secret_file(spool_dir)
    try:
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return _fresh(f"cannot keep this worker's secret in {path} ({exc.strerror})")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise OSError(0, "not a regular file of this user")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another live worker keeps this directory
        os.close(fd)
        return secrets.token_hex(16)
    except OSError as exc:  # no locks here (ENOLCK, ENOSYS, ...): never reuse unlocked
        os.close(fd)
        return _fresh(f"cannot lock {path} ({exc.strerror})")
    try:
        os.fchmod(fd, 0o600)
        kept = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if not _SECRET.fullmatch(kept):
            kept = secrets.token_hex(16)
            os.ftruncate(fd, 0)
            os.pwrite(fd, kept.encode() + b"\n", 0)
            os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        return _fresh(f"cannot read or write {path} ({exc.strerror})")
    _held.append(fd)
    return kept


def _fresh(problem: str) -> str:
    log.warning("%s: a restart of this worker under its name waits out the server's lost "
                "grace", problem)
    return secrets.token_hex(16)


def release_all() -> None:
    """Let go of the kept secrets (a test's process goes on after its worker)."""
    while _held:
        with contextlib.suppress(OSError):
            os.close(_held.pop())

"""The secret a worker proves itself with on every register.

The server gives a worker's attempts to the token and secret that registered it: another
process, whatever its token, can neither claim them nor take the worker's name while they
wait for it. A worker keeps its secret in its spool directory (mode 0600), locked while it
lives, so that the same worker restarted under its name (a supervisor, after a crash) is
known as the one whose attempts ended, and they run again at once instead of after the
server's lost grace. A second live process of that name finds the file locked and draws a
secret of its own; so does a worker whose spool directory cannot be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_FILE = "worker.secret"
_SECRET = re.compile(r"[0-9a-f]{32}")
_held: list[int] = []  # the locked files' descriptors, open for the process's life


def kept_secret(spool_dir: Path) -> str:
    """This worker's secret: the one kept in `spool_dir`, or a new one kept there."""
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(spool_dir / SECRET_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("cannot keep this worker's secret in %s (%s): a restart under the same "
                    "name waits out the server's lost grace", spool_dir, exc.strerror)
        return secrets.token_hex(16)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another live worker keeps this directory
        os.close(fd)
        return secrets.token_hex(16)
    kept = os.read(fd, 64).decode("ascii", "replace").strip()
    if _SECRET.fullmatch(kept):
        _held.append(fd)
        return kept
    secret = secrets.token_hex(16)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, secret.encode() + b"\n", 0)
        os.fsync(fd)
    _held.append(fd)
    return secret

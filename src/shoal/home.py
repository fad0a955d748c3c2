"""Where a server keeps its state, and how the CLI and local workers find it.

`$SHOAL_HOME` (default `~/.shoal`) holds `shoal.db`, and `server.json`, the connection file
(URL and tokens, mode 0600). `SHOAL_SERVER` and `SHOAL_TOKEN` override what the file says.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shoal.core.errors import ConnectError, ShoalError

CONNECTION_FILE = "server.json"
DATABASE_FILE = "shoal.db"
DEFAULT_PORT = 7340


def shoal_home() -> Path:
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal").expanduser()


@dataclass(frozen=True)
class Connection:
    url: str
    admin_token: str | None
    worker_token: str | None

    def __repr__(self) -> str:  # tokens are secrets
        return f"Connection(url={self.url!r})"


def write_connection(home: Path, connection: Connection, *, pid: int) -> Path:
    """Write the connection file atomically, readable by its owner only."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONNECTION_FILE
    tmp = path.with_suffix(".tmp")
    data = {
        "url": connection.url,
        "admin_token": connection.admin_token,
        "worker_token": connection.worker_token,
        "pid": pid,
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def read_connection_file(home: Path) -> Connection | None:
    path = home / CONNECTION_FILE
    try:
        data = json.loads(path.read_text())
        return Connection(data["url"], data.get("admin_token"), data.get("worker_token"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConnectError(f"{path}: unreadable connection file ({exc})") from None


def resolve_connection(*, role: str = "admin", server: str | None = None,
                       token: str | None = None) -> Connection:
    """Flags beat SHOAL_SERVER/SHOAL_TOKEN, which beat `$SHOAL_HOME/server.json`."""
    server = server or os.environ.get("SHOAL_SERVER")
    token = token or os.environ.get("SHOAL_TOKEN")
    from_file = read_connection_file(shoal_home())
    url = server or (from_file.url if from_file else None)
    if url is None:
        raise ConnectError(
            f"no server: none found in {shoal_home() / CONNECTION_FILE}; "
            "start one with `shoal server`, or set SHOAL_SERVER and SHOAL_TOKEN"
        )
    if token is None and from_file is not None and (server is None or server == from_file.url):
        token = from_file.worker_token if role == "worker" else from_file.admin_token
    if role == "worker":
        return Connection(url.rstrip("/"), None, token)
    return Connection(url.rstrip("/"), token, None)


def lock_home(home: Path) -> int:
    """Hold an exclusive lock on `home` for this process's life: one server per database."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShoalError(f"{home} is in use by another shoal server") from None
    return fd

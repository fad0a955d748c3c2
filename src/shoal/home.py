"""Where a server keeps its state, and how the CLI and workers find and trust it.

`$SHOAL_HOME` (default `~/.shoal`) holds `shoal.db`, `tls/` (the server's own CA and
certificate) and `server.json`, the connection file (URL, tokens and the CA's fingerprint,
mode 0600). `SHOAL_SERVER` and `SHOAL_TOKEN` override what the file says; `SHOAL_SERVER` may
also be a connection string, `shoal://TOKEN@HOST:PORT?ca=sha256:HEX`, which carries all three.
"""

from __future__ import annotations

import fcntl
import json
import os
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from shoal.core.errors import ConnectError, InputError, ShoalError, json_kind

CONNECTION_FILE = "server.json"
DATABASE_FILE = "shoal.db"
LOCK_FILE = "server.lock"  # held by whatever serves the home: a server, a run
DEFAULT_PORT = 7340
SCHEME = "shoal://"
SERVER_VARIABLE = "SHOAL_SERVER"
TOKEN_VARIABLE = "SHOAL_TOKEN"
MAX_PORT = 65535


def shoal_home() -> Path:
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal").expanduser()


@dataclass(frozen=True)
class Connection:
    url: str
    admin_token: str | None
    worker_token: str | None
    # The pinned CA (PEM) for an https URL; None trusts the system's store (an operator's
    # certificate), and means nothing for plain http.
    ca_pem: bytes | None = None
    ca_fingerprint: str | None = None

    def __repr__(self) -> str:  # tokens are secrets
        return f"Connection(url={self.url!r})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to verify the server: None for plain http."""
        if not self.url.startswith("https://"):
            return None
        from shoal.trust import client_context

        return client_context(self.ca_pem)


# ---- connection strings ----------------------------------------------------------------------


def format_connection_string(url: str, token: str, ca_fingerprint: str | None) -> str:
    """`shoal://TOKEN@HOST:PORT?ca=sha256:HEX` (own CA), `?tls=system` (an operator's
    certificate) or `?tls=off` (plain http): everything a worker or user needs, in one line."""
    parts = urlsplit(url)
    query = (f"ca={ca_fingerprint}" if ca_fingerprint else
             "tls=system" if parts.scheme == "https" else "tls=off")
    return f"{SCHEME}{quote(token, safe='')}@{parts.netloc}?{query}"


def parse_connection_string(text: str) -> tuple[str, str | None, str | None]:
    """(URL, token, CA fingerprint) of a connection string; InputError names what is wrong."""
    from shoal.trust import parse_pin

    if not text.startswith(SCHEME):
        raise InputError(f"not a connection string (expected {SCHEME}TOKEN@HOST:PORT?ca=...)")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise InputError("connection string: the port is not a number") from None
    if not parts.hostname or port is None:
        raise InputError("connection string: expected HOST:PORT after the token")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"ca", "tls"}
    if unknown:
        raise InputError(f"connection string: unknown parameter {sorted(unknown)[0]!r}")
    tls = query.get("tls", "pinned" if "ca" in query else None)
    if tls not in ("pinned", "system", "off") or (tls == "pinned") != ("ca" in query):
        raise InputError("connection string: give either ca=sha256:HEX, tls=system or tls=off")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    scheme = "http" if tls == "off" else "https"
    pin = parse_pin(query["ca"]) if "ca" in query else None
    token = unquote(parts.username) if parts.username else None
    return f"{scheme}://{host}:{port}", token, pin


# ---- the connection file ---------------------------------------------------------------------


def write_connection(home: Path, connection: Connection, *, pid: int,
                     ca_file: Path | None = None) -> Path:
    """Write the connection file atomically, readable by its owner only."""
    private_directory(home)
    path = home / CONNECTION_FILE
    tmp = path.with_suffix(".tmp")
    data = {
        "url": connection.url,
        "admin_token": connection.admin_token,
        "worker_token": connection.worker_token,
        "ca_fingerprint": connection.ca_fingerprint,
        "ca_file": str(ca_file) if ca_file else None,
        "pid": pid,
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def read_connection_file(home: Path) -> Connection | None:
    """The server written there; None if none is. A file that cannot be read, or is not a
    JSON object with a "url", finds no server (ConnectError); one whose fields are not what
    the server writes is an InputError naming the field."""
    path = home / CONNECTION_FILE
    try:
        data = json.loads(path.read_text())
        url, pin, ca_file = data["url"], data.get("ca_fingerprint"), data.get("ca_file")
        tokens = data.get("admin_token"), data.get("worker_token")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConnectError(f"{path}: unreadable connection file ({exc})") from None
    _check_connection_fields(data, path)
    ca_pem = None
    if ca_file:
        try:
            ca_pem = Path(ca_file).read_bytes()
        except OSError as exc:
            raise ConnectError(f"{path}: ca_file {ca_file}: {exc.strerror or exc}") from None
        _check_pin(ca_pem, pin, ca_file)
    return Connection(url, *tokens, ca_pem, pin)


def _check_connection_fields(data: dict[str, object], path: Path) -> None:
    """"url" a server address; the tokens, fingerprint and CA file strings (or null)."""
    for name in ("url", "admin_token", "worker_token", "ca_fingerprint", "ca_file"):
        value = data.get(name)
        if value is None and name != "url":
            continue
        if not isinstance(value, str):
            raise InputError(f'field "{name}": expected a string, not {json_kind(value)}',
                             source=str(path))
        problem = (address_problem(value) if name == "url" else
                   token_problem(value) if name.endswith("_token") else None)
        if problem is not None:
            raise InputError(f'field "{name}": {problem}', source=str(path))


# ---- trusting a pinned CA --------------------------------------------------------------------

_trusted: dict[str, bytes] = {}  # pin -> CA PEM, fetched and checked once per process


def _check_pin(ca_pem: bytes, pin: str | None, where: str) -> None:
    import hmac

    from shoal.trust import fingerprint

    try:
        actual = fingerprint(ca_pem)
    except ValueError as exc:
        raise ConnectError(f"{where}: {exc}") from None
    if pin is None or not hmac.compare_digest(actual, pin):
        raise ConnectError(f"{where}: the CA certificate does not match the pinned "
                           f"fingerprint {pin}")


def trusted_ca(url: str, pin: str) -> bytes:
    """The CA with this fingerprint: from this process's memory, else `$SHOAL_HOME/trusted/`,
    else fetched from the server (without sending any token) and checked against the pin."""
    from shoal.trust import fetch_pinned_ca

    if pin in _trusted:
        return _trusted[pin]
    cached = shoal_home() / "trusted" / f"{pin.removeprefix('sha256:')}.pem"
    try:
        pem = cached.read_bytes()
        _check_pin(pem, pin, str(cached))
    except (OSError, ConnectError):
        pem = fetch_pinned_ca(url, pin)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            cached.write_bytes(pem)
        except OSError:  # a read-only home only costs a fetch next time
            pass
    _trusted[pin] = pem
    return pem


def resolve_connection(*, role: str = "admin", server: str | None = None,
                       token: str | None = None, server_name: str = "the server address",
                       token_name: str = "the token") -> Connection:
    """Flags beat SHOAL_SERVER/SHOAL_TOKEN, which beat `$SHOAL_HOME/server.json`.

    `server` may be a URL or a connection string; a token given apart beats the string's.
    An address that cannot be dialled, or a token that cannot be sent, is an InputError
    naming where it came from (`server_name` and `token_name` for the arguments; the
    variables; the file and its field). The token is checked once a server is found: with
    none (ConnectError), a verb that reads `shoal run`'s state reads it, and needs no token.
    """
    server_from = server_name if server else SERVER_VARIABLE
    server = server or os.environ.get(SERVER_VARIABLE)
    token_from = token_name if token else TOKEN_VARIABLE
    token = token or os.environ.get(TOKEN_VARIABLE)
    if server:
        check_server_address(server, server_from)
    given_token = token

    def checked_token() -> None:  # called once a server is found
        if given_token:
            check_token(given_token, token_from)

    if server is not None and server.startswith(SCHEME):
        url, carried, pin = parse_connection_string(server)
        ca_pem = trusted_ca(url, pin) if pin else None
        checked_token()
        return _for_role(Connection(url, None, None, ca_pem, pin), role, token or carried)
    try:
        from_file = read_connection_file(shoal_home())
    except (ConnectError, InputError):
        if server is None:
            raise
        from_file = None  # a broken home does not stand in the way of an address given
    address = server.rstrip("/") if server else (from_file.url if from_file else None)
    if address is None:
        raise ConnectError(
            f"no server: none found in {shoal_home() / CONNECTION_FILE}; "
            "start one with `shoal server`, or set SHOAL_SERVER (a URL or a shoal:// "
            "connection string) and SHOAL_TOKEN"
        )
    checked_token()
    if from_file is not None and address == from_file.url:
        if token is None:
            token = from_file.worker_token if role == "worker" else from_file.admin_token
        return _for_role(from_file, role, token)
    return _for_role(Connection(address, None, None), role, token)


def address_problem(text: str) -> str | None:
    """Why `text`, a server's URL or `shoal://` connection string, cannot be dialled; None
    if it can. A connection string is never quoted: it carries a token."""
    if text.startswith(SCHEME):
        try:
            parse_connection_string(text)
        except InputError as exc:
            return str(exc)
        except ValueError:  # urlsplit's own refusals: a [ never closed, ...
            return "connection string: expected HOST:PORT after the token"
        return None
    shown = repr(text)
    if not text.startswith(("http://", "https://")):
        return (f"not a server address: {shown} (expected https://HOST:PORT or "
                f"{SCHEME}TOKEN@HOST:PORT?ca=...)")
    try:
        parts = urlsplit(text.rstrip("/"))
        port = parts.port
    except ValueError as exc:  # a [ never closed, a port out of range or not a number
        return f"not a valid URL: {shown} ({exc})"
    if not parts.hostname:
        return f"no host in {shown} (expected https://HOST:PORT)"
    if port is not None and not 1 <= port <= MAX_PORT:
        return f"{shown}: the port must be from 1 to {MAX_PORT}"
    return None


def check_server_address(text: str, where: str) -> None:
    """An InputError naming `where` (--server, SHOAL_SERVER) if `text` cannot be dialled."""
    problem = address_problem(text)
    if problem is not None:
        raise InputError(f"{where}: {problem}")


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a token (it goes in an HTTP header); None if it can. The token
    itself is never quoted."""
    if all("!" <= char <= "~" for char in token):
        return None
    return ("the token is malformed: a token is printable ASCII, without spaces or line "
            "breaks")


def check_token(token: str, where: str) -> None:
    """An InputError naming `where` (--token, SHOAL_TOKEN) if `token` cannot be sent."""
    problem = token_problem(token)
    if problem is not None:
        raise InputError(f"{where}: {problem}")


def _for_role(connection: Connection, role: str, token: str | None) -> Connection:
    if role == "worker":
        return replace(connection, admin_token=None, worker_token=token)
    return replace(connection, admin_token=token, worker_token=None)


def private_directory(path: Path) -> Path:
    """Make `path` (with any missing parents) and keep it to its owner, mode 0700: a home holds
    tokens, jobs' environments and their output."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask, and it may be older
    return path


def has_server_identity(home: Path) -> bool:
    """Whether a server has lived in `home`: its connection file or its own CA is there, so
    workers and users hold its tokens or pin its CA."""
    return (home / CONNECTION_FILE).exists() or (home / "tls" / "ca.pem").exists()


def lock_home(home: Path) -> int:
    """Hold an exclusive lock on `home` for this process's life: one server per database.

    The home is made private (0700) first: `shoal run` keeps its state the same way."""
    fd = try_lock_home(home)
    if fd is None:
        raise ShoalError(f"{home} is in use by another shoal server")
    return fd


def try_lock_home(home: Path) -> int | None:
    """`lock_home`, but None when another process holds the home."""
    private_directory(home)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

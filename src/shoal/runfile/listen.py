"""`shoal run FILE --listen [HOST:PORT]`: workers on other hosts take a runmaker file's lines.

runmaker4-server's role: the process that has the file serves it to workers that have not.
The runner's service is served as `shoal server` serves its own (TLS with the runner's own CA,
tokens, the worker WebSocket), from the runner's home; `shoal worker --join ...` on another host
connects, and the runner claims lines for the cores the workers offer, setting each line's state
in the file as its job starts and ends. The join line (address, worker token, CA fingerprint)
goes to the terminal, or, when stderr is not one, only to `join` in the runner's home (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.core.errors import InputError

if TYPE_CHECKING:
    import uvicorn

    from shoal.server.service import Service

_LISTEN = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]*)):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class ListenSettings:
    host: str
    port: int


def parse_listen(text: str) -> ListenSettings:
    match = _LISTEN.match(text)
    port = int(match["port"]) if match else -1
    if match is None or not 0 <= port <= 65535:
        raise InputError(f"--listen: {text!r} is not HOST:PORT (e.g. 0.0.0.0:7341, :7341)")
    host = match["v6"] or match["host"] or "0.0.0.0"
    return ListenSettings(host, port)


class Listener:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], join: str,
                 join_file: Path):
        self.server = server
        self.task = task
        self.join = join
        self.join_file = join_file

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.task, 10)


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """Leaves the signals to the runner, which gives its lines back on Ctrl-C."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


async def start_listening(service: Service, home: Path, settings: ListenSettings) -> Listener:
    import uvicorn

    from shoal.home import Connection, format_connection_string, write_connection
    from shoal.server.app import bind, create_app
    from shoal.server.auth import TokenBook
    from shoal.server.certificates import Certificates, TlsSettings
    from shoal.server.guard import GuardConfig, uvicorn_options

    certificates = Certificates(home, settings.host, TlsSettings())
    tokens = TokenBook(service.store)
    admin_token, worker_token = tokens.ensure_default_tokens(home)
    sock = bind(settings.host, settings.port)
    bound_host, bound_port = sock.getsockname()[:2]
    wildcard = bound_host in ("0.0.0.0", "::")
    advertised = socket.gethostname() if wildcard else bound_host
    shown = f"[{advertised}]" if ":" in advertised else advertised
    local = ("127.0.0.1" if ":" not in bound_host else "[::1]") if wildcard else shown
    fingerprint = certificates.fingerprint
    write_connection(home, Connection(f"https://{local}:{bound_port}", admin_token,
                                      worker_token, None, fingerprint),
                     pid=os.getpid(), ca_file=home / "tls" / "ca.pem")
    join = format_connection_string(f"https://{shown}:{bound_port}", worker_token, fingerprint)
    join_file = home / "join"
    fd = os.open(join_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"shoal worker --join {join}\n")
    if sys.stderr.isatty():
        print(f"To take lines of this file on another host:\n  shoal worker --join {join}",
              file=sys.stderr, flush=True)
    else:
        print(f"listening on {settings.host}:{bound_port}; the line that lets another host "
              f"take jobs is in {join_file}", file=sys.stderr, flush=True)
    guard = GuardConfig()
    app = create_app(service, tokens, ca_pem=certificates.ca_pem, guard=guard)
    app.state.ca_fingerprint = fingerprint
    app.state.advertised_url = f"https://{shown}:{bound_port}"
    server = _server_class()(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=5, ssl_certfile=str(certificates.cert_file),
        ssl_keyfile=str(certificates.key_file), **uvicorn_options(guard)))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="shoal-listen")
    return Listener(server, task, join, join_file)

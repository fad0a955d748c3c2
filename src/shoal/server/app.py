"""Wiring: the FastAPI app, its error translation, and `serve`, which runs it on uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import Scope

from shoal import __version__
from shoal.core.errors import (
    AuthError,
    Conflict,
    InputError,
    NotFound,
    ShoalError,
    StoreUnavailable,
)
from shoal.home import (
    DATABASE_FILE,
    Connection,
    format_connection_string,
    lock_home,
    write_connection,
)
from shoal.server import api, dashboard, sessions
from shoal.server.auth import TokenBook
from shoal.server.blobs import BlobStore
from shoal.server.certificates import (
    Certificates,
    TlsSettings,
    check_tls_settings,
    keep_certificate,
)
from shoal.server.dashboard_access import WebGate
from shoal.server.ensembles import EnsembleRunner
from shoal.server.guard import (
    GuardConfig,
    GuardMiddleware,
    Refusal,
    bearer_token,
    guard_listener,
    tls_event_loop,
    uvicorn_options,
)
from shoal.server.permissions import Forbidden, refusal
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store

log = logging.getLogger("shoal.server")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _status_of(exc: ShoalError) -> tuple[int, str]:
    if isinstance(exc, Forbidden):
        return 403, "forbidden"
    if isinstance(exc, AuthError):
        return 401, "unauthorized"
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, Conflict):
        return 409, "conflict"
    if isinstance(exc, InputError):
        return 400, "invalid"
    if isinstance(exc, StoreUnavailable):
        return 503, "unavailable"
    return 500, "internal"


def _quoted_part(part: str, limit: int = 64) -> str:
    shown = part.encode("unicode_escape").decode("ascii") if not part.isprintable() else part
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    # Keys in the location come from the client (env and resource names): escaped and cut.
    location = [_quoted_part(str(part)) for part in first.get("loc", ())
                if part not in ("body", "query")]
    path = ""
    for part in location:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return f"{path or 'request'}: {first.get('msg', 'invalid')}"


def create_app(service: Service, tokens: TokenBook, blobs: BlobStore | None = None,
               ca_pem: bytes | None = None, guard: GuardConfig | None = None,
               metrics_public: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        await allocations.start()
        yield
        await allocations.close(cancel=service.shutdown_reason is not None)
        await service.stop()

    app = FastAPI(title="shoal", version=__version__, lifespan=lifespan,
                  docs_url="/api/v1/docs", openapi_url="/api/v1/openapi.json", redoc_url=None)
    app.state.service = service
    app.state.tokens = tokens
    app.state.blobs = blobs or BlobStore(service.store.path.parent / "blobs")
    app.state.ensembles = EnsembleRunner(service)
    app.state.ca_pem = ca_pem
    app.state.ca_fingerprint = None
    app.state.advertised_url = None  # set by serve(): the address in connection strings
    tokens.revoked_listeners.append(service.disconnect_token)
    app.include_router(api.router)
    from shoal.server import api_alloc  # /api/v1/alloc and the manager of its queues

    allocations = api_alloc.install(app, service)
    app.add_api_websocket_route("/api/v1/worker", sessions.worker_session)
    # The dashboard at / and /metrics: observers of the service's events.
    web_gate = dashboard.install(app, service, tokens, metrics_public=metrics_public)

    @app.exception_handler(ShoalError)
    async def shoal_error(_request: Request, exc: ShoalError) -> JSONResponse:
        status, code = _status_of(exc)
        return _error(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "invalid", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def client_left(_request: Request, _exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # never seen: the client left, or the guard answered

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal", "internal error; see the server log")

    _document_errors_as_served(app)
    # Outermost: request rates, tokens, sizes and slow bodies are checked before anything else
    # runs, and before a byte of the body is read.
    app.add_middleware(GuardMiddleware, config=guard,
                       known_token=lambda token: tokens.role_of(token) is not None,
                       gate=token_gate(tokens, web_gate))
    return app


NEEDS_TOKEN = "a valid token is required (Authorization: Bearer TOKEN)"


def token_gate(tokens: TokenBook,
               web: WebGate | None = None) -> Callable[[Scope], Refusal | None]:
    """The permission table applied to a request's head, so that a request its token may not
    make is answered 401 or 403 before its body is read. The API's routes are matched as
    Starlette matches them (first route whose path and method fit); anything else (the OpenAPI
    spec, the docs page, an unknown path or method) needs a valid token of any role. The
    routes' own `authorize` still runs: this is the same check, made earlier. The dashboard's
    and /metrics' paths are `web`'s to judge (they also take a session cookie)."""
    from shoal.server import api_alloc

    table = [(compile_path(route.path)[0], route.methods or set(), route.path)
             for route in [*api.router.routes, *api_alloc.router.routes]
             if isinstance(route, APIRoute)]

    def gate(scope: Scope) -> Refusal | None:
        method, path = scope["method"], scope["path"]
        if web is not None and web.owns(path):
            return web.gate(scope)
        principal = tokens.principal_of(bearer_token(scope))
        route = next((template for regex, methods, template in table
                      if method in methods and regex.match(path)), None)
        if route is None:
            return None if principal is not None else Refusal(401, "unauthorized", NEEDS_TOKEN)
        return refusal(method, route, principal)

    return gate


def _document_errors_as_served(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route; this app answers invalid input with 400 (see
    `invalid` above), so the spec drops the 422 and its schemas."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        for operations in spec["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ShoalError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(home: Path, host: str, port: int, config: ReactorConfig | None = None,
          tls: TlsSettings | None = None, guard: GuardConfig | None = None,
          metrics_public: bool = False, keep_history_seconds: float | None = None) -> None:
    import uvicorn

    tls = tls or TlsSettings()
    check_tls_settings(tls, host)
    lock_home(home)
    os.chmod(home, 0o700)
    # The port before anything is made: one in use must leave the home as it was.
    sock = bind(host, port)
    # The database next: one that is refused (emptied, damaged) must leave the home as it
    # was, and the certificate would be reissued here if the host's names had changed.
    store = Store(home / DATABASE_FILE)
    certificates = None if tls.insecure_http else Certificates(home, host, tls)
    tokens = TokenBook(store)
    admin_token, worker_token = tokens.ensure_default_tokens(home)
    guard = guard or GuardConfig()
    bound_host, bound_port = sock.getsockname()[:2]
    if certificates is not None:  # count TLS sockets from accept, before their handshake
        sock = guard_listener(sock, guard)
    scheme = "http" if certificates is None else "https"
    local_host = ("127.0.0.1" if ":" not in bound_host else "::1") \
        if _is_wildcard(bound_host) else bound_host
    url = f"{scheme}://{_show(local_host)}:{bound_port}"
    service = Service(store, config)
    service.keep_history_seconds = keep_history_seconds
    fingerprint = certificates.fingerprint if certificates else None
    write_connection(home, Connection(url, admin_token, worker_token, None, fingerprint),
                     pid=os.getpid(),
                     ca_file=home / "tls" / "ca.pem" if fingerprint else None)
    advertised = tls.advertise or (socket.gethostname() if _is_wildcard(bound_host)
                                   else bound_host)
    join = format_connection_string(f"{scheme}://{_show(advertised)}:{bound_port}",
                                    worker_token, fingerprint)
    _announce(home, url, join, certificates is None)
    ssl_options: dict[str, Any] = {} if certificates is None else {
        "ssl_certfile": str(certificates.cert_file), "ssl_keyfile": str(certificates.key_file)}
    app = create_app(service, tokens, ca_pem=certificates.ca_pem if certificates else None,
                     guard=guard, metrics_public=metrics_public)
    app.state.ca_fingerprint = fingerprint
    app.state.advertised_url = f"{scheme}://{_show(advertised)}:{bound_port}"
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        **ssl_options, **uvicorn_options(guard),
    ))
    service.request_shutdown = lambda: setattr(server, "should_exit", True)

    async def run() -> None:
        keeper = asyncio.create_task(keep_certificate(server, certificates))
        try:
            await server.serve(sockets=[sock])
        finally:
            keeper.cancel()

    # A loop whose TLS servers give a handshake the head's deadline, not asyncio's 60 s.
    with asyncio.Runner(loop_factory=lambda: tls_event_loop(guard)) as runner:
        runner.run(run())


def _announce(home: Path, url: str, join: str, insecure: bool) -> None:
    """The join string carries the worker token: it goes to a terminal, or to a file only
    its owner can read, never into a log."""
    if insecure:
        log.warning("plain HTTP on %s: tokens and commands are not encrypted; use this on "
                    "a single host only", url)
    path = home / "join"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"shoal worker --join {join}\n")
    log.info("shoal server %s listening on %s (state in %s)", __version__, url, home)
    if sys.stderr.isatty():
        print(f"To add a worker on another host:\n  shoal worker --join {join}",
              file=sys.stderr, flush=True)
    else:
        log.info("the command to add a worker on another host is in %s", path)

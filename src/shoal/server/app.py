"""Wiring: the FastAPI app, its error translation, and `serve`, which runs it on uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoal import __version__
from shoal.core.errors import (
    AuthError,
    Conflict,
    InputError,
    NotFound,
    ShoalError,
    StoreUnavailable,
)
from shoal.home import DATABASE_FILE, Connection, lock_home, write_connection
from shoal.server import api, sessions
from shoal.server.auth import TokenBook
from shoal.server.blobs import BlobStore
from shoal.server.ensembles import EnsembleRunner
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store

log = logging.getLogger("shoal.server")
MAX_BODY_BYTES = 512 * 1024 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _status_of(exc: ShoalError) -> tuple[int, str]:
    if isinstance(exc, api.Forbidden):
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


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    path = ""
    for part in location:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return f"{path or 'request'}: {first.get('msg', 'invalid')}"


def create_app(service: Service, tokens: TokenBook, blobs: BlobStore | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="shoal", version=__version__, lifespan=lifespan,
                  docs_url="/api/v1/docs", openapi_url="/api/v1/openapi.json", redoc_url=None)
    app.state.service = service
    app.state.tokens = tokens
    app.state.blobs = blobs or BlobStore(service.store.path.parent / "blobs")
    app.state.ensembles = EnsembleRunner(service)
    app.include_router(api.router)
    app.add_api_websocket_route("/api/v1/worker", sessions.worker_session)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

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

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal", "internal error; see the server log")

    return app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ShoalError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(home: Path, host: str, port: int, config: ReactorConfig | None = None) -> None:
    import uvicorn

    lock_home(home)
    os.chmod(home, 0o700)
    store = Store(home / DATABASE_FILE)
    tokens = TokenBook(store)
    admin_token, worker_token = tokens.ensure_default_tokens(home)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown_host}:{bound_port}"
    service = Service(store, config)
    write_connection(home, Connection(url, admin_token, worker_token), pid=os.getpid())
    log.info("shoal server %s listening on %s (state in %s)", __version__, url, home)
    server = uvicorn.Server(uvicorn.Config(
        create_app(service, tokens), log_level="warning", access_log=False,
        ws_max_size=16 * 1024 * 1024, timeout_graceful_shutdown=5,
    ))
    service.request_shutdown = lambda: setattr(server, "should_exit", True)
    asyncio.run(server.serve(sockets=[sock]))

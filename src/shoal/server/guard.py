"""Abuse limits: connection caps and head timeouts in uvicorn's protocol, rates and bodies in ASGI.

A client that floods requests, holds sockets open silently, or trickles bytes must not starve the
others. uvicorn alone does not stop that: with httptools it never closes a new connection that
sends nothing, bounds neither the time nor the size of a request head, and drops its keep-alive
timer at the first byte of the next request. The protocol classes here close those gaps,
`GuardedListener` also counts TLS sockets still in their handshake, and `GuardMiddleware` limits
request rates and bodies, where the path and the token are known.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("shoal.server.guard")
MiB = 1024 * 1024


@dataclass(frozen=True)
class GuardConfig:
    """Limits on what one client can hold or send. Times are in seconds, sizes in bytes."""

    max_connections_per_ip: int = 256
    max_connections: int = 4096
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    keep_alive_timeout: int = 5
    body_timeout: float = 30.0
    max_body_bytes: int = 64 * MiB
    max_blob_bytes: int = 512 * MiB
    blob_path_prefix: str = "/api/v1/blobs/"
    requests_per_second: float = 500.0
    request_burst: int = 2000
    max_rate_clients: int = 65536
    max_websocket_message_bytes: int = 16 * MiB
    # Addresses or networks (e.g. "127.0.0.0/8") spared the per-address cap and the rate limit.
    exempt_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = {
            "max_connections_per_ip": self.max_connections_per_ip,
            "max_connections": self.max_connections,
            "header_timeout": self.header_timeout,
            "max_header_bytes": self.max_header_bytes,
            "keep_alive_timeout": self.keep_alive_timeout,
            "body_timeout": self.body_timeout,
            "max_body_bytes": self.max_body_bytes,
            "max_blob_bytes": self.max_blob_bytes,
            "requests_per_second": self.requests_per_second,
            "request_burst": self.request_burst,
            "max_rate_clients": self.max_rate_clients,
            "max_websocket_message_bytes": self.max_websocket_message_bytes,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"guard: {name} must be positive, not {value!r}")
        _networks(self.exempt_networks)

    def body_limit(self, method: str, path: str) -> int:
        """Blob uploads may be large; every other body is JSON and kept smaller."""
        if method == "PUT" and path.startswith(self.blob_path_prefix):
            return self.max_blob_bytes
        return self.max_body_bytes


def _networks(specs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)
    except ValueError as exc:
        raise ValueError(f"guard: exempt_networks: {exc}") from None


class Exemptions:
    """Which client addresses the per-address limits spare; answers are cached per address."""

    def __init__(self, specs: tuple[str, ...]):
        self._networks = _networks(specs)
        self._known: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        if address not in self._known:
            if len(self._known) > 4096:
                self._known.clear()
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                self._known[address] = False
            else:
                self._known[address] = any(parsed in net for net in self._networks)
        return self._known[address]


# Rates ------------------------------------------------------------------------------------------


class TokenBucket:
    """Holds up to `burst` tokens and gains `rate` a second; each request spends one."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Spend a token: 0.0 when allowed, else how many seconds until one is there."""
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per client key. The least recently seen keys are forgotten past `max_clients`,
    so a stream of new keys cannot grow memory; a forgotten client starts again with a full
    bucket, which is what an idle one would have anyway."""

    def __init__(self, rate: float, burst: int, max_clients: int,
                 clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._burst = burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def rate_key(scope: Scope, known_token: Callable[[str], bool] | None) -> str:
    """Whom a request is charged to: its token on its address, else its address alone.

    Pairing the token with the address keeps workers that share one token on many hosts from
    throttling each other. A token the server does not know is charged to the address, so
    inventing a fresh token per request buys no extra rate. Only a digest of the token is kept.
    """
    client = scope.get("client")
    address = client[0] if client else ""
    token = bearer_token(scope)
    if token is None or (known_token is not None and not known_token(token)):
        return address
    return f"{address} {hashlib.sha256(token.encode()).hexdigest()[:32]}"


# Bodies and the middleware ----------------------------------------------------------------------


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]})
    await send({"type": "http.response.body", "body": body})


CLOSE = ((b"connection", b"close"),)


class RequestBody:
    """One request's view of its body: counts the bytes that arrive (chunked or not) and waits at
    most `timeout` for each chunk. On a breach it answers 413 or 408 itself, closing the
    connection so the rest of the body is never read, and tells the app the client left. An
    answer sent before the app has read a body it was sent also closes the connection: the
    server would otherwise read and throw away whatever the client still sends."""

    def __init__(self, receive: Receive, send: Send, limit: int, timeout: float,
                 has_body: bool = True):
        self._receive = receive
        self._send = send
        self.limit = limit
        self.timeout = timeout
        self.received = 0
        self.complete = not has_body
        self.response_started = False
        self.answered = False

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        if self.complete:
            # Past the body the app only listens for a disconnect, which may rightly take long.
            return await self._receive()
        try:
            async with asyncio.timeout(self.timeout):
                message = await self._receive()
        except TimeoutError:
            await self.answer(408, "timeout",
                              f"no request body received for {self.timeout:g} seconds")
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                await self.answer(413, "too_large",
                                  f"this request's body is limited to {self.limit} bytes")
                return {"type": "http.disconnect"}
            self.complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the client already has our answer; the app's is dropped
        if message["type"] == "http.response.start":
            self.response_started = True
            if not self.complete:
                message = {**message, "headers": [*message.get("headers", ()), *CLOSE]}
        await self._send(message)

    async def answer(self, status: int, code: str, message: str) -> None:
        if self.response_started:
            return  # too late for a status; the app sees the disconnect and stops
        self.answered = True
        log.debug("answered %d %s: %s", status, code, message)
        await send_error(self._send, status, code, message, CLOSE)


@dataclass(frozen=True)
class Refusal:
    """Why a request is turned away before its body is read: status, error code, message."""

    status: int
    code: str
    message: str


Gate = Callable[[Scope], Refusal | None]


class GuardMiddleware:
    """Pure ASGI: per-client request rates, who may ask (`gate`), body sizes and body timeouts,
    in that order, all before the app reads a byte of the body. WebSocket and lifespan scopes
    pass through untouched; the worker channel checks its own token and has its own message
    size limit."""

    def __init__(self, app: ASGIApp, config: GuardConfig | None = None,
                 known_token: Callable[[str], bool] | None = None,
                 gate: Gate | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.config = config or GuardConfig()
        self.known_token = known_token
        self.gate = gate
        self.exempt = Exemptions(self.config.exempt_networks)
        self.limiter = RateLimiter(self.config.requests_per_second, self.config.request_burst,
                                   self.config.max_rate_clients, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if not (client and client[0] in self.exempt):
            wait = self.limiter.take(rate_key(scope, self.known_token))
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait))).encode()
                await send_error(send, 429, "rate_limited",
                                 "too many requests; retry after the time in Retry-After",
                                 ((b"retry-after", retry_after),))
                return
        has_body = _has_body(scope)
        refusal = self.gate(scope) if self.gate is not None else None
        if refusal is not None:
            # The body is never read: the connection goes with the answer, or the rest of the
            # body would be read as the next request.
            await send_error(send, refusal.status, refusal.code, refusal.message,
                             CLOSE if has_body else ())
            return
        limit = self.config.body_limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, 413, "too_large",
                             f"this request's body is limited to {limit} bytes", CLOSE)
            return
        body = RequestBody(receive, send, limit, self.config.body_timeout, has_body)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if not body.answered:
                raise
            # The app failed on the disconnect we fed it after answering; nothing is lost.
            log.debug("app stopped after the guard answered", exc_info=True)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _has_body(scope: Scope) -> bool:
    """Whether the request says a body follows its head (a length above 0, or chunks)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


# Large JSON bodies ------------------------------------------------------------------------------

# Smaller bodies are parsed and validated on the event loop, as FastAPI does, in well under a
# millisecond a kilobyte; a larger one would hold the loop (a 50 MB add: seconds).
OFF_LOOP_BODY_BYTES = 256 * 1024


def _same(value: dict[str, Any]) -> dict[str, Any]:
    """json.loads' object hook: a Python call per object, where the thread parsing may hand the
    interpreter to the event loop (the C parser alone holds it for the whole document)."""
    return value


def _is_json(request: Request) -> bool:
    # What FastAPI parses as JSON: an application/json or application/*+json content type.
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class JsonBodyRoute(APIRoute):
    """A route that reads its body into one buffer (Starlette keeps every chunk, then joins them:
    two copies), and parses and validates a large JSON body in a worker thread. What FastAPI
    then finds is the validated model, which it takes as it is."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        if field is None or getattr(self, "_embed_body_fields", True):
            return handler  # no body, or one FastAPI takes apart field by field

        def parse_and_validate(body: bytearray) -> Any:
            try:
                parsed = json.loads(body, object_hook=_same)
            except json.JSONDecodeError as exc:  # the same error as FastAPI's
                raise RequestValidationError([{
                    "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                    "input": {}, "ctx": {"error": exc.msg}}]) from None
            value, errors = field.validate(parsed, {}, loc=("body",))
            if errors:
                raise RequestValidationError(errors)
            return value

        async def read_then_handle(request: Request) -> Response:
            if _is_json(request):
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                request._body = body  # type: ignore[assignment]  # one buffer, not a join
                if len(body) >= OFF_LOOP_BODY_BYTES:
                    request._json = await asyncio.to_thread(parse_and_validate, body)
            return await handler(request)

        return read_then_handle


# Connections ------------------------------------------------------------------------------------


class ConnectionBook:
    """Open connections by peer address, shared by the HTTP and WebSocket protocols of one server.

    A connection is entered once, when accepted, and leaves when its transport is lost, whichever
    protocol then owns it: a WebSocket upgrade hands the transport to a new protocol object, and
    only that one hears of the close."""

    def __init__(self, config: GuardConfig):
        self.per_address = config.max_connections_per_ip
        self.total = config.max_connections
        self.exempt = Exemptions(config.exempt_networks)
        self._address_of: dict[object, str] = {}
        self._by_address: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._address_of)

    def count(self, address: str) -> int:
        return self._by_address[address]

    def admit(self, transport: object, address: str) -> bool:
        if len(self._address_of) >= self.total:
            return False
        if address not in self.exempt and self._by_address[address] >= self.per_address:
            return False
        self._address_of[transport] = address
        self._by_address[address] += 1
        return True

    def release(self, transport: object) -> None:
        address = self._address_of.pop(transport, None)
        if address is None:
            return
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class GuardedListener(socket.socket):
    """A listening socket that turns a peer away at accept when it already holds its share of
    open sockets. It sees what the protocols cannot: a TLS connection still in its handshake,
    which asyncio only gives up on after 60 seconds and which reaches no protocol before then.

    asyncio's own event loops call `accept()` on this object; uvloop accepts in C and bypasses it,
    leaving the protocols' caps alone in force. A refused socket is closed without a word, as the
    listener cannot tell whether the peer speaks TLS."""

    def __init__(self, listener: socket.socket, config: GuardConfig):
        blocking = listener.getblocking()
        super().__init__(listener.family, listener.type, listener.proto, fileno=listener.detach())
        self.setblocking(blocking)
        self._per_address = config.max_connections_per_ip
        self._total = config.max_connections
        self._exempt = Exemptions(config.exempt_networks)
        # Accepted sockets by peer address; the transport closes the same objects, so a closed
        # one (fileno -1) is found and forgotten on the next look at its address.
        self._held: dict[str, list[socket.socket]] = {}
        self._held_count = 0

    def accept(self) -> tuple[socket.socket, Any]:
        while True:  # BlockingIOError from super() ends the loop when no peer is waiting
            conn, peer = super().accept()
            address = peer[0] if isinstance(peer, tuple) else ""
            if self._admit(conn, address):
                return conn, peer
            log.debug("refused a connection from %s at accept: too many open", address)
            conn.close()

    def _admit(self, conn: socket.socket, address: str) -> bool:
        if self._held_count >= self._total:
            for held_address in list(self._held):
                self._forget_closed(held_address)
        held = self._held.get(address, [])
        if len(held) >= self._per_address and address not in self._exempt:
            held = self._forget_closed(address)
        if self._held_count >= self._total or (
                len(held) >= self._per_address and address not in self._exempt):
            return False
        held.append(conn)
        self._held[address] = held
        self._held_count += 1
        return True

    def _forget_closed(self, address: str) -> list[socket.socket]:
        held = self._held.pop(address, [])
        open_ones = [conn for conn in held if conn.fileno() != -1]
        self._held_count -= len(held) - len(open_ones)
        if open_ones:
            self._held[address] = open_ones
        return open_ones


def guard_listener(listener: socket.socket, config: GuardConfig | None = None) -> socket.socket:
    """The same listening socket, now capping open sockets per peer from the moment of accept."""
    return GuardedListener(listener, config or GuardConfig())


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_body(code, message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: a cap on connections per address and in all, a deadline
    for each request head (counted from the connection's start or the request's first byte), and
    a bound on a head's size. uvicorn's keep-alive timer still covers the idle time between
    requests. `uvicorn_options` makes a subclass bound to one server's book and config."""

    connection_book: ClassVar[ConnectionBook]
    guard_config: ClassVar[GuardConfig]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # a request's first byte is in, its head is not complete
        self._awaiting_head = True  # no head is in since the last one completed
        self._head_bytes = 0
        self._heads_begun = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else ""
        if not self.connection_book.admit(transport, address):
            log.debug("refused a connection from %s: too many open", address)
            self._close_with(_raw_response(503, "Service Unavailable", "unavailable",
                                           "too many open connections; retry later"))
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.connection_book.release(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        awaiting, heads_begun = self._awaiting_head, self._heads_begun
        super().data_received(data)
        # Count only chunks that fell wholly inside one unfinished head: a chunk that starts or
        # ends a head may carry a body or the previous request. The bound is thus exceeded by at
        # most one read.
        if (awaiting and self._awaiting_head and heads_begun == self._heads_begun
                and not self.transport.is_closing()):
            self._head_bytes += len(data)
            if self._head_bytes > self.guard_config.max_header_bytes:
                limit = self.guard_config.max_header_bytes
                self._close_with(_raw_response(
                    431, "Request Header Fields Too Large", "too_large",
                    f"request heads are limited to {limit} bytes"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._heads_begun += 1
        self._head_begun = True
        self._awaiting_head = True
        self._head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_begun = False
        self._awaiting_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        # A deadline already running is kept: re-arming on each byte is what lets a trickle live.
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard_config.header_timeout,
                                                    self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        free_to_answer = self.cycle is None or self.cycle.response_complete
        if self._head_begun and free_to_answer:
            self._close_with(_raw_response(408, "Request Timeout", "timeout",
                                           "the request head was not complete in time"))
        else:
            self.transport.close()  # a silent connection, or a response is still being written

    def _close_with(self, response: bytes) -> None:
        self._cancel_head_timer()
        self.transport.write(response)
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, giving back the upgraded connection's place in the book."""

    connection_book: ClassVar[ConnectionBook]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection_book.release(self.transport)
        super().connection_lost(exc)


class TlsDeadlineLoop(asyncio.SelectorEventLoop):
    """An event loop whose TLS servers give a handshake, and the closing exchange of a
    connection, `tls_timeout` seconds. asyncio's defaults are 60 s and 30 s, and uvicorn passes
    neither, so a peer that opens a TLS connection and sends nothing (or half a ClientHello)
    held it for a minute, out of reach of the head deadline, which starts only once the
    handshake is done."""

    tls_timeout: float = 10.0

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.tls_timeout)
            kwargs.setdefault("ssl_shutdown_timeout", self.tls_timeout)
        return await super().create_server(*args, **kwargs)


def tls_event_loop(config: GuardConfig | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop for a server: TLS handshakes get the request head's deadline."""
    loop = TlsDeadlineLoop()
    loop.tls_timeout = (config or GuardConfig()).header_timeout
    return loop


def uvicorn_options(config: GuardConfig | None = None) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`: protocol classes sharing one fresh connection book
    (so one call per server), and the uvicorn settings the guard relies on."""
    settings = config or GuardConfig()
    book = ConnectionBook(settings)

    class BoundHttpProtocol(GuardedHttpProtocol):
        connection_book = book
        guard_config = settings

    class BoundWebSocketProtocol(GuardedWebSocketProtocol):
        connection_book = book

    return {
        "http": BoundHttpProtocol,
        "ws": BoundWebSocketProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "ws_max_size": settings.max_websocket_message_bytes,
        # Behind no proxy, a forwarded-for header from a local client would let it pick the
        # address its rate is charged to.
        "proxy_headers": False,
    }

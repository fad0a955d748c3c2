"""The guard on a real uvicorn: silent and trickling sockets, oversized or stalled bodies, floods,
and WebSocket connections, each met by a small limit while a well-behaved client is still served.

Waits have generous upper bounds (ten times the limit under test); no assertion is about speed.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict
from starlette.types import Scope
from websockets.sync.client import connect as websocket_connect

from shoal.server.guard import (
    OFF_LOOP_BODY_BYTES,
    GuardConfig,
    GuardMiddleware,
    JsonBodyRoute,
    Refusal,
    bearer_token,
    guard_listener,
    tls_event_loop,
    uvicorn_options,
)

TOKENS = {"token-a", "token-b"}
pytestmark = pytest.mark.timeout(60)


class Numbers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    numbers: list[int]


BODIES_READ: list[str] = []  # paths whose handler ran


def token_gate(scope: Scope) -> Refusal | None:
    """Paths under /api/v1/private/ need a known token."""
    if scope["path"].startswith("/api/v1/private/") and bearer_token(scope) not in TOKENS:
        return Refusal(401, "unauthorized", "a valid token is required")
    return None


def make_app(config: GuardConfig) -> FastAPI:
    app = FastAPI()
    parsed = APIRouter(route_class=JsonBodyRoute)

    @parsed.post("/api/v1/numbers")
    async def numbers(body: Numbers) -> dict[str, int]:
        return {"count": len(body.numbers), "total": sum(body.numbers)}

    @app.post("/api/v1/private/echo")
    async def private_echo(request: Request) -> dict[str, int]:
        BODIES_READ.append(request.url.path)
        return {"bytes": len(await request.body())}

    @app.post("/api/v1/unread")
    async def unread() -> dict[str, bool]:
        return {"read": False}

    app.include_router(parsed)

    @app.get("/api/v1/version")
    async def version() -> dict[str, str]:
        return {"version": "test"}

    @app.post("/api/v1/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.put("/api/v1/blobs/{name}")
    async def put_blob(name: str, request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"bytes": size}

    @app.websocket("/api/v1/worker")
    async def worker(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    app.add_middleware(GuardMiddleware, config=config, known_token=TOKENS.__contains__,
                       gate=token_gate)
    return app


@contextmanager
def running(config: GuardConfig,
            certificate: tuple[Path, Path] | None = None) -> Iterator[tuple[str, int]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tls: dict[str, Any] = {}
    if certificate is not None:
        listener = guard_listener(listener, config)
        tls = {"ssl_certfile": str(certificate[0]), "ssl_keyfile": str(certificate[1])}
    server = uvicorn.Server(uvicorn.Config(
        make_app(config), log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=1, **tls, **uvicorn_options(config),
    ))

    def serve() -> None:
        with asyncio.Runner(loop_factory=lambda: tls_event_loop(config)) as runner:
            runner.run(server.serve(sockets=[listener]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the server to start")
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(20)
        listener.close()


def wait_for(condition: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {bound} s for {what}")
        time.sleep(0.05)


def raw(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def read_until_closed(sock: socket.socket, bound: float) -> tuple[bytes, bool]:
    """Everything the server sends within `bound` seconds, and whether it then closed."""
    data = b""
    deadline = time.monotonic() + bound
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def error_code_of(response: bytes) -> str:
    code: str = json.loads(response.partition(b"\r\n\r\n")[2])["error"]["code"]
    return code


def url(address: tuple[str, int], path: str = "/api/v1/version") -> str:
    return f"http://{address[0]}:{address[1]}{path}"


def served(address: tuple[str, int], token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(url(address), headers=headers, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def drip_until_closed(sock: socket.socket, payload: bytes, bound: float,
                      between: Callable[[int], None] = lambda _sent: None) -> tuple[bytes, bool]:
    """Send `payload` a byte every 0.2 s; stop sending once the server speaks or closes."""
    deadline = time.monotonic() + bound
    for sent, byte in enumerate(payload):
        if time.monotonic() > deadline:
            return b"", False
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            break
        try:
            sock.sendall(bytes([byte]))
        except (ConnectionResetError, BrokenPipeError):
            return b"", True
        between(sent)
    return read_until_closed(sock, max(0.0, deadline - time.monotonic()))


def test_silent_sockets_past_the_address_cap_are_refused_and_then_released() -> None:
    config = GuardConfig(max_connections_per_ip=4, header_timeout=30)
    with running(config) as address:
        silent = [raw(address) for _ in range(4)]
        extra = raw(address)
        response, closed = read_until_closed(extra, 10)
        assert closed
        assert status_of(response) == 503
        assert error_code_of(response) == "unavailable"
        for sock in silent:
            sock.close()
        wait_for(lambda: served(address), 10, "a request to be served once the sockets closed")


def test_a_silent_new_connection_is_closed_after_the_header_timeout() -> None:
    with running(GuardConfig(header_timeout=0.5)) as address:
        silent = raw(address)
        response, closed = read_until_closed(silent, 5)
        assert closed and response == b""


def test_slowloris_is_closed_while_a_normal_client_is_served() -> None:
    normal_results: list[bool] = []

    def meanwhile(sent: int) -> None:
        if sent == 2:
            normal_results.append(served(address))

    with running(GuardConfig(header_timeout=1.0)) as address:
        slow = raw(address)
        endless = b"GET /api/v1/version HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
        response, closed = drip_until_closed(slow, endless, 10, meanwhile)
        assert closed, "the server kept a trickling head open"
        assert response == b"" or status_of(response) == 408
        assert normal_results == [True]


def test_an_oversized_request_head_is_refused() -> None:
    with running(GuardConfig(max_header_bytes=16 * 1024, header_timeout=60)) as address:
        sock = raw(address)
        sock.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: t\r\nX-Big: ")
        closed = False
        for _ in range(1024):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(b"a" * 1024)
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
        if not closed:
            response, closed = read_until_closed(sock, 10)
            assert response == b"" or status_of(response) == 431
        assert closed


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t", *headers, "", ""]
    return "\r\n".join(lines).encode()


def chunked(body: bytes, size: int) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
              for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


def test_bodies_are_counted_as_they_stream() -> None:
    config = GuardConfig(max_body_bytes=1024, max_blob_bytes=4096)
    with running(config) as address:
        sock = raw(address)
        sock.sendall(request_head("POST", "/api/v1/echo", "Transfer-Encoding: chunked")
                     + chunked(b"x" * 4096, 512))
        response, closed = read_until_closed(sock, 10)
        assert status_of(response) == 413 and closed
        assert error_code_of(response) == "too_large"

        declared = raw(address)
        declared.sendall(request_head("POST", "/api/v1/echo", "Content-Length: 1000000"))
        response, _ = read_until_closed(declared, 10)
        assert status_of(response) == 413

        small = httpx.post(url(address, "/api/v1/echo"), content=iter([b"y" * 1000]), timeout=10)
        assert small.json() == {"bytes": 1000}
        blob = httpx.put(url(address, "/api/v1/blobs/b1"), content=iter([b"z" * 3000] * 1),
                         timeout=10)
        assert blob.json() == {"bytes": 3000}
        too_big_blob = raw(address)
        too_big_blob.sendall(request_head("PUT", "/api/v1/blobs/b2", "Transfer-Encoding: chunked")
                             + chunked(b"z" * 5000, 1000))
        response, _ = read_until_closed(too_big_blob, 10)
        assert status_of(response) == 413


def test_a_stalled_body_is_timed_out_while_others_are_served() -> None:
    with running(GuardConfig(body_timeout=1.0)) as address:
        sock = raw(address)
        sock.sendall(request_head("POST", "/api/v1/echo", "Content-Length: 100") + b"x" * 10)
        assert served(address)
        response, closed = read_until_closed(sock, 10)
        assert closed
        assert response == b"" or (status_of(response) == 408
                                   and error_code_of(response) == "timeout")


def flood(client: httpx.Client, address: tuple[str, int], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(500):
        response = client.get(url(address), headers=headers)
        if response.status_code != 200:
            return response
    raise AssertionError("500 requests in a row were all served")


def test_a_flood_is_rate_limited_per_client() -> None:
    config = GuardConfig(requests_per_second=1.0, request_burst=10)
    with running(config) as address, httpx.Client(timeout=10) as client:
        limited = flood(client, address, "token-a")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert served(address, "token-b")
        assert served(address)  # no token: charged to the address, which is untouched

        # Invented tokens are charged to the address, so they share its bucket.
        assert flood(client, address, "invented-1").status_code == 429
        assert client.get(url(address),
                          headers={"Authorization": "Bearer invented-2"}).status_code == 429
        assert not served(address)
        assert served(address, "token-b")


def test_a_websocket_holds_a_connection_until_it_closes() -> None:
    config = GuardConfig(max_connections_per_ip=3, header_timeout=30)
    with running(config) as address:
        ws_url = f"ws://{address[0]}:{address[1]}/api/v1/worker"
        silent = [raw(address) for _ in range(2)]
        with websocket_connect(ws_url, open_timeout=10) as websocket:
            websocket.send("hello")
            assert websocket.recv(timeout=10) == "hello"
            refused, closed = read_until_closed(raw(address), 10)
            assert closed and status_of(refused) == 503

        wait_for(lambda: served(address), 10, "the WebSocket's connection to be released")
        for _ in range(5):  # each closed WebSocket gives its place back
            with websocket_connect(ws_url, open_timeout=10) as again:
                again.send("ping")
                assert again.recv(timeout=10) == "ping"
        wait_for(lambda: served(address), 10, "the connections to be released")
        for sock in silent:
            sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_sockets_that_never_start_tls_count_against_the_address_cap(
        certificate: tuple[Path, Path]) -> None:
    config = GuardConfig(max_connections_per_ip=3, header_timeout=30)
    trust = ssl.create_default_context(cafile=str(certificate[0]))

    def served_over_tls() -> bool:
        try:
            return httpx.get(url(address).replace("http:", "https:"), verify=trust,
                             timeout=10).status_code == 200
        except httpx.TransportError:
            return False

    with running(config, certificate) as address:
        assert served_over_tls()
        silent = [raw(address) for _ in range(3)]  # no handshake: no protocol sees these
        response, closed = read_until_closed(raw(address), 10)
        assert closed and response == b""
        for sock in silent:
            sock.close()
        wait_for(served_over_tls, 10, "a TLS request to be served once the sockets closed")


def test_the_listener_caps_the_total_and_forgets_closed_sockets() -> None:
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen(16)
    config = GuardConfig(max_connections_per_ip=1, max_connections=3,
                         exempt_networks=("127.0.0.0/8",))  # only the total applies here
    listener = guard_listener(plain, config)
    listener.settimeout(10)
    clients = [raw(listener.getsockname()) for _ in range(4)]
    try:
        accepted = [listener.accept()[0] for _ in range(3)]
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # the fourth was refused and closed, so nothing is left to accept
        assert read_until_closed(clients[3], 10) == (b"", True)
        accepted[0].close()
        clients.append(raw(listener.getsockname()))
        listener.settimeout(10)
        accepted.append(listener.accept()[0])
        for conn in accepted:
            conn.close()
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_a_request_its_token_may_not_make_is_refused_before_its_body() -> None:
    with running(GuardConfig()) as address:
        sock = raw(address)
        sock.sendall(request_head("POST", "/api/v1/private/echo", "Content-Length: 50000000")
                     + b"x" * 1000)
        response, closed = read_until_closed(sock, 10)
        assert status_of(response) == 401 and error_code_of(response) == "unauthorized"
        assert closed, "the connection stayed open with its body unread"

        invented = raw(address)
        invented.sendall(request_head("POST", "/api/v1/private/echo",
                                      "Authorization: Bearer invented",
                                      "Transfer-Encoding: chunked") + b"5\r\nxxxxx\r\n")
        response, closed = read_until_closed(invented, 10)
        assert status_of(response) == 401 and closed
        assert BODIES_READ == []

        # Without a body the connection is kept; with a known token the body is read.
        with httpx.Client(timeout=10) as client:
            assert client.post(url(address, "/api/v1/private/echo")).status_code == 401
            assert client.post(url(address, "/api/v1/private/echo"), content=b"y" * 1000,
                               headers={"Authorization": "Bearer token-a"}).json() == {
                "bytes": 1000}
        assert BODIES_READ == ["/api/v1/private/echo"]


def test_an_answer_sent_before_the_body_is_read_closes_the_connection() -> None:
    with running(GuardConfig()) as address:
        sock = raw(address)
        sock.sendall(request_head("POST", "/api/v1/unread", "Content-Length: 10000000")
                     + b"x" * 1000)
        response, closed = read_until_closed(sock, 10)
        assert status_of(response) == 200
        assert b"connection: close" in response.lower() and closed
        with httpx.Client(timeout=10) as client:  # a body that was read: kept alive
            answer = client.post(url(address, "/api/v1/private/echo"), content=b"y",
                                 headers={"Authorization": "Bearer token-b"})
            assert answer.headers.get("connection") != "close"


def test_a_large_json_body_is_parsed_and_validated_as_a_small_one_is() -> None:
    many = list(range(OFF_LOOP_BODY_BYTES // 4))
    with running(GuardConfig()) as address, httpx.Client(timeout=30) as client:
        numbers = url(address, "/api/v1/numbers")
        assert client.post(numbers, json={"numbers": [1, 2]}).json() == {"count": 2, "total": 3}
        big = client.post(numbers, json={"numbers": many})
        assert big.json() == {"count": len(many), "total": sum(many)}

        # Errors read the same whichever way the body went.
        for padding in (0, OFF_LOOP_BODY_BYTES):
            invalid = client.post(numbers, json={"numbers": [*many[:padding // 4], "x"]})
            assert invalid.status_code == 422
            [error] = invalid.json()["detail"]
            assert error["loc"][:2] == ["body", "numbers"] and error["type"] == "int_parsing"
            broken = client.post(numbers, content=b'{"numbers": [' + b"1," * padding + b"]",
                                 headers={"Content-Type": "application/json"})
            assert broken.status_code == 422
            assert broken.json()["detail"][0]["type"] == "json_invalid"


def test_a_tls_handshake_that_does_not_finish_is_closed_at_the_head_deadline(
        certificate: tuple[Path, Path]) -> None:
    with running(GuardConfig(header_timeout=1.0), certificate) as address:
        silent = raw(address)  # asyncio alone would wait 60 s for its ClientHello
        started = time.monotonic()
        response, closed = read_until_closed(silent, 20)
        assert closed and response == b""
        assert time.monotonic() - started < 10

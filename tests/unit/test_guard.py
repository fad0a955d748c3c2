"""The guard's pure parts: the token bucket, the per-client limiter, keys, the connection book,
and the order in which the middleware refuses a request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.server.guard import (
    ConnectionBook,
    GuardConfig,
    GuardMiddleware,
    RateLimiter,
    Refusal,
    TokenBucket,
    rate_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allowed_times(rate: float, burst: int, times: list[float]) -> list[float]:
    bucket = TokenBucket(rate, burst, times[0] if times else 0.0)
    return [t for t in times if bucket.take(t) == 0.0]


@given(
    rate=st.floats(min_value=0.1, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=300),
)
def test_no_window_admits_more_than_burst_plus_refill(rate: float, burst: int,
                                                      gaps: list[float]) -> None:
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    allowed = allowed_times(rate, burst, times)
    for first in range(len(allowed)):
        for last in range(first, len(allowed)):
            window = allowed[last] - allowed[first]
            assert last - first + 1 <= burst + rate * window + 1e-6


@given(rate=st.floats(min_value=0.1, max_value=1000.0), burst=st.integers(1, 100))
def test_a_full_burst_then_nothing_until_refilled(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(burst))
    wait = bucket.take(0.0)
    assert wait == pytest.approx(1.0 / rate)
    assert bucket.take(wait * 0.5) > 0.0
    assert bucket.take(wait * 1.0001) == 0.0


@pytest.mark.parametrize(
    ("rate", "burst", "idle", "then_allowed"),
    [
        (10.0, 5, 0.0, 0),
        (10.0, 5, 0.1, 1),
        (10.0, 5, 0.35, 3),
        (10.0, 5, 60.0, 5),  # refill stops at the burst
        (0.5, 2, 3.9, 1),
    ],
)
def test_refills_at_the_rate_up_to_the_burst(rate: float, burst: int, idle: float,
                                             then_allowed: int) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    while bucket.take(0.0) == 0.0:
        pass
    granted = 0
    while bucket.take(idle) == 0.0:
        granted += 1
    assert granted == then_allowed


def test_a_clock_going_back_neither_adds_nor_breaks() -> None:
    bucket = TokenBucket(1.0, 1, 10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(11.0) == 0.0


def test_clients_have_their_own_buckets() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, max_clients=10, clock=clock)
    assert [limiter.take("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("a") > 0.0
    assert limiter.take("b") == 0.0
    clock.now += 1.0
    assert limiter.take("a") == 0.0


def test_the_limiter_forgets_the_least_recent_clients_past_its_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, max_clients=3, clock=clock)
    for key in ("a", "b", "c"):
        limiter.take(key)
    limiter.take("a")  # a is now the most recent
    limiter.take("d")
    assert len(limiter) == 3
    assert limiter.take("a") > 0.0  # remembered: still empty
    assert limiter.take("b") == 0.0  # forgotten: a fresh bucket


def scope(client: str, authorization: bytes | None = None) -> dict[str, object]:
    headers = [(b"authorization", authorization)] if authorization else []
    return {"type": "http", "client": (client, 4000), "headers": headers}


def test_rate_keys_pair_a_known_token_with_the_address() -> None:
    def known(token: str) -> bool:
        return token == "good"

    bare = rate_key(scope("10.0.0.1"), known)
    with_token = rate_key(scope("10.0.0.1", b"Bearer good"), known)
    elsewhere = rate_key(scope("10.0.0.2", b"Bearer good"), known)
    assert bare == "10.0.0.1"
    assert with_token not in (bare, elsewhere)
    assert "good" not in with_token
    assert rate_key(scope("10.0.0.1", b"Bearer invented"), known) == bare
    assert rate_key(scope("10.0.0.1", b"Basic good"), known) == bare
    assert rate_key(scope("10.0.0.1", b"Bearer invented"), None) != bare


def test_the_book_caps_each_address_and_the_total() -> None:
    book = ConnectionBook(GuardConfig(max_connections_per_ip=2, max_connections=3))
    first, second, third, fourth = object(), object(), object(), object()
    assert book.admit(first, "a") and book.admit(second, "a")
    assert not book.admit(third, "a")
    assert book.admit(third, "b")
    assert not book.admit(fourth, "c")  # the total is reached
    book.release(first)
    book.release(first)  # a second release of one connection changes nothing
    assert book.count("a") == 1 and len(book) == 2
    assert book.admit(fourth, "a")
    assert not book.admit(object(), "a")


def test_exempt_networks_skip_the_address_cap_but_not_the_total() -> None:
    book = ConnectionBook(GuardConfig(max_connections_per_ip=1, max_connections=3,
                                      exempt_networks=("127.0.0.0/8",)))
    assert all(book.admit(object(), "127.0.0.1") for _ in range(3))
    assert not book.admit(object(), "127.0.0.1")


def test_blob_uploads_get_the_larger_body_limit() -> None:
    config = GuardConfig(max_body_bytes=10, max_blob_bytes=100)
    assert config.body_limit("PUT", "/api/v1/blobs/abc") == 100
    assert config.body_limit("POST", "/api/v1/blobs/missing") == 10
    assert config.body_limit("POST", "/api/v1/jobs") == 10


@pytest.mark.parametrize("field", ["header_timeout", "request_burst", "max_body_bytes",
                                   "requests_per_second", "max_connections_per_ip"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GuardConfig(**{field: 0})  # type: ignore[arg-type]


def test_exempt_networks_must_parse() -> None:
    with pytest.raises(ValueError, match="exempt_networks"):
        GuardConfig(exempt_networks=("localhost",))


def refuse_without_token(scope: Any) -> Refusal | None:
    has_token = any(name == b"authorization" for name, _ in scope["headers"])
    return None if has_token else Refusal(401, "unauthorized", "a valid token is required")


def guarded_call(headers: list[tuple[bytes, bytes]],
                 config: GuardConfig | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """What the middleware sends for one POST, and what happened behind it."""
    happened: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        happened.append("app")
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        happened.append("body read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = GuardMiddleware(app, config, known_token=lambda token: True,
                            gate=refuse_without_token)
    scope = {"type": "http", "method": "POST", "path": "/api/v1/jobs",
             "client": ("10.0.0.1", 4000), "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return sent, happened


@pytest.mark.parametrize(("body_header", "closes"), [
    ((b"content-length", b"60000000"), True),
    ((b"transfer-encoding", b"chunked"), True),
    ((b"content-length", b"0"), False),
])
def test_the_gate_answers_before_the_body_is_read(body_header: tuple[bytes, bytes],
                                                  closes: bool) -> None:
    sent, happened = guarded_call([body_header])
    assert happened == []
    assert sent[0]["status"] == 401
    assert ((b"connection", b"close") in sent[0]["headers"]) == closes


def test_a_refused_token_is_told_so_before_the_size_is() -> None:
    sent, _ = guarded_call([(b"content-length", b"60000000")], GuardConfig(max_body_bytes=10))
    assert sent[0]["status"] == 401
    sent, happened = guarded_call([(b"content-length", b"60000000"),
                                   (b"authorization", b"Bearer good")],
                                  GuardConfig(max_body_bytes=10))
    assert sent[0]["status"] == 413 and happened == []


def test_a_request_the_gate_lets_through_reaches_the_app() -> None:
    sent, happened = guarded_call([(b"content-length", b"2"), (b"authorization", b"Bearer t")])
    assert happened == ["app", "body read"]
    assert sent[0]["status"] == 200
    assert (b"connection", b"close") not in sent[0]["headers"]

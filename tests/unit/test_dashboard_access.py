"""The dashboard's access: sessions stand for tokens, the permission table is applied on the
head, posts must come from the site itself; and output is made safe to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.server.auth import TokenBook
from shoal.server.dashboard_access import COOKIE, SESSION_SECONDS, SessionBook, WebGate
from shoal.server.dashboard_views import bar, clean_output
from shoal.store import Store


@pytest.fixture
def tokens(tmp_path: Path) -> TokenBook:
    return TokenBook(Store(tmp_path / "shoal.db"))


def _scope(method: str, path: str, *, cookie: str | None = None, bearer: str | None = None,
           **headers: str) -> dict[str, object]:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    if cookie is not None:
        raw.append((b"cookie", f"other=1; {COOKIE}={cookie}".encode()))
    if bearer is not None:
        raw.append((b"authorization", f"Bearer {bearer}".encode()))
    return {"type": "http", "method": method, "path": path, "headers": raw}


def test_sessions_follow_their_token_and_expire(tokens: TokenBook) -> None:
    now = [1000.0]
    sessions = SessionBook(tokens, clock=lambda: now[0])
    token = tokens.create("user", "alice")
    session = sessions.open(token)
    assert token not in session and sessions.principal(session).name == "alice"  # type: ignore[union-attr]
    assert sessions.principal("made-up") is None
    tokens.revoke("alice")
    assert sessions.principal(session) is None  # a revoked token ends its sessions
    again = sessions.open(tokens.create("user", "bob"))
    now[0] += SESSION_SECONDS + 1
    assert sessions.principal(again) is None
    assert "bob" not in repr(sessions._sessions)


def test_the_gate_applies_the_table(tokens: TokenBook) -> None:
    sessions = SessionBook(tokens)
    gate = WebGate(tokens, sessions)
    user = sessions.open(tokens.create("user", "alice"))
    worker = tokens.create("worker", "w")
    metrics = tokens.create("metrics", "prom")
    assert gate.owns("/") and gate.owns("/ui/jobs/3") and not gate.owns("/api/v1/jobs")
    assert gate.gate(_scope("GET", "/static/dashboard.css")) is None
    assert gate.gate(_scope("GET", "/login")) is None
    assert gate.gate(_scope("GET", "/")) is None  # a page: it answers with the login form
    assert gate.gate(_scope("GET", "/ui/feed")).status == 401  # type: ignore[union-attr]
    assert gate.gate(_scope("GET", "/ui/feed", cookie=user)) is None
    assert gate.gate(_scope("GET", "/ui/jobs/3/output", bearer=worker)).status == 403  # type: ignore[union-attr]
    assert gate.gate(_scope("GET", "/metrics", cookie=user)).status == 403  # type: ignore[union-attr]
    assert gate.gate(_scope("GET", "/metrics", bearer=metrics)) is None
    assert gate.gate(_scope("GET", "/ui/jobs", bearer=metrics)).status == 403  # type: ignore[union-attr]
    assert gate.gate(_scope("GET", "/ui/nowhere")).status == 401  # type: ignore[union-attr]
    public = WebGate(tokens, sessions, metrics_public=True)
    assert public.gate(_scope("GET", "/metrics")) is None


def test_posts_must_come_from_the_site(tokens: TokenBook) -> None:
    sessions = SessionBook(tokens)
    gate = WebGate(tokens, sessions)
    user = sessions.open(tokens.create("user", "alice"))
    kill = "/ui/actions/kill"
    assert gate.gate(_scope("POST", kill, cookie=user, sec_fetch_site="same-origin")) is None
    assert gate.gate(_scope("POST", kill, cookie=user, sec_fetch_site="cross-site")
                     ).status == 403  # type: ignore[union-attr]
    assert gate.gate(_scope("POST", kill, cookie=user, origin="https://evil.example",
                            host="shoal:8765")).status == 403  # type: ignore[union-attr]
    assert gate.gate(_scope("POST", kill, cookie=user, origin="https://shoal:8765",
                            host="shoal:8765")) is None
    assert gate.gate(_scope("POST", "/login", sec_fetch_site="cross-site")
                     ).status == 403  # type: ignore[union-attr]


def test_output_is_cleaned_of_terminal_controls() -> None:
    shown = clean_output("a\x1b[31mred\x1b[0m\r\nb\x1b]0;title\x07c\x00d\ufffd<script>")
    assert shown == "ared\nbc\\x00d\ufffd<script>"  # HTML is escaped by the templates


def test_a_bar_splits_by_state_in_order() -> None:
    segments = bar({"done": 3, "queued": 1})
    assert [(s.state, s.count, s.x, s.width) for s in segments] == [
        ("queued", 1, 0.0, 250.0), ("done", 3, 250.0, 750.0)]
    assert bar({}) == []

"""Who may see the dashboard and /metrics: the API's tokens and roles, carried by a session cookie.

A browser logs in once with a token (or a connection string holding one); the server keeps the
token in memory under a random session id and gives the browser only that id, in an HttpOnly,
SameSite=Strict cookie. No token ever appears in a URL. Each request is checked against
`permissions.POLICY` on its head, like the API's, by `WebGate`, which the guard calls for the
paths the dashboard owns. Revoking the token ends its sessions at once (the token is looked
up again on every request).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.routing import compile_path
from starlette.types import Scope

from shoal.server.auth import Principal, TokenBook
from shoal.server.guard import Refusal, bearer_token
from shoal.server.permissions import POLICY, check, refusal

COOKIE = "shoal_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 4096
OWNED_PATHS = frozenset({"/", "/login", "/logout", "/metrics"})
OWNED_PREFIXES = ("/ui/", "/static/")
# Pages a browser opens: without a session they answer with the login page, not a 401.
PAGES = frozenset({"/", "/ui/jobs", "/ui/jobs/{job_id}", "/ui/workers", "/ui/ensembles",
                   "/ui/ensembles/{run_id}"})
METRICS_PATH = "/metrics"

# Strict: only this origin's own files; no inline script or style, no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass
class _Session:
    token: str
    expires_at: float

    def __repr__(self) -> str:  # the token is a secret
        return f"_Session(expires_at={self.expires_at})"


class SessionBook:
    """Session id -> token, in memory: a restarted server asks browsers to log in again."""

    def __init__(self, tokens: TokenBook, clock: Callable[[], float] = time.time):
        self._tokens = tokens
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def open(self, token: str) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(token, self._clock() + SESSION_SECONDS)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def principal(self, session_id: str | None) -> Principal | None:
        if not session_id or len(session_id) > 128:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at < self._clock():
            del self._sessions[session_id]
            return None
        principal = self._tokens.principal_of(session.token)
        if principal is None:  # revoked
            del self._sessions[session_id]
        return principal


def cookie_of(scope: Scope, name: str = COOKIE) -> str | None:
    for header, value in scope.get("headers", ()):
        if header == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, found = part.strip().partition("=")
                if key == name:
                    return found
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for header, value in scope.get("headers", ()):
        if header == name:
            return str(value.decode("latin-1"))
    return None


def same_origin(scope: Scope) -> bool:
    """Whether a state-changing request comes from this site's own pages: the browser says so
    (Sec-Fetch-Site), or its Origin names this host. A request with neither is not a browser's
    cross-site request (browsers send Origin on every POST)."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    host = _header(scope, b"host") or ""
    return origin.partition("://")[2] == host


class WebGate:
    """The permission table applied to the dashboard's and /metrics' requests, on their head."""

    def __init__(self, tokens: TokenBook, sessions: SessionBook, metrics_public: bool = False):
        self.tokens = tokens
        self.sessions = sessions
        self.metrics_public = metrics_public
        self._table = [(compile_path(path)[0], method, path) for method, path in POLICY
                       if not path.startswith("/api/")]

    @staticmethod
    def owns(path: str) -> bool:
        return path in OWNED_PATHS or path.startswith(OWNED_PREFIXES)

    def principal(self, scope: Scope) -> Principal | None:
        """The caller: a bearer token (scrapers, scripts), else the session cookie."""
        token = bearer_token(scope)
        if token is not None:
            return self.tokens.principal_of(token)
        return self.sessions.principal(cookie_of(scope))

    def route(self, method: str, path: str) -> str | None:
        return next((template for regex, allowed, template in self._table
                     if allowed == method and regex.match(path)), None)

    def gate(self, scope: Scope) -> Refusal | None:
        method, path = scope["method"], scope["path"]
        principal = self.principal(scope)
        route = self.route(method, path)
        if route is None:
            return None if principal is not None else Refusal(
                401, "unauthorized", "log in first (a token is required)")
        if method == "POST" and not same_origin(scope):
            return Refusal(403, "forbidden", "cross-site request refused")
        if route in PAGES and principal is None:
            return None  # the page answers with the login form
        if route == METRICS_PATH and self.metrics_public:
            return None
        return refusal(method, route, principal)

    def allows(self, method: str, route: str, principal: Principal | None) -> Principal | None:
        """The same check inside a handler: the principal, or AuthError / Forbidden."""
        if route == METRICS_PATH and self.metrics_public:
            return principal
        return check(method, route, principal)

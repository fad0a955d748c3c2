"""Who may call what: one table of (method, route) -> roles, checked before every handler.

A route missing from the table is refused to everyone (and a test fails), so a new endpoint
cannot be left open by forgetting it here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from shoal.core.errors import AuthError, Forbidden
from shoal.server.auth import ADMIN, METRICS, USER, WORKER, Principal
from shoal.server.guard import Refusal

PUBLIC: frozenset[str] = frozenset()  # no token needed
CLIENTS = frozenset({ADMIN, USER})
ADMINS = frozenset({ADMIN})
ANY_TOKEN = frozenset({ADMIN, USER, WORKER, METRICS})
METRICS_READERS = frozenset({ADMIN, METRICS})

_API = "/api/v1"
POLICY: dict[tuple[str, str], frozenset[str]] = {
    ("GET", f"{_API}/version"): PUBLIC,
    ("GET", f"{_API}/ca"): PUBLIC,
    ("GET", f"{_API}/whoami"): ANY_TOKEN,
    ("POST", f"{_API}/jobs"): CLIENTS,
    ("GET", f"{_API}/jobs"): CLIENTS,
    ("GET", f"{_API}/jobs/{{job_id}}"): CLIENTS,
    ("GET", f"{_API}/jobs/{{job_id}}/logs"): CLIENTS,
    ("POST", f"{_API}/jobs/kill"): CLIENTS,
    ("POST", f"{_API}/jobs/retry"): CLIENTS,
    ("POST", f"{_API}/jobs/remove"): CLIENTS,
    ("PATCH", f"{_API}/jobs/{{job_id}}"): CLIENTS,
    ("POST", f"{_API}/jobs/modify"): CLIENTS,
    ("POST", f"{_API}/jobs/purge"): CLIENTS,
    ("POST", f"{_API}/adds/{{batch}}"): CLIENTS,
    ("POST", f"{_API}/adds/{{batch}}/commit"): CLIENTS,
    ("DELETE", f"{_API}/adds/{{batch}}"): CLIENTS,
    ("POST", f"{_API}/arrays"): CLIENTS,
    ("GET", f"{_API}/arrays"): CLIENTS,
    ("GET", f"{_API}/status"): CLIENTS,
    ("GET", f"{_API}/limits"): CLIENTS,
    ("GET", f"{_API}/limits/{{name}}"): CLIENTS,
    ("PUT", f"{_API}/limits/{{name}}"): ADMINS,
    ("GET", f"{_API}/server"): CLIENTS,
    ("POST", f"{_API}/server/drain"): ADMINS,
    ("POST", f"{_API}/server/stop"): ADMINS,
    ("GET", f"{_API}/server/backup"): ADMINS,
    ("POST", f"{_API}/blobs/missing"): CLIENTS,
    ("PUT", f"{_API}/blobs/{{sha256}}"): CLIENTS,
    ("GET", f"{_API}/blobs/{{sha256}}"): frozenset({ADMIN, WORKER}),
    ("POST", f"{_API}/ensembles"): CLIENTS,
    ("GET", f"{_API}/ensembles"): CLIENTS,
    ("GET", f"{_API}/ensembles/{{run_id}}"): CLIENTS,
    ("POST", f"{_API}/ensembles/{{run_id}}/cancel"): CLIENTS,
    ("GET", f"{_API}/workers"): CLIENTS,
    ("POST", f"{_API}/tokens"): ADMINS,
    ("GET", f"{_API}/tokens"): ADMINS,
    ("DELETE", f"{_API}/tokens/{{name}}"): ADMINS,
    ("WEBSOCKET", f"{_API}/worker"): frozenset({ADMIN, WORKER}),
    # Allocation queues run engine commands on the server's host as its user: admins only.
    ("POST", f"{_API}/alloc"): ADMINS,
    ("GET", f"{_API}/alloc"): ADMINS,
    ("GET", f"{_API}/alloc/{{name}}"): ADMINS,
    ("GET", f"{_API}/alloc/{{name}}/log"): ADMINS,
    ("POST", f"{_API}/alloc/{{name}}/pause"): ADMINS,
    ("POST", f"{_API}/alloc/{{name}}/resume"): ADMINS,
    ("DELETE", f"{_API}/alloc/{{name}}"): ADMINS,
    # The dashboard (server/dashboard.py): its pages and data need a session of a client
    # token; its login page and static files need none. /metrics: see server/metrics.py.
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/static/{path:path}"): PUBLIC,
    ("GET", "/"): CLIENTS,
    ("GET", "/ui/jobs"): CLIENTS,
    ("GET", "/ui/jobs/{job_id}"): CLIENTS,
    ("GET", "/ui/jobs/{job_id}/output"): CLIENTS,
    ("GET", "/ui/jobs/{job_id}/dependants"): CLIENTS,
    ("POST", "/ui/actions/{action}"): CLIENTS,
    ("GET", "/ui/workers"): CLIENTS,
    ("GET", "/ui/workers/series"): CLIENTS,
    ("GET", "/ui/ensembles"): CLIENTS,
    ("GET", "/ui/ensembles/{run_id}"): CLIENTS,
    ("GET", "/ui/feed"): CLIENTS,
    ("GET", "/metrics"): METRICS_READERS,
}


def bearer_token(request: Request | WebSocket) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def allows(method: str, route: str, principal: Principal | None) -> bool:
    """Whether the table lets this principal call this route (for checks inside a handler)."""
    allowed = POLICY.get((method, route))
    return allowed is not None and (not allowed or (
        principal is not None and principal.role in allowed))


def check(method: str, route: str, principal: Principal | None) -> Principal | None:
    """The principal if allowed; AuthError (401) without a valid token, Forbidden (403)
    when the token's role may not do this."""
    allowed = POLICY.get((method, route))
    if allowed is None:
        raise Forbidden(f"{method} {route} is not open to any role")
    if not allowed:
        return principal
    if principal is None:
        raise AuthError("a valid token is required (Authorization: Bearer TOKEN)")
    if principal.role not in allowed:
        needs = " or ".join(_a(role) for role in sorted(allowed))
        raise Forbidden(f"this needs {needs} token; {principal.name!r} has "
                        f"{_a(principal.role)} token")
    return principal


def refusal(method: str, route: str, principal: Principal | None) -> Refusal | None:
    """`check`'s answer as a gate gives it, before a body is read: None if allowed."""
    try:
        check(method, route, principal)
    except Forbidden as exc:
        return Refusal(403, "forbidden", str(exc))
    except AuthError as exc:
        return Refusal(401, "unauthorized", str(exc))
    return None


async def authorize(request: Request) -> Principal | None:
    """Router dependency: runs before every handler under /api/v1."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    principal = request.app.state.tokens.principal_of(bearer_token(request))
    return check(request.method, path, principal)


async def principal(found: Annotated[Principal | None, Depends(authorize)]) -> Principal:
    """The caller of an endpoint that needs a token: authorize's answer, which FastAPI keeps
    for the request, so the token is looked up once."""
    if found is None:
        raise AuthError("a valid token is required (Authorization: Bearer TOKEN)")
    return found


def _a(role: str) -> str:
    return f"an {role}" if role == ADMIN else f"a {role}"

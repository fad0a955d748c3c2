"""The permission table covers every route, and `check` answers as the table says."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute

from shoal.core.errors import AuthError
from shoal.server import api, api_alloc, dashboard
from shoal.server.auth import ADMIN, USER, WORKER, Principal
from shoal.server.permissions import POLICY, Forbidden, check


def _routes() -> set[tuple[str, str]]:
    found = set()
    for route in [*api.router.routes, *dashboard.router.routes, *api_alloc.router.routes]:
        if isinstance(route, APIRoute):
            found.update((method, route.path) for method in route.methods)
    return found


def test_every_route_has_an_entry_and_every_entry_a_route() -> None:
    routes = _routes() | {("WEBSOCKET", "/api/v1/worker")}
    assert routes == set(POLICY)


def test_the_app_serves_no_route_outside_the_table(tmp_path: Path) -> None:
    from shoal.server.app import create_app
    from shoal.server.auth import TokenBook
    from shoal.server.service import Service
    from shoal.store import Store

    store = Store(tmp_path / "shoal.db")
    app = create_app(Service(store), TokenBook(store))
    served = set()
    pending = list(app.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # an included router
        if included is not None:
            pending.extend(included.routes)
        elif isinstance(route, APIWebSocketRoute):
            served.add(("WEBSOCKET", route.path))
        elif isinstance(route, APIRoute):
            served.update((method, route.path) for method in route.methods)
    assert served == set(POLICY)  # the docs and schema routes are starlette's, not APIRoutes
    assert {path for _, path in served} >= {"/api/v1/worker", "/api/v1/tokens"}


@pytest.mark.parametrize(("method", "route", "role", "outcome"), [
    ("GET", "/api/v1/version", None, "ok"),
    ("GET", "/api/v1/ca", None, "ok"),
    ("GET", "/api/v1/jobs", None, "401"),
    ("GET", "/api/v1/jobs", USER, "ok"),
    ("GET", "/api/v1/jobs", WORKER, "403"),
    ("POST", "/api/v1/server/stop", USER, "403"),
    ("POST", "/api/v1/server/stop", ADMIN, "ok"),
    ("PUT", "/api/v1/limits/{name}", USER, "403"),
    ("GET", "/api/v1/limits/{name}", USER, "ok"),
    ("POST", "/api/v1/tokens", USER, "403"),
    ("GET", "/api/v1/blobs/{sha256}", USER, "403"),
    ("GET", "/api/v1/blobs/{sha256}", WORKER, "ok"),
    ("WEBSOCKET", "/api/v1/worker", USER, "403"),
    ("WEBSOCKET", "/api/v1/worker", WORKER, "ok"),
    ("GET", "/api/v1/whoami", WORKER, "ok"),
    ("DELETE", "/api/v1/jobs", ADMIN, "403"),  # not in the table: nobody
])
def test_check(method: str, route: str, role: str | None, outcome: str) -> None:
    principal = None if role is None else Principal(role, f"someone-{role}", "hash")
    if outcome == "ok":
        assert check(method, route, principal) == principal
    else:
        with pytest.raises(AuthError) as caught:
            check(method, route, principal)
        assert isinstance(caught.value, Forbidden) == (outcome == "403")


def test_refusals_name_the_role_needed_and_the_role_held() -> None:
    with pytest.raises(Forbidden, match="needs an admin token; 'alice' has a user token"):
        check("POST", "/api/v1/server/stop", Principal(USER, "alice", "h"))

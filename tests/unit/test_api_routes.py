"""The HTTP handlers must run on the event loop's thread, where the service lives."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from shoal.server import api


def _dependencies(route: APIRoute) -> list[object]:
    found, pending = [], list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        found.append(dependant.call)
        pending.extend(dependant.dependencies)
    return found


def test_every_handler_and_dependency_is_a_coroutine() -> None:
    routes = [route for route in api.router.routes if isinstance(route, APIRoute)]
    assert len(routes) >= 15
    for route in routes:
        assert inspect.iscoroutinefunction(route.endpoint), route.path
        for call in _dependencies(route):
            assert inspect.iscoroutinefunction(call), (route.path, call)

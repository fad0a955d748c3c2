"""The dashboard at the server's root URL: groups, jobs, a job, workers and ensembles, live.

Pages are rendered on the server (Jinja, every string escaped) and kept current by a
server-sent events feed (`/ui/feed`) telling each page which of its parts changed; htmx then
fetches that part again (the same URL, answered as a fragment when `HX-Request` is set).
Access is the API's: the same tokens and roles, checked on the request head by `WebGate`
(see `dashboard_access`), with a user seeing only their own jobs.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.responses import StreamingResponse as Streaming
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shoal import __version__
from shoal.core.errors import AuthError, Conflict, InputError, NotFound
from shoal.core.models import MAX_GROUP_CHARS
from shoal.home import parse_connection_string
from shoal.server import dashboard_views as views
from shoal.server.auth import ADMIN, USER, Principal, TokenBook
from shoal.server.dashboard_access import (
    COOKIE,
    SECURITY_HEADERS,
    SESSION_SECONDS,
    SessionBook,
    WebGate,
    cookie_of,
)
from shoal.server.dashboard_feed import LiveFeed, Throughput, Utilisation
from shoal.server.dashboard_jobs import job_page, list_page
from shoal.server.metrics import CONTENT_TYPE, Metrics
from shoal.server.service import Service

HERE = Path(__file__).parent
STATIC = HERE / "static"
MAX_FORM_BYTES = 64 * 1024
ACTIONS = {"kill": "killed", "retry": "queued again", "remove": "removed"}

templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True))
templates.filters.update(bytes=views.format_bytes, seconds=views.format_seconds,
                         when=views.format_time, ago=views.ago)
templates.globals.update(states=views.STATE_NAMES, version=__version__)


@dataclass
class Dashboard:
    service: Service
    gate: WebGate
    sessions: SessionBook
    feed: LiveFeed
    throughput: Throughput
    utilisation: Utilisation
    metrics: Metrics
    secure_cookie: bool = False


def install(app: FastAPI, service: Service, tokens: TokenBook, *,
            metrics_public: bool = False) -> WebGate:
    """Add the dashboard and /metrics to `app`, subscribed to the service's events. Returns
    the gate the guard applies to their requests."""
    sessions = SessionBook(tokens)
    gate = WebGate(tokens, sessions, metrics_public=metrics_public)
    dashboard = Dashboard(service, gate, sessions, LiveFeed(), Throughput(),
                          Utilisation(service), Metrics(service))
    for processor in (dashboard.metrics, dashboard.feed, dashboard.throughput,
                      dashboard.utilisation):
        service.events.subscribe(processor)
    app.state.dashboard = dashboard
    app.include_router(router)
    return gate


router = APIRouter(include_in_schema=False)


def _dashboard(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return _html(templates.get_template(name).render(**context), status,
                 {"vary": "HX-Request"})


def _fragment(request: Request) -> bool:
    return request.headers.get("hx-request") == "true" and \
        request.headers.get("hx-history-restore-request") != "true"


def _who(request: Request, method: str, route: str) -> Principal | None:
    """The caller if the table lets them call this route; None if they must log in first."""
    dashboard = _dashboard(request)
    principal = dashboard.gate.principal(request.scope)
    if principal is None:
        return None
    dashboard.gate.allows(method, route, principal)  # Forbidden for the wrong role
    return principal


def _login_redirect() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)


def _page(request: Request, template: str, who: Principal, active: str,
          **context: Any) -> HTMLResponse:
    """A whole page, or only its live part (`template` starting with _) for htmx."""
    query = request.url.query
    self_url = request.url.path + (f"?{query}" if query else "")
    if _fragment(request):
        return _render(f"_{template}", who=who, self_url=self_url, **context)
    return _render(template, who=who, active=active, self_url=self_url, **context)


def _error(request: Request, who: Principal | None, status: int, message: str) -> HTMLResponse:
    if _fragment(request):
        return _render("_message.html", status, message=message, kind="error")
    return _render("error.html", status, who=who, message=message, active="")


# ---- login ---------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> Response:
    if _dashboard(request).gate.principal(request.scope) is not None:
        return RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    return _render("login.html", who=None, active="")


async def _form(request: Request) -> dict[str, list[str]]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InputError("the form is too large")
    return parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10_000)


def token_of(credential: str) -> str:
    """A token, or the token inside a connection string."""
    credential = credential.strip()
    if credential.startswith("shoal://"):
        _url, token, _ca = parse_connection_string(credential)
        if not token:
            raise InputError("this connection string holds no token")
        return token
    return credential


@router.post("/login")
async def login(request: Request) -> Response:
    dashboard = _dashboard(request)
    try:
        form = await _form(request)
        token = token_of((form.get("credential") or [""])[0])
    except InputError as exc:
        return _render("login.html", 400, who=None, active="", error=str(exc))
    principal = dashboard.gate.tokens.principal_of(token)
    if principal is None:
        return _render("login.html", 401, who=None, active="",
                       error="this token is not valid (revoked, mistyped, or another server's)")
    if principal.role not in (ADMIN, USER):
        return _render("login.html", 403, who=None, active="",
                       error=f"a {principal.role} token cannot open the dashboard; use a user "
                             "or admin token")
    session = dashboard.sessions.open(token)
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, session, max_age=int(SESSION_SECONDS), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    _dashboard(request).sessions.close(cookie_of(request.scope))
    response = _login_redirect()
    response.delete_cookie(COOKIE, httponly=True, samesite="strict", path="/",
                           secure=request.url.scheme == "https")
    return response


@router.get("/static/{path:path}")
async def static(path: str) -> Response:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC.resolve()) or not target.is_file():
        return Response("not found", status_code=404, media_type="text/plain",
                        headers=SECURITY_HEADERS)
    media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".js":
        media = "text/javascript"
    return Response(target.read_bytes(), media_type=media, headers={
        "x-content-type-options": "nosniff", "cache-control": "public, max-age=3600",
        "content-security-policy": SECURITY_HEADERS["content-security-policy"]})


# ---- groups --------------------------------------------------------------------------------


@router.get("/")
async def groups_page(request: Request,
                      q: Annotated[str, Query(max_length=MAX_GROUP_CHARS)] = "") -> Response:
    who = _who(request, "GET", "/")
    if who is None:
        return _login_redirect()
    dashboard = _dashboard(request)
    status = dashboard.service.status(owner=who.scope)

    def rate(group: str) -> float:
        return dashboard.throughput.per_minute(group, who.scope)

    rows, matched = views.group_rows(status["groups"], q, rate)
    totals = status["totals"]
    return _page(request, "groups.html", who, "groups", rows=rows, matched=matched, q=q,
                 totals=totals, total=sum(totals.values()),
                 segments=views.bar(totals))


# ---- jobs ----------------------------------------------------------------------------------


@router.get("/ui/jobs")
async def jobs_page(
    request: Request,
    state: Annotated[str, Query(max_length=16)] = "",
    group: Annotated[str, Query(max_length=MAX_GROUP_CHARS)] = "",
    worker: Annotated[str, Query(max_length=256)] = "",
    q: Annotated[str, Query(max_length=1024)] = "",
    sort: Literal["id", "started", "wall", "memory"] = "id",
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[int | None, Query(ge=0)] = None,
    before: Annotated[int | None, Query(ge=0)] = None,
    size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    who = _who(request, "GET", "/ui/jobs")
    if who is None:
        return _login_redirect()
    if state and state not in views.STATE_NAMES:
        return _error(request, who, 400, f"no such state: {state}")
    page = list_page(_dashboard(request).service, who.scope, state=state, group=group,
                     worker=worker, text=q, sort=sort, order=order, after=after,
                     before=before, size=size)
    return _page(request, "jobs.html", who, "jobs", page=page)


@router.post("/ui/actions/{action}")
async def act(request: Request, action: str) -> Response:
    who = _who(request, "POST", "/ui/actions/{action}")
    if who is None:
        raise AuthError("log in first")
    if action not in ACTIONS:
        return _render("_message.html", 400, message=f"unknown action {action}", kind="error")
    try:
        form = await _form(request)
        ids = sorted({int(value) for value in form.get("ids", []) if value.isdigit()})
        if not ids:
            raise InputError("select some jobs first")
        reason = "killed by user" if who.sees_all else f"killed by {who.name}"
        affected = _dashboard(request).service.act(action, ids, None, reason, owner=who.scope)
    except (InputError, NotFound, Conflict) as exc:
        return _render("_message.html", 200, message=str(exc), kind="error")
    noun = "job" if len(affected) == 1 else "jobs"
    return _render("_message.html", 200, kind="ok",
                   message=f"{len(affected)} {noun} {ACTIONS[action]}")


@router.get("/ui/jobs/{job_id}")
async def job_detail(request: Request, job_id: int) -> Response:
    who = _who(request, "GET", "/ui/jobs/{job_id}")
    if who is None:
        return _login_redirect()
    try:
        job = job_page(_dashboard(request).service, job_id, who.scope)
    except NotFound:
        return _error(request, who, 404, f"job {job_id} does not exist or is not yours")
    return _page(request, "job.html", who, "jobs", job=job)


@router.get("/ui/jobs/{job_id}/dependants")
async def job_dependants(request: Request, job_id: int) -> Response:
    who = _who(request, "GET", "/ui/jobs/{job_id}/dependants")
    if who is None:
        raise AuthError("log in first")
    from shoal.server.dashboard_jobs import dependants

    try:
        found = dependants(_dashboard(request).service, job_id, who.scope)
    except NotFound:
        return _render("_message.html", 404, message="not found", kind="error")
    return _render("_dependants.html", dependants=found)


@router.get("/ui/jobs/{job_id}/output")
async def job_output(request: Request, job_id: int,
                     stream: Literal["stdout", "stderr"] = "stdout",
                     offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    """A running job's output from `offset` on (asked of its worker), made safe to show."""
    who = _who(request, "GET", "/ui/jobs/{job_id}/output")
    if who is None:
        raise AuthError("log in first")
    service = _dashboard(request).service
    try:
        answer = await service.logs_from(job_id, stream, offset, owner=who.scope)
    except NotFound:
        return JSONResponse({"error": {"code": "not_found",
                                       "message": f"job {job_id} does not exist"}},
                            status_code=404, headers=SECURITY_HEADERS)
    if answer.get("live"):
        body = {"live": True, "state": "running", "data": views.clean_output(answer["data"]),
                "next_offset": answer["next_offset"], "total_bytes": answer["total_bytes"]}
    else:
        body = {"live": False, "state": answer["state"], "data": "",
                "next_offset": offset, "total_bytes": answer.get("total_bytes", 0)}
    return JSONResponse(body, headers=SECURITY_HEADERS)


# ---- workers and ensembles -----------------------------------------------------------------


@router.get("/ui/workers")
async def workers_page(request: Request) -> Response:
    who = _who(request, "GET", "/ui/workers")
    if who is None:
        return _login_redirect()
    dashboard = _dashboard(request)
    dashboard.utilisation.sample()
    workers = sorted(dashboard.service.workers(), key=lambda w: (not w["connected"],
                                                                 str(w["name"])))
    return _page(request, "workers.html", who, "workers", workers=workers)


@router.get("/ui/workers/series")
async def workers_series(request: Request) -> Response:
    if _who(request, "GET", "/ui/workers/series") is None:
        raise AuthError("log in first")
    return JSONResponse(_dashboard(request).utilisation.series(), headers=SECURITY_HEADERS)


@router.get("/ui/ensembles")
async def ensembles_page(request: Request) -> Response:
    who = _who(request, "GET", "/ui/ensembles")
    if who is None:
        return _login_redirect()
    runs = request.app.state.ensembles.list_runs(owner=who.scope)
    runs.sort(key=lambda run: -run["run_id"])
    return _page(request, "ensembles.html", who, "ensembles", runs=runs)


@router.get("/ui/ensembles/{run_id}")
async def ensemble_page(request: Request, run_id: int) -> Response:
    who = _who(request, "GET", "/ui/ensembles/{run_id}")
    if who is None:
        return _login_redirect()
    try:
        run = request.app.state.ensembles.snapshot(run_id, owner=who.scope)
    except NotFound:
        return _error(request, who, 404, f"ensemble run {run_id} does not exist")
    return _page(request, "ensemble.html", who, "ensembles", run=run,
                 chart=views.gantt(run))


# ---- live feed and metrics -----------------------------------------------------------------


@router.get("/ui/feed")
async def feed(request: Request, job: Annotated[int | None, Query(ge=0)] = None) -> Response:
    """Server-sent events: which parts of the open page changed."""
    who = _who(request, "GET", "/ui/feed")
    if who is None:
        raise AuthError("log in first")
    dashboard = _dashboard(request)
    subscriber = dashboard.feed.subscribe(who.scope, job)
    return Streaming(dashboard.feed.stream(subscriber, request.is_disconnected),
                     media_type="text/event-stream",
                     headers={**SECURITY_HEADERS, "x-accel-buffering": "no"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    dashboard = _dashboard(request)
    principal = dashboard.gate.principal(request.scope)
    dashboard.gate.allows("GET", "/metrics", principal)
    return Response(dashboard.metrics.exposition(), media_type=CONTENT_TYPE)

"""HTTP routes under /api/v1. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from shoal import __version__
from shoal.core.errors import InputError, NotFound
from shoal.core.models import JobSpec, JobState
from shoal.core.protocol import PROTOCOL_VERSION
from shoal.home import format_connection_string
from shoal.server.auth import WORKER, Principal
from shoal.server.ensembles import EnsembleRequest
from shoal.server.permissions import Forbidden, authorize, principal
from shoal.server.service import Service

MAX_WAIT_SECONDS = 30.0


async def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


Who = Annotated[Principal, Depends(principal)]
ServiceDep = Annotated[Service, Depends(service_of)]


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSpec] = Field(max_length=1_000_000)
    rerun: bool = False


class AddResponse(BaseModel):
    added: int
    existed: int
    requeued: int
    ids: list[int]


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] | None = Field(default=None, max_length=1_000_000)
    group: str | None = None


class ActionResponse(BaseModel):
    affected: int
    ids: list[int]


class VersionResponse(BaseModel):
    version: str
    protocol_version: int


# ---- errors, as the spec documents them ------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable, machine-readable word: invalid, unauthorized, "
                                  "forbidden, not_found, conflict, too_large, rate_limited, "
                                  "unavailable, ...")
    message: str = Field(description="One line for a person")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


_WHY: dict[int, str] = {
    400: "The request is invalid: a parameter or a body field (named in the message)",
    401: "No valid token: send `Authorization: Bearer TOKEN`",
    403: "The token's role may not do this",
    404: "No such thing, or not one the caller may see",
    409: "Valid, but it does not fit the current state",
    413: "The request body is too large",
    429: "Too many requests from this client; retry after `Retry-After` seconds",
    503: "The server cannot write its database (full disk, read-only file)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route, by status code."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        documented[code] = {"model": ErrorBody, "description": _WHY[code]}
    if 429 in documented:
        documented[429]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before the next request",
            "required": True, "schema": {"type": "integer", "minimum": 1}}}
    return documented


# Who may call what is in permissions.POLICY; a route that needs a token documents 401, and
# 403 unless every role may call it.
AUTH = (401, 403)

# Every handler and dependency is `async def`: FastAPI would run a plain `def` in a thread,
# and the service, reactor and store belong to the event loop's thread alone.
# Any request may be refused before it reaches a route: its body too large or its client
# too fast (the guard in front of the app).
router = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)],
                   responses=_errors(413, 429))


@router.get("/version", response_model=VersionResponse)
async def version() -> dict[str, Any]:
    return {"version": __version__, "protocol_version": PROTOCOL_VERSION}


@router.post("/jobs", status_code=201, response_model=AddResponse,
             responses=_errors(400, *AUTH, 503))
async def add_jobs(body: AddRequest, who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.add(body.jobs, rerun=body.rerun, owner=who.name, sees_all=who.sees_all)


@router.get("/jobs", responses=_errors(400, *AUTH))
async def list_jobs(who: Who, service: ServiceDep, state: JobState | None = None,
              group: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
              offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    return service.jobs(state, group, limit, offset, owner=who.scope)


@router.get("/jobs/{job_id}", responses=_errors(400, *AUTH, 404))
async def get_job(job_id: int, who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.job(job_id, owner=who.scope)


@router.get("/jobs/{job_id}/logs", responses=_errors(400, *AUTH, 404))
async def get_logs(job_id: int, who: Who, service: ServiceDep,
                   stream: Literal["stdout", "stderr"] = "stdout",
                   offset: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    """The kept head and tail; with `offset`, a running job's live output from there."""
    if offset is not None:
        chunk = await service.peek(job_id, stream, offset, owner=who.scope)
        if chunk is not None and chunk.found:
            return {"job_id": job_id, "stream": stream, "state": "running", "live": True,
                    "offset": chunk.offset, "data": chunk.data,
                    "next_offset": chunk.next_offset if chunk.next_offset is not None
                    else chunk.offset + len(chunk.data.encode()),
                    "total_bytes": chunk.total_bytes}
    return {**service.logs(job_id, stream, owner=who.scope), "live": False}


ACT_ERRORS = _errors(400, *AUTH, 404, 409, 503)


def _act(action: str, body: Selection, service: Service, who: Principal) -> dict[str, Any]:
    if (body.ids is None) == (body.group is None):
        raise InputError("give either ids or a group")
    reason = "killed by user" if who.sees_all else f"killed by {who.name}"
    affected = service.act(action, body.ids, body.group, reason, owner=who.scope)
    return {"affected": len(affected), "ids": affected}


@router.post("/jobs/kill", response_model=ActionResponse, responses=ACT_ERRORS)
async def kill_jobs(body: Selection, who: Who, service: ServiceDep) -> dict[str, Any]:
    return _act("kill", body, service, who)


@router.post("/jobs/retry", response_model=ActionResponse, responses=ACT_ERRORS)
async def retry_jobs(body: Selection, who: Who, service: ServiceDep) -> dict[str, Any]:
    return _act("retry", body, service, who)


@router.post("/jobs/remove", response_model=ActionResponse, responses=ACT_ERRORS)
async def remove_jobs(body: Selection, who: Who, service: ServiceDep) -> dict[str, Any]:
    return _act("remove", body, service, who)


@router.get("/status", responses=_errors(400, *AUTH))
async def status(who: Who, service: ServiceDep, group: str | None = None,
                 wait: Annotated[float | None, Query(ge=0)] = None,
                 since: int | None = None) -> dict[str, Any]:
    if wait and since is not None:
        await service.wait_for_change(since, min(wait, MAX_WAIT_SECONDS))
    return service.status(group, owner=who.scope)


class LimitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cap: int | None = Field(ge=0, le=1_000_000_000)


LimitName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]


@router.get("/limits", responses=_errors(*AUTH))
async def list_limits(who: Who, service: ServiceDep) -> dict[str, Any]:
    return {"limits": service.reactor.limits()}


@router.get("/limits/{name}", responses=_errors(400, *AUTH))
async def get_limit(name: LimitName, who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.limit(name)


@router.put("/limits/{name}", responses=_errors(400, *AUTH, 503))
async def set_limit(name: LimitName, body: LimitRequest, who: Who,
              service: ServiceDep) -> dict[str, Any]:
    return service.set_limit(name, body.cap)


@router.get("/server", responses=_errors(*AUTH))
async def server_info(who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.info(__version__)


@router.post("/server/drain", responses=_errors(*AUTH, 503))
async def drain(who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.drain()


@router.post("/server/stop", responses=_errors(*AUTH))
async def stop(who: Who, service: ServiceDep) -> dict[str, Any]:
    # Answer first, then stop: the reply must leave before the server does.
    asyncio.get_running_loop().call_later(0.2, service.shutdown, "asked to stop")
    return {"stopping": True}


@router.get("/server/backup", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **_errors(*AUTH, 503)})
async def backup(who: Who, service: ServiceDep) -> FileResponse:
    handle = tempfile.NamedTemporaryFile(prefix="shoal-backup-", suffix=".db", delete=False)  # noqa: SIM115
    handle.close()
    path = Path(handle.name)
    service.backup(path)
    return FileResponse(path, media_type="application/octet-stream", filename="shoal.db",
                        background=BackgroundTask(path.unlink, missing_ok=True))


# ---- ensembles and their files ------------------------------------------------------------


class MissingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: list[str] = Field(max_length=1_000_000)


@router.post("/blobs/missing", responses=_errors(400, *AUTH))
async def blobs_missing(body: MissingRequest, who: Who,
                        request: Request) -> dict[str, Any]:
    return {"missing": request.app.state.blobs.missing(body.sha256)}


@router.put("/blobs/{sha256}", status_code=201, responses=_errors(400, *AUTH, 503))
async def put_blob(sha256: str, who: Who, request: Request) -> dict[str, Any]:
    size = await request.app.state.blobs.put_stream(sha256, request.stream())
    return {"sha256": sha256, "size": size}


@router.get("/blobs/{sha256}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **_errors(400, *AUTH, 404)})
async def get_blob(sha256: str, request: Request, who: Who) -> FileResponse:
    if who.role == WORKER and not request.app.state.service.blob_in_use(sha256):
        raise Forbidden("workers may fetch only the files of jobs handed to workers")
    return FileResponse(request.app.state.blobs.open_path(sha256),
                        media_type="application/octet-stream")


@router.post("/ensembles", status_code=201, responses=_errors(400, *AUTH))
async def start_ensemble(body: EnsembleRequest, who: Who,
                         request: Request) -> dict[str, Any]:
    runner = request.app.state.ensembles
    run_id = runner.start(body, owner=who.name)
    return runner.snapshot(run_id)


@router.get("/ensembles", responses=_errors(400, *AUTH))
async def list_ensembles(who: Who, request: Request,
                         name: str | None = None) -> dict[str, Any]:
    return {"runs": request.app.state.ensembles.list_runs(name, owner=who.scope)}


@router.get("/ensembles/{run_id}", responses=_errors(400, *AUTH, 404))
async def get_ensemble(run_id: int, who: Who, request: Request,
                       wait: Annotated[float | None, Query(ge=0)] = None,
                       since: int | None = None) -> dict[str, Any]:
    runner = request.app.state.ensembles
    if wait and since is not None:
        await runner.wait_for_change(run_id, since, min(wait, MAX_WAIT_SECONDS),
                                     owner=who.scope)
    return runner.snapshot(run_id, owner=who.scope)


@router.post("/ensembles/{run_id}/cancel", responses=_errors(400, *AUTH, 404))
async def cancel_ensemble(run_id: int, who: Who, request: Request) -> dict[str, Any]:
    request.app.state.ensembles.cancel(run_id, owner=who.scope)
    return {"cancelled": True}


@router.get("/workers", responses=_errors(*AUTH))
async def workers(who: Who, service: ServiceDep) -> dict[str, Any]:
    return {"workers": service.workers()}


# ---- tokens and identity -------------------------------------------------------------------


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["admin", "user", "worker"]
    name: str = Field(min_length=1, max_length=64)


class TokenResponse(BaseModel):
    name: str
    role: str
    token: str
    connection: str | None  # shoal://TOKEN@ADDRESS?ca=...: all another host needs


class TokenInfo(BaseModel):
    name: str
    role: str
    created_at: float
    revoked_at: float | None


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class WhoAmI(BaseModel):
    name: str
    role: str


@router.get("/whoami", response_model=WhoAmI, responses=_errors(401))
async def whoami(who: Who) -> dict[str, Any]:
    return {"name": who.name, "role": who.role}


@router.post("/tokens", status_code=201, response_model=TokenResponse,
             responses=_errors(400, *AUTH, 409, 503))
async def create_token(body: TokenRequest, who: Who, request: Request) -> dict[str, Any]:
    token = request.app.state.tokens.create(body.role, body.name)
    advertised: str | None = request.app.state.advertised_url
    connection = None if advertised is None else format_connection_string(
        advertised, token, request.app.state.ca_fingerprint)
    return {"name": body.name, "role": body.role, "token": token, "connection": connection}


@router.get("/tokens", response_model=TokenList, responses=_errors(*AUTH))
async def list_tokens(who: Who, request: Request) -> dict[str, Any]:
    return {"tokens": request.app.state.tokens.listing()}


@router.delete("/tokens/{name}", response_model=TokenInfo,
                responses=_errors(400, *AUTH, 404, 503))
async def revoke_token(name: Annotated[str, PathParam(max_length=64)], who: Who,
                       request: Request) -> dict[str, Any]:
    tokens = request.app.state.tokens
    tokens.revoke(name)
    return next(t for t in reversed(tokens.listing()) if t["name"] == name)


@router.get("/ca", response_class=PlainTextResponse,
            responses={200: {"content": {"application/x-pem-file": {}}}, **_errors(404)})
async def ca_certificate(request: Request) -> PlainTextResponse:
    """The server's own CA certificate (public), which clients pin by its fingerprint."""
    pem: bytes | None = request.app.state.ca_pem
    if pem is None:
        raise NotFound("this server does not use its own certificate authority")
    return PlainTextResponse(pem.decode(), media_type="application/x-pem-file")

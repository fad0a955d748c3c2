"""HTTP routes under /api/v1. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError, to_json
from starlette.background import BackgroundTask

from shoal import __version__
from shoal.core.errors import InputError, NotFound
from shoal.core.models import (
    MAX_GROUP_CHARS,
    MAX_INT64,
    JobChanges,
    JobDefaults,
    JobSpec,
    JobState,
    check_command,
)
from shoal.core.protocol import PROTOCOL_VERSION
from shoal.home import format_connection_string
from shoal.server.adds import ChunkedAdds
from shoal.server.api_answers import (
    Cancelled,
    Draining,
    EnsembleRun,
    EnsembleRunList,
    JobDetail,
    JobPage,
    KeptLogs,
    LimitInfo,
    LimitList,
    LiveLogs,
    MissingBlobs,
    ServerInfo,
    StatusCounts,
    Stopping,
    StoredBlob,
    WorkerList,
    answers,
    errors,
)
from shoal.server.auth import TOKEN_NAME_RE, TOKEN_NAME_RULE, WORKER, Principal
from shoal.server.blobs import SHA256_RE
from shoal.server.effects import AlikeJobs
from shoal.server.ensembles import EnsembleRequest
from shoal.server.guard import JsonBodyRoute
from shoal.server.permissions import Forbidden, allows, authorize, principal
from shoal.server.service import Service
from shoal.store import JobQuery

MAX_WAIT_SECONDS = 30.0
MAX_CHUNK_JOBS = 100_000
# A job's command, as JobSpec checks it (a chunk's `cmds`).
Command = Annotated[str, AfterValidator(check_command)]


async def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


Who = Annotated[Principal, Depends(principal)]
GroupQuery = Annotated[str | None, Query(max_length=MAX_GROUP_CHARS)]
ServiceDep = Annotated[Service, Depends(service_of)]


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSpec] = Field(max_length=1_000_000)
    rerun: bool = Field(default=False, strict=True)  # not 0 or "yes"


class AddResponse(BaseModel):
    added: int
    existed: int
    requeued: int
    ids: list[int]


class Selection(BaseModel):
    """Jobs by id or by group: one or the other."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["group"], "properties": {"group": {"type": "string"}}},
    ]})
    ids: list[Annotated[int, Strict()]] | None = Field(default=None, max_length=1_000_000)
    group: str | None = Field(default=None, max_length=MAX_GROUP_CHARS)


class ActionResponse(BaseModel):
    affected: int
    ids: list[int]


class VersionResponse(BaseModel):
    version: str
    protocol_version: int


# Who may call what is in permissions.POLICY; a route that needs a token documents 401, and
# 403 unless every role may call it.
AUTH = (401, 403)

# Every handler and dependency is `async def`: FastAPI would run a plain `def` in a thread,
# and the service, reactor and store belong to the event loop's thread alone.
# Any request may be refused before it reaches a route, by the guard in front of the app:
# too slow, too large, or from a client sending too many. JsonBodyRoute parses and validates
# a large body in a worker thread, off the event loop.
async def known_query_only(request: Request) -> None:
    """A query parameter the route does not take is refused, not silently ignored (a
    misspelt filter would otherwise list every job)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise InputError(f"unknown query parameter {unknown[0]!r} (this takes: {takes})")


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _query_params(sub)
    return found


router = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize), Depends(known_query_only)],
                   responses=errors(408, 413, 429, 431), route_class=JsonBodyRoute)


@router.get("/version", response_model=VersionResponse)
async def version() -> dict[str, Any]:
    return {"version": __version__, "protocol_version": PROTOCOL_VERSION}


@router.post("/jobs", status_code=201, response_model=AddResponse,
             responses=errors(400, *AUTH, 503))
async def add_jobs(body: AddRequest, who: Who, service: ServiceDep,
                   request: Request) -> dict[str, Any]:
    _check_files_are_theirs(request, who, (entry.get("sha256") for job in body.jobs
                                           for entry in job.files))
    return service.add(body.jobs, rerun=body.rerun, owner=who.name, sees_all=who.sees_all,
                       may_set_caps=allows("PUT", "/api/v1/limits/{name}", who))


# ---- a large add, in chunks (see server/adds.py) -------------------------------------------

BatchId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$",
                                   description="32 hex digits the client draws at random")]


class ChunkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=1_000_000, description="The chunk's place in the add")
    jobs: list[JobSpec] = Field(default_factory=list, max_length=MAX_CHUNK_JOBS,
                                description="The chunk's jobs (or `shared` and `cmds`)")
    shared: JobDefaults | None = Field(default=None, description=(
        "For jobs alike but for their commands: every field but cmd, the same for each"))
    cmds: list[Command] = Field(default_factory=list, max_length=MAX_CHUNK_JOBS,
                                description="With `shared`: one job for each command")

    @model_validator(mode="after")
    def _one_form(self) -> ChunkRequest:
        if bool(self.jobs) == (self.shared is not None) or bool(self.cmds) != (
                self.shared is not None):
            raise PydanticCustomError("value_error", "give jobs, or shared and cmds")
        return self

    def specs(self) -> list[JobSpec] | AlikeJobs:
        return self.jobs or AlikeJobs(self.shared or JobDefaults(), self.cmds)


class ChunkResponse(BaseModel):
    staged: int = Field(description="Jobs the add holds so far")


class CommitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rerun: bool = Field(default=False, strict=True)


@router.post("/adds/{batch}", response_model=ChunkResponse,
             responses=errors(400, *AUTH, 404, 409))
async def stage_chunk(batch: BatchId, body: ChunkRequest, who: Who, service: ServiceDep,
                      request: Request) -> dict[str, Any]:
    """One chunk of a large add: checked as an add checks it, and kept until the commit."""
    specs = body.specs()
    _check_files_are_theirs(request, who, (
        entry.get("sha256") for job in ([specs.spec] if isinstance(specs, AlikeJobs) else specs)
        for entry in job.files))
    return {"staged": ChunkedAdds(service).stage(batch, body.seq, specs, who.name)}


@router.post("/adds/{batch}/commit", status_code=201, response_model=AddResponse,
             responses=errors(400, *AUTH, 404, 503))
async def commit_chunks(batch: BatchId, body: CommitRequest, who: Who,
                        service: ServiceDep) -> dict[str, Any]:
    """The add of every chunk sent, as one: all of it, or (on an error) none."""
    return await ChunkedAdds(service).commit(
        batch, rerun=body.rerun, owner=who.name, sees_all=who.sees_all,
        may_set_caps=allows("PUT", "/api/v1/limits/{name}", who))


@router.delete("/adds/{batch}", response_model=ActionResponse, responses=errors(400, *AUTH))
async def abort_chunks(batch: BatchId, who: Who, service: ServiceDep) -> dict[str, Any]:
    """Drop the chunks of an add that will not be committed."""
    return {"affected": ChunkedAdds(service).abort(batch, who.name), "ids": []}


# ---- arrays, kept as one record each (see server/arrays.py) -------------------------------


class ArrayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: JobSpec = Field(description="Every task's job; each {} in cmd and name becomes the "
                                     "task's number")
    array: str = Field(min_length=1, max_length=4096,
                       description="The numbers, as Slurm's --array: 1-100, 1-100:10, 1,5,9")


class ArrayAdded(BaseModel):
    array: int = Field(description="The array's id")
    tasks: int
    added: int = Field(description="Tasks made into jobs with the add (the rest follow)")
    existed: int
    ids: list[int]


class ArrayInfo(BaseModel):
    id: int
    owner: str
    group: str
    cmd: str
    name: str | None
    tasks: int
    queued_as_jobs: int
    not_yet_jobs: int
    added_at: float
    stopped_at: float | None
    stop_reason: str | None


class ArrayList(BaseModel):
    arrays: list[ArrayInfo]


@router.post("/arrays", status_code=201, response_model=ArrayAdded,
             responses=errors(400, *AUTH, 503))
async def add_array(body: ArrayRequest, who: Who, service: ServiceDep,
                    request: Request) -> dict[str, Any]:
    """One job for each number of `array`, kept as one record; its first tasks are jobs at
    once, the rest are made as workers take them."""
    _check_files_are_theirs(request, who, (entry.get("sha256") for entry in body.job.files))
    return service.arrays.add(body.job, body.array, owner=who.name, sees_all=who.sees_all,
                              may_set_caps=allows("PUT", "/api/v1/limits/{name}", who))


@router.get("/arrays", **answers(ArrayList, *AUTH))
async def list_arrays(who: Who, service: ServiceDep) -> dict[str, Any]:
    return {"arrays": service.arrays.rows(None if who.sees_all else who.name)}


@router.get("/jobs", **answers(JobPage, 400, *AUTH))
async def list_jobs(
    who: Who, service: ServiceDep,
    state: Annotated[list[str] | None, Query(
        max_length=16, description="Any of these states (repeat, or separate with commas)")
    ] = None,
    group: GroupQuery = None,
    name: Annotated[str | None, Query(max_length=MAX_GROUP_CHARS)] = None,
    cmd: Annotated[str | None, Query(max_length=4096,
                                     description="Text the command contains")] = None,
    worker: Annotated[str | None, Query(max_length=128)] = None,
    exit_code: Annotated[int | None, Query(ge=-(2**31), le=2**31 - 1)] = None,
    ended_after: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    ended_before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_INT64,
                                          description="The page after this job id")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    query = JobQuery(states=_states(state or []), group=group, owner=who.scope, name=name,
                     cmd_contains=cmd, worker=worker, exit_code=exit_code,
                     ended_after=ended_after, ended_before=ended_before)
    page, total, next_after = service.page_of_ids(query, after_id=after_id, limit=limit,
                                                  newest_first=order == "desc")
    # Plain JSON, by pydantic-core's encoder: a page of 100,000 jobs skips FastAPI's generic
    # one (documented above), and the standard library's, four times slower.
    if len(page) <= PAGE_SLICE:
        return Response(to_json({"jobs": service.listed(page), "total": total,
                                 "next_after_id": next_after}), media_type="application/json")
    return StreamingResponse(_page_body(service, page, total, next_after),
                             media_type="application/json")


PAGE_SLICE = 5000  # jobs encoded at once in a large page: about 3.6 MB of JSON


async def _page_body(service: Service, page: list[int], total: int | None,
                     next_after: int | None) -> AsyncIterator[bytes]:
    """A large page streamed a slice at a time: the client reads one while the next is
    encoded, the server never holds the whole text, and the loop serves others between
    slices (each job is as it was when its slice was read)."""
    yield b'{"jobs":['
    first = True
    for start in range(0, len(page), PAGE_SLICE):
        rows = to_json(service.listed(page[start:start + PAGE_SLICE]))[1:-1]
        if rows:
            yield rows if first else b"," + rows
            first = False
        await asyncio.sleep(0)
    yield b'],"total":%s,"next_after_id":%s}' % (to_json(total), to_json(next_after))


def _states(values: list[str]) -> tuple[JobState, ...]:
    states = []
    for value in (part.strip() for text in values for part in text.split(",")):
        try:
            states.append(JobState(value))
        except ValueError:
            names = ", ".join(state.value for state in JobState)
            raise InputError(f"state: {value[:40]!r} is not a state ({names})") from None
    return tuple(states)


@router.get("/jobs/{job_id}", **answers(JobDetail, 400, *AUTH, 404))
async def get_job(job_id: int, who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.job(job_id, owner=who.scope)


@router.get("/jobs/{job_id}/logs", **answers(KeptLogs | LiveLogs, 400, *AUTH, 404))
async def get_logs(job_id: int, who: Who, service: ServiceDep,
                   stream: Literal["stdout", "stderr"] = "stdout",
                   offset: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    """The kept head and tail; with `offset`, a running job's live output from there."""
    return await service.logs_from(job_id, stream, offset, owner=who.scope)


ACT_ERRORS = errors(400, *AUTH, 404, 409, 503)


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


class PurgeRequest(BaseModel):
    """Ended jobs in bulk: those in these states, ended before a time, of a group."""

    model_config = ConfigDict(extra="forbid")
    state: list[JobState] = Field(min_length=1, max_length=3)
    ended_before: float | None = Field(default=None, allow_inf_nan=False)
    group: str | None = Field(default=None, max_length=MAX_GROUP_CHARS)


@router.post("/jobs/purge", response_model=ActionResponse, responses=ACT_ERRORS)
async def purge_jobs(body: PurgeRequest, who: Who, service: ServiceDep) -> dict[str, Any]:
    """Remove ended jobs with their output (history), straight from the database."""
    return service.purge(body.state, ended_before=body.ended_before, group=body.group,
                         owner=who.scope)


class ModifyRequest(Selection):
    """Jobs by id or by group, and what to change of them."""

    changes: JobChanges


@router.patch("/jobs/{job_id}", response_model=ActionResponse, responses=ACT_ERRORS)
async def modify_job(job_id: int, body: JobChanges, who: Who, service: ServiceDep
                     ) -> dict[str, Any]:
    """Change a job that is not running (wr's `mod`): only the fields given."""
    return service.modify([job_id], None, body, owner=who.scope,
                          may_set_caps=allows("PUT", "/api/v1/limits/{name}", who))


@router.post("/jobs/modify", response_model=ActionResponse, responses=ACT_ERRORS)
async def modify_jobs(body: ModifyRequest, who: Who, service: ServiceDep) -> dict[str, Any]:
    """Change many jobs at once, all or none: by ids (none may be running), or a group's
    members that are waiting, queued, delayed, failed or cancelled."""
    if (body.ids is None) == (body.group is None):
        raise InputError("give either ids or a group")
    return service.modify(body.ids, body.group, body.changes, owner=who.scope,
                          may_set_caps=allows("PUT", "/api/v1/limits/{name}", who))


@router.get("/status", **answers(StatusCounts, 400, *AUTH))
async def status(who: Who, service: ServiceDep, group: GroupQuery = None,
                 wait: Annotated[float | None, Query(ge=0)] = None,
                 since: int | None = None) -> dict[str, Any]:
    if wait and since is not None:
        await service.wait_for_change(since, min(wait, MAX_WAIT_SECONDS))
    return service.status(group, owner=who.scope)


class LimitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cap: int | None = Field(ge=0, le=1_000_000_000, strict=True)  # null: no cap; not false


LimitName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]


@router.get("/limits", **answers(LimitList, *AUTH))
async def list_limits(who: Who, service: ServiceDep) -> dict[str, Any]:
    return {"limits": service.reactor.limits()}


@router.get("/limits/{name}", **answers(LimitInfo, 400, *AUTH))
async def get_limit(name: LimitName, who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.limit(name)


@router.put("/limits/{name}", **answers(LimitInfo, 400, *AUTH, 503))
async def set_limit(name: LimitName, body: LimitRequest, who: Who,
              service: ServiceDep) -> dict[str, Any]:
    return service.set_limit(name, body.cap)


@router.get("/server", **answers(ServerInfo, *AUTH))
async def server_info(who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.info(__version__)


@router.post("/server/drain", **answers(Draining, *AUTH, 503))
async def drain(who: Who, service: ServiceDep) -> dict[str, Any]:
    return service.drain()


@router.post("/server/stop", **answers(Stopping, *AUTH))
async def stop(who: Who, service: ServiceDep) -> dict[str, Any]:
    # Answer first, then stop: the reply must leave before the server does.
    asyncio.get_running_loop().call_later(0.2, service.shutdown, "asked to stop")
    return {"stopping": True}


@router.get("/server/backup", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **errors(*AUTH, 503)})
async def backup(who: Who, service: ServiceDep) -> FileResponse:
    handle = tempfile.NamedTemporaryFile(prefix="shoal-backup-", suffix=".db", delete=False)  # noqa: SIM115
    handle.close()
    path = Path(handle.name)
    await service.backup(path)
    return FileResponse(path, media_type="application/octet-stream", filename="shoal.db",
                        background=BackgroundTask(path.unlink, missing_ok=True))


# ---- ensembles and their files ------------------------------------------------------------


Sha256 = Annotated[str, Field(pattern=SHA256_RE.pattern, description="SHA-256, in lower-case hex")]
Sha256Path = Annotated[str, PathParam(pattern=SHA256_RE.pattern,
                                      description="SHA-256, in lower-case hex")]


class MissingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: list[Sha256] = Field(max_length=1_000_000)


# Files are kept once by content, and recorded for each name that uploaded them: a user is
# told only about their own uploads (never whether someone else has a file), and may name in
# jobs and ensembles only files they uploaded. An admin sees the whole store.


def _uploader(who: Principal) -> str | None:
    return None if who.sees_all else who.name


def _check_files_are_theirs(request: Request, who: Principal,
                            shas: Iterable[str | None]) -> None:
    named = [sha for sha in dict.fromkeys(shas) if sha is not None]
    if not named:
        return
    missing = request.app.state.blobs.missing(named, owner=_uploader(who))
    if missing:
        raise InputError(f"files: {len(missing)} not uploaded with this token's name, "
                         f"e.g. {missing[0]}; upload them first (PUT /api/v1/blobs/SHA256)")


@router.post("/blobs/missing", **answers(MissingBlobs, 400, *AUTH))
async def blobs_missing(body: MissingRequest, who: Who,
                        request: Request) -> dict[str, Any]:
    """Which of these files the caller has not uploaded (an admin: which the server lacks)."""
    return {"missing": request.app.state.blobs.missing(body.sha256, owner=_uploader(who))}


@router.put("/blobs/{sha256}", status_code=201,
            **answers(StoredBlob, 400, *AUTH, 503, status=201))
async def put_blob(sha256: Sha256Path, who: Who, request: Request) -> dict[str, Any]:
    size = await request.app.state.blobs.put_stream(sha256, request.stream(), owner=who.name)
    return {"sha256": sha256, "size": size}


@router.get("/blobs/{sha256}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **errors(400, *AUTH, 404)})
async def get_blob(sha256: Sha256Path, request: Request, who: Who) -> FileResponse:
    if who.role == WORKER and not request.app.state.service.blob_in_use(sha256):
        raise Forbidden("workers may fetch only the files of jobs handed to workers")
    return FileResponse(request.app.state.blobs.open_path(sha256),
                        media_type="application/octet-stream")


@router.post("/ensembles", status_code=201,
             **answers(EnsembleRun, 400, *AUTH, status=201))
async def start_ensemble(body: EnsembleRequest, who: Who,
                         request: Request) -> dict[str, Any]:
    _check_files_are_theirs(request, who, (entry.sha256 for entries in body.manifests.values()
                                           for entry in entries))
    runner = request.app.state.ensembles
    run_id = runner.start(body, owner=who.name)
    return runner.snapshot(run_id)


@router.get("/ensembles", **answers(EnsembleRunList, 400, *AUTH))
async def list_ensembles(who: Who, request: Request,
                         name: Annotated[str | None, Query(max_length=256)] = None
                         ) -> dict[str, Any]:
    return {"runs": request.app.state.ensembles.list_runs(name, owner=who.scope)}


@router.get("/ensembles/{run_id}", **answers(EnsembleRun, 400, *AUTH, 404))
async def get_ensemble(run_id: int, who: Who, request: Request,
                       wait: Annotated[float | None, Query(ge=0)] = None,
                       since: int | None = None) -> dict[str, Any]:
    runner = request.app.state.ensembles
    if wait and since is not None:
        await runner.wait_for_change(run_id, since, min(wait, MAX_WAIT_SECONDS),
                                     owner=who.scope)
    return runner.snapshot(run_id, owner=who.scope)


@router.post("/ensembles/{run_id}/cancel", **answers(Cancelled, 400, *AUTH, 404))
async def cancel_ensemble(run_id: int, who: Who, request: Request) -> dict[str, Any]:
    request.app.state.ensembles.cancel(run_id, owner=who.scope)
    return {"cancelled": True}


@router.get("/workers", **answers(WorkerList, *AUTH))
async def workers(who: Who, service: ServiceDep) -> dict[str, Any]:
    return {"workers": service.workers()}


# ---- tokens and identity -------------------------------------------------------------------




def _token_name(name: str) -> str:
    # fullmatch: the pattern's `$` would let a trailing newline through.
    if not TOKEN_NAME_RE.fullmatch(name):
        raise PydanticCustomError("token_name", TOKEN_NAME_RULE)
    return name


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["admin", "user", "worker", "metrics"]
    name: Annotated[str, AfterValidator(_token_name)] = Field(
        json_schema_extra={"pattern": TOKEN_NAME_RE.pattern},
        description=f"{TOKEN_NAME_RULE}; not starting with 'default-' (the server's own)")


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


@router.get("/whoami", response_model=WhoAmI, responses=errors(401))
async def whoami(who: Who) -> dict[str, Any]:
    return {"name": who.name, "role": who.role}


@router.post("/tokens", status_code=201, response_model=TokenResponse,
             responses=errors(400, *AUTH, 409, 503))
async def create_token(body: TokenRequest, who: Who, request: Request) -> dict[str, Any]:
    token = request.app.state.tokens.create(body.role, body.name)
    advertised: str | None = request.app.state.advertised_url
    connection = None if advertised is None else format_connection_string(
        advertised, token, request.app.state.ca_fingerprint)
    return {"name": body.name, "role": body.role, "token": token, "connection": connection}


@router.get("/tokens", response_model=TokenList, responses=errors(*AUTH))
async def list_tokens(who: Who, request: Request) -> dict[str, Any]:
    return {"tokens": request.app.state.tokens.listing()}


@router.delete("/tokens/{name}", response_model=TokenInfo,
                responses=errors(400, *AUTH, 404, 503))
async def revoke_token(name: Annotated[str, PathParam(max_length=64)], who: Who,
                       request: Request) -> dict[str, Any]:
    tokens = request.app.state.tokens
    tokens.revoke(name)
    return next(t for t in reversed(tokens.listing()) if t["name"] == name)


# `response_class=Response` (no media type of its own): the errors stay documented as JSON.
@router.get("/ca", response_class=Response, responses={
    200: {"description": "The CA certificate, PEM",
          "content": {"application/x-pem-file": {"schema": {"type": "string"}}}},
    **errors(404)})
async def ca_certificate(request: Request) -> Response:
    """The server's own CA certificate (public), which clients pin by its fingerprint."""
    pem: bytes | None = request.app.state.ca_pem
    if pem is None:
        raise NotFound("this server does not use its own certificate authority")
    return Response(pem, media_type="application/x-pem-file")

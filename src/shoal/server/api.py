"""HTTP routes under /api/v1. Thin: validate, call the service, shape the answer."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from shoal import __version__
from shoal.core.errors import AuthError, InputError
from shoal.core.models import JobSpec, JobState
from shoal.core.protocol import PROTOCOL_VERSION
from shoal.server.auth import ADMIN, WORKER
from shoal.server.ensembles import EnsembleRequest
from shoal.server.service import Service

MAX_WAIT_SECONDS = 30.0


class Forbidden(AuthError):
    """A valid token whose role may not do this."""


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def require_client(request: Request) -> str:
    """Any role but a worker's: workers may only use the worker channel."""
    role = request.app.state.tokens.role_of(bearer_token(request))
    if role is None:
        raise AuthError("a valid token is required (Authorization: Bearer TOKEN)")
    if role == WORKER:
        raise Forbidden("worker tokens may only use the worker channel")
    return str(role)


async def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


Client = Annotated[str, Depends(require_client)]
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


# Every handler and dependency is `async def`: FastAPI would run a plain `def` in a thread,
# and the service, reactor and store belong to the event loop's thread alone.
router = APIRouter(prefix="/api/v1")


@router.get("/version", response_model=VersionResponse)
async def version() -> dict[str, Any]:
    return {"version": __version__, "protocol_version": PROTOCOL_VERSION}


@router.post("/jobs", status_code=201, response_model=AddResponse)
async def add_jobs(body: AddRequest, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return service.add(body.jobs, rerun=body.rerun)


@router.get("/jobs")
async def list_jobs(_role: Client, service: ServiceDep, state: JobState | None = None,
              group: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
              offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    return service.jobs(state, group, limit, offset)


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return service.job(job_id)


@router.get("/jobs/{job_id}/logs")
async def get_logs(job_id: int, _role: Client, service: ServiceDep,
                   stream: Literal["stdout", "stderr"] = "stdout",
                   offset: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    """The kept head and tail; with `offset`, a running job's live output from there."""
    if offset is not None:
        chunk = await service.peek(job_id, stream, offset)
        if chunk is not None and chunk.found:
            return {"job_id": job_id, "stream": stream, "state": "running", "live": True,
                    "offset": chunk.offset, "data": chunk.data,
                    "next_offset": chunk.next_offset if chunk.next_offset is not None
                    else chunk.offset + len(chunk.data.encode()),
                    "total_bytes": chunk.total_bytes}
    return {**service.logs(job_id, stream), "live": False}


def _act(action: str, body: Selection, service: Service) -> dict[str, Any]:
    if (body.ids is None) == (body.group is None):
        raise InputError("give either ids or a group")
    affected = service.act(action, body.ids, body.group)
    return {"affected": len(affected), "ids": affected}


@router.post("/jobs/kill", response_model=ActionResponse)
async def kill_jobs(body: Selection, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return _act("kill", body, service)


@router.post("/jobs/retry", response_model=ActionResponse)
async def retry_jobs(body: Selection, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return _act("retry", body, service)


@router.post("/jobs/remove", response_model=ActionResponse)
async def remove_jobs(body: Selection, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return _act("remove", body, service)


@router.get("/status")
async def status(_role: Client, service: ServiceDep, group: str | None = None,
                 wait: Annotated[float | None, Query(ge=0)] = None,
                 since: int | None = None) -> dict[str, Any]:
    if wait and since is not None:
        await service.wait_for_change(since, min(wait, MAX_WAIT_SECONDS))
    return service.status(group)


class LimitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cap: int | None = Field(ge=0, le=1_000_000_000)


LimitName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]


@router.get("/limits")
async def list_limits(_role: Client, service: ServiceDep) -> dict[str, Any]:
    return {"limits": service.reactor.limits()}


@router.get("/limits/{name}")
async def get_limit(name: LimitName, _role: Client, service: ServiceDep) -> dict[str, Any]:
    return service.limit(name)


@router.put("/limits/{name}")
async def set_limit(name: LimitName, body: LimitRequest, _role: Client,
              service: ServiceDep) -> dict[str, Any]:
    return service.set_limit(name, body.cap)


@router.get("/server")
async def server_info(_role: Client, service: ServiceDep) -> dict[str, Any]:
    return service.info(__version__)


@router.post("/server/drain")
async def drain(_role: Client, service: ServiceDep) -> dict[str, Any]:
    return service.drain()


@router.post("/server/stop")
async def stop(_role: Client, service: ServiceDep) -> dict[str, Any]:
    # Answer first, then stop: the reply must leave before the server does.
    asyncio.get_running_loop().call_later(0.2, service.shutdown, "asked to stop")
    return {"stopping": True}


@router.get("/server/backup", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def backup(role: Client, service: ServiceDep) -> FileResponse:
    if role != ADMIN:
        raise Forbidden("only an admin token may take a backup")
    handle = tempfile.NamedTemporaryFile(prefix="shoal-backup-", suffix=".db", delete=False)  # noqa: SIM115
    handle.close()
    path = Path(handle.name)
    service.backup(path)
    return FileResponse(path, media_type="application/octet-stream", filename="shoal.db",
                        background=BackgroundTask(path.unlink, missing_ok=True))


# ---- ensembles and their files ------------------------------------------------------------


async def require_worker_or_admin(request: Request) -> str:
    """Blobs are fetched by workers staging files, and by admins."""
    role = request.app.state.tokens.role_of(bearer_token(request))
    if role is None:
        raise AuthError("a valid token is required (Authorization: Bearer TOKEN)")
    if role not in (ADMIN, WORKER):
        raise Forbidden("only workers and admins may fetch files")
    return str(role)


class MissingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: list[str] = Field(max_length=1_000_000)


@router.post("/blobs/missing")
async def blobs_missing(body: MissingRequest, _role: Client,
                        request: Request) -> dict[str, Any]:
    return {"missing": request.app.state.blobs.missing(body.sha256)}


@router.put("/blobs/{sha256}", status_code=201)
async def put_blob(sha256: str, _role: Client, request: Request) -> dict[str, Any]:
    size = await request.app.state.blobs.put_stream(sha256, request.stream())
    return {"sha256": sha256, "size": size}


@router.get("/blobs/{sha256}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def get_blob(sha256: str, request: Request,
                   _role: Annotated[str, Depends(require_worker_or_admin)]) -> FileResponse:
    return FileResponse(request.app.state.blobs.open_path(sha256),
                        media_type="application/octet-stream")


@router.post("/ensembles", status_code=201)
async def start_ensemble(body: EnsembleRequest, _role: Client,
                         request: Request) -> dict[str, Any]:
    runner = request.app.state.ensembles
    run_id = runner.start(body)
    return runner.snapshot(run_id)


@router.get("/ensembles")
async def list_ensembles(_role: Client, request: Request,
                         name: str | None = None) -> dict[str, Any]:
    return {"runs": request.app.state.ensembles.list_runs(name)}


@router.get("/ensembles/{run_id}")
async def get_ensemble(run_id: int, _role: Client, request: Request,
                       wait: Annotated[float | None, Query(ge=0)] = None,
                       since: int | None = None) -> dict[str, Any]:
    runner = request.app.state.ensembles
    if wait and since is not None:
        await runner.wait_for_change(run_id, since, min(wait, MAX_WAIT_SECONDS))
    return runner.snapshot(run_id)


@router.post("/ensembles/{run_id}/cancel")
async def cancel_ensemble(run_id: int, _role: Client, request: Request) -> dict[str, Any]:
    request.app.state.ensembles.cancel(run_id)
    return {"cancelled": True}


@router.get("/workers")
async def workers(_role: Client, service: ServiceDep) -> dict[str, Any]:
    return {"workers": service.workers()}

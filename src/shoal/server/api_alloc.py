"""HTTP routes under /api/v1/alloc: allocation queues (workers through Slurm or the user's
own engine commands). Admin only: a queue runs commands on the server's host as its user.
Thin: validate, call the allocation manager (server/allocations.py), shape the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from shoal.home import format_connection_string, read_connection_file
from shoal.server.allocations import AllocationManager, check_settings
from shoal.server.api_answers import (
    AllocLog,
    AllocQueueInfo,
    AllocQueueList,
    AllocRemoved,
    answers,
    errors,
)
from shoal.server.permissions import authorize, principal

AUTH = (401, 403)
QueueName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
MAX_ARGS = 256
MAX_ARG_CHARS = 4096
MAX_COMMAND_CHARS = 65536


class EngineCommandsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    submit: str = Field(min_length=1, max_length=MAX_COMMAND_CHARS)
    status: str = Field(min_length=1, max_length=MAX_COMMAND_CHARS)
    cancel: str = Field(min_length=1, max_length=MAX_COMMAND_CHARS)


class AllocQueueRequest(BaseModel):
    """A new allocation queue: how many workers at most, in allocations of how many, for how
    long, and the engine's own arguments (after `--` on the command line)."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["slurm", "command"]
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    max_workers: int = Field(ge=1, le=100_000, strict=True)
    workers_per_alloc: int = Field(default=1, ge=1, le=10_000, strict=True)
    backlog: int = Field(default=1, ge=1, le=1000, strict=True)
    time_limit_seconds: float = Field(gt=0, le=366 * 86400, allow_inf_nan=False)
    idle_timeout_seconds: float = Field(default=300.0, gt=0, le=366 * 86400,
                                        allow_inf_nan=False)
    cores: int | None = Field(default=None, ge=1, le=1 << 20, strict=True)
    memory_bytes: int | None = Field(default=None, ge=1 << 20, le=1 << 62, strict=True)
    gpus: int | None = Field(default=None, ge=0, le=1024, strict=True)
    engine_args: list[Annotated[str, Field(max_length=MAX_ARG_CHARS)]] = Field(
        default_factory=list, max_length=MAX_ARGS)
    commands: EngineCommandsRequest | None = None


def manager_of(request: Request) -> AllocationManager:
    manager: AllocationManager = request.app.state.allocations
    return manager


Manager = Annotated[AllocationManager, Depends(manager_of)]
Who = Annotated[Any, Depends(principal)]

router = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)],
                   responses=errors(408, 413, 429, 431))


@router.post("/alloc", status_code=201, **answers(AllocQueueInfo, 400, *AUTH, 409, 503,
                                                  status=201))
async def add_queue(body: AllocQueueRequest, who: Who, manager: Manager) -> dict[str, Any]:
    settings = body.model_dump(exclude={"provider", "name"})
    check_settings(body.provider, settings)
    return manager.add(body.provider, body.name, settings)


@router.get("/alloc", **answers(AllocQueueList, *AUTH))
async def list_queues(who: Who, manager: Manager) -> dict[str, Any]:
    return {"queues": manager.listing()}


@router.get("/alloc/{name}", **answers(AllocQueueInfo, 400, *AUTH, 404))
async def queue_info(name: QueueName, who: Who, manager: Manager) -> dict[str, Any]:
    return manager.info(name)


@router.get("/alloc/{name}/log", **answers(AllocLog, 400, *AUTH, 404))
async def queue_log(name: QueueName, who: Who, manager: Manager,
                    allocation: Annotated[int | None, Query(ge=1)] = None,
                    stream: Literal["stdout", "stderr"] = "stderr") -> dict[str, Any]:
    """The end of an allocation's output file (the queue's last allocation by default)."""
    return manager.log(name, allocation, stream)


@router.post("/alloc/{name}/pause", **answers(AllocQueueInfo, 400, *AUTH, 404, 503))
async def pause_queue(name: QueueName, who: Who, manager: Manager) -> dict[str, Any]:
    return manager.pause(name)


@router.post("/alloc/{name}/resume", **answers(AllocQueueInfo, 400, *AUTH, 404, 503))
async def resume_queue(name: QueueName, who: Who, manager: Manager) -> dict[str, Any]:
    return manager.resume(name)


@router.delete("/alloc/{name}", **answers(AllocRemoved, 400, *AUTH, 404, 409, 503))
async def remove_queue(name: QueueName, who: Who, manager: Manager,
                       force: bool = False) -> dict[str, Any]:
    """Cancel the queue's allocations and forget it; one with running allocations only
    with `force`."""
    return await manager.remove(name, force)


def install(app: FastAPI, service: Any) -> AllocationManager:
    """The routes, and the manager the app's lifespan starts and stops."""
    home = Path(service.store.path).parent

    def join() -> str | None:
        advertised: str | None = app.state.advertised_url
        connection = read_connection_file(home)
        if advertised is None or connection is None or connection.worker_token is None:
            return None
        return format_connection_string(advertised, connection.worker_token,
                                        app.state.ca_fingerprint)

    manager = AllocationManager(service, home, join)
    app.state.allocations = manager
    app.include_router(router)
    return manager

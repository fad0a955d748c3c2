"""Workers through any engine, with the user's own three commands (PBS, LSF, SGE, HTCondor,
a cloud API). Each runs under `bash -c`; the contract (docs/deployment.md, "Other engines"):

submit  `bash -c SUBMIT shoal-submit ARGS...`, ARGS being what followed `--` on `shoal alloc
        add command`. Environment: SHOAL_ALLOC_NAME (the queue), SHOAL_ALLOC_DIR (a private
        directory for this allocation's files: write the engine's output there as `stdout`
        and `stderr` and `shoal alloc log` shows it), SHOAL_WORKERS (how many workers to
        start), SHOAL_WORKER_COMMAND (the shell command that starts one worker),
        SHOAL_JOIN_FILE, SHOAL_TIME_LIMIT and SHOAL_IDLE_TIMEOUT (whole seconds, empty if
        none), SHOAL_CORES, SHOAL_MEMORY_MB and SHOAL_GPUS (empty if not given). Exit 0 and
        print the engine's id of the allocation as the last line of standard output.
status  `bash -c STATUS shoal-status ID` (also SHOAL_ENGINE_ID=ID). Print one of `queued`,
        `running`, `finished` or `failed` as the first word of the last line, and optionally
        a reason after it. A non-zero exit means "cannot tell now"; it is asked again.
cancel  `bash -c CANCEL shoal-cancel ID` (also SHOAL_ENGINE_ID=ID). Exit 0 once the
        allocation is cancelled or already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.provision.base import (
    Allocation,
    AllocationState,
    AllocationStatus,
    ProvisionError,
    SubmitRequest,
)
from shoal.provision.engine import (
    JOIN_FILE,
    error_line,
    last_line,
    prepare_work_dir,
    quoted,
    run,
    worker_argv,
    write_private,
)

MAX_ENGINE_ID_CHARS = 200
STATUS_CONCURRENCY = 8
_WORDS = {"queued": AllocationState.QUEUED, "pending": AllocationState.QUEUED,
          "running": AllocationState.RUNNING,
          "finished": AllocationState.FINISHED, "completed": AllocationState.FINISHED,
          "done": AllocationState.FINISHED, "failed": AllocationState.FAILED}


@dataclass(frozen=True)
class EngineCommands:
    submit: str
    status: str
    cancel: str


class CommandProvider:
    name = "command"

    def __init__(self, commands: EngineCommands, env: Mapping[str, str] | None = None,
                 executable: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time):
        self.commands = commands
        self.env = dict(env or {})
        self.executable = list(executable) if executable else None
        self.clock = clock

    def submit_env(self, request: SubmitRequest, work_dir: Path) -> dict[str, str]:
        def seconds(value: float | None) -> str:
            return "" if value is None else str(int(value))

        worker = worker_argv(request, work_dir / JOIN_FILE, self.executable)
        return {**self.env, **request.env,
                "SHOAL_ALLOC_NAME": request.name, "SHOAL_ALLOC_DIR": str(work_dir),
                "SHOAL_WORKERS": str(request.workers), "SHOAL_WORKER_COMMAND": quoted(worker),
                "SHOAL_JOIN_FILE": str(work_dir / JOIN_FILE),
                "SHOAL_TIME_LIMIT": seconds(request.time_limit_seconds),
                "SHOAL_IDLE_TIMEOUT": seconds(request.idle_timeout_seconds),
                "SHOAL_CORES": "" if request.cores is None else str(request.cores),
                "SHOAL_MEMORY_MB": "" if request.memory_bytes is None
                else str(request.memory_bytes >> 20),
                "SHOAL_GPUS": "" if request.gpus is None else str(request.gpus)}

    async def submit(self, request: SubmitRequest) -> Allocation:
        work_dir = prepare_work_dir(request)
        code, out, err = await run(
            ["bash", "-c", self.commands.submit, "shoal-submit", *request.engine_args],
            what="the submit command", env=self.submit_env(request, work_dir), cwd=work_dir)
        _keep(work_dir / "submit.out", out)
        _keep(work_dir / "submit.err", err)
        if code != 0:
            raise ProvisionError(error_line("the submit command", code, err, out))
        engine_id = last_line(out)
        if not engine_id or len(engine_id) > MAX_ENGINE_ID_CHARS or not engine_id.isprintable():
            raise ProvisionError("the submit command printed no allocation id (its last line "
                                 "of output must be the engine's id)")
        return Allocation(provider=self.name, engine_id=engine_id, name=request.name,
                          workers=request.workers, submitted_at=self.clock(),
                          work_dir=str(work_dir))

    async def status(self, allocations: Sequence[Allocation]) -> dict[str, AllocationStatus]:
        gate = asyncio.Semaphore(STATUS_CONCURRENCY)

        async def one(engine_id: str) -> tuple[str, AllocationStatus]:
            async with gate:
                code, out, err = await run(
                    ["bash", "-c", self.commands.status, "shoal-status", engine_id],
                    what="the status command", env={**self.env, "SHOAL_ENGINE_ID": engine_id})
            if code != 0:
                raise ProvisionError(error_line(f"the status command for {engine_id}", code,
                                                err, out))
            return engine_id, parse_status(last_line(out), engine_id)

        ids = sorted({a.engine_id for a in allocations})
        return dict(await asyncio.gather(*(one(engine_id) for engine_id in ids)))

    async def cancel(self, allocation: Allocation) -> None:
        code, out, err = await run(
            ["bash", "-c", self.commands.cancel, "shoal-cancel", allocation.engine_id],
            what="the cancel command", env={**self.env, "SHOAL_ENGINE_ID": allocation.engine_id})
        if code != 0:
            raise ProvisionError(error_line(f"the cancel command for {allocation.engine_id}",
                                            code, err, out))


def parse_status(line: str, engine_id: str) -> AllocationStatus:
    word, _, reason = line.strip().partition(" ")
    state = _WORDS.get(word.lower())
    if state is None:
        raise ProvisionError(f"the status command for {engine_id} printed {line[:100]!r}; "
                             "expected queued, running, finished or failed")
    return AllocationStatus(state, reason.strip()[:500] or None)


def _keep(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # only for the user's reading
        write_private(path, text)

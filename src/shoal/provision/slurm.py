"""Workers through Slurm: `sbatch` a script that starts one worker per node, `squeue` to see
how the allocations do, `scancel` to end one.

Each allocation keeps its files in its own directory (the server's
$SHOAL_HOME/alloc/QUEUE/N/): `submit.sh` (the script given to sbatch), `job-id`, `stdout` and
`stderr` (the workers' logs), and `join` (the connection string, private). The directory
must be on a file system the nodes share with the server, as home directories are.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
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

SCRIPT_FILE = "submit.sh"
JOB_ID_FILE = "job-id"

# squeue's %T, by what it means for the workers of the allocation.
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED", "RESIZING"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
_ENDED = {"COMPLETED", "CANCELLED", "TIMEOUT", "PREEMPTED"}
# anything else (FAILED, NODE_FAIL, BOOT_FAIL, OUT_OF_MEMORY, DEADLINE, ...) is a failure


def slurm_time(seconds: float) -> str:
    """sbatch's --time as D-HH:MM:SS, rounded up to a whole minute (Slurm's unit)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00"


class SlurmProvider:
    """`env`: added to the environment of sbatch, squeue and scancel (SLURM_CONF, ...)."""

    name = "slurm"

    def __init__(self, env: Mapping[str, str] | None = None,
                 executable: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time, cancel_grace_seconds: float = 20.0):
        self.cancel_grace_seconds = cancel_grace_seconds
        self.env = dict(env or {})
        self.executable = list(executable) if executable else None
        self.clock = clock

    def script(self, request: SubmitRequest, work_dir: Path) -> str:
        worker = quoted(worker_argv(request, work_dir / JOIN_FILE, self.executable))
        lines = ["#!/bin/bash",
                 f"# A shoal allocation of queue {request.name}: {request.workers} worker(s), "
                 "one a node.",
                 f"# Submitted by the shoal server; its files are in {work_dir}.",
                 "set -u"]
        if request.workers == 1:
            lines.append(f"exec {worker}")
        else:
            lines.append('exec srun --nodes="$SLURM_JOB_NUM_NODES" '
                         '--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
                         f"--kill-on-bad-exit=0 {worker}")
        return "\n".join(lines) + "\n"

    def sbatch_argv(self, request: SubmitRequest, work_dir: Path) -> list[str]:
        argv = ["sbatch", "--parsable", f"--job-name=shoal-{request.name}",
                f"--nodes={request.workers}", "--ntasks-per-node=1",
                f"--chdir={work_dir}", f"--output={work_dir / 'stdout'}",
                f"--error={work_dir / 'stderr'}"]
        if request.time_limit_seconds:
            argv.append(f"--time={slurm_time(request.time_limit_seconds)}")
        if request.cores is not None:
            argv.append(f"--cpus-per-task={request.cores}")
        if request.memory_bytes is not None:
            argv.append(f"--mem={max(1, request.memory_bytes >> 20)}M")
        if request.gpus:
            argv.append(f"--gpus-per-node={request.gpus}")
        # The user's own arguments last: where they repeat one of the above, theirs wins.
        return [*argv, *request.engine_args, str(work_dir / SCRIPT_FILE)]

    async def submit(self, request: SubmitRequest) -> Allocation:
        work_dir = prepare_work_dir(request)
        try:
            write_private(work_dir / SCRIPT_FILE, self.script(request, work_dir), 0o700)
        except OSError as exc:
            raise ProvisionError(f"{work_dir}: cannot write the script ({exc.strerror})") from None
        code, out, err = await run(self.sbatch_argv(request, work_dir), what="sbatch",
                                   env={**self.env, **request.env}, cwd=work_dir)
        if code != 0:
            raise ProvisionError(error_line("sbatch", code, err, out))
        job_id = last_line(out).split(";")[0].strip()
        if not job_id.isdigit():
            raise ProvisionError(f"sbatch said {last_line(out)[:200]!r}, not a job id")
        with contextlib.suppress(OSError):  # the id is in the store as well
            write_private(work_dir / JOB_ID_FILE, job_id + "\n", 0o644)
        return Allocation(provider=self.name, engine_id=job_id, name=request.name,
                          workers=request.workers, submitted_at=self.clock(),
                          work_dir=str(work_dir))

    async def status(self, allocations: Sequence[Allocation]) -> dict[str, AllocationStatus]:
        if not allocations:
            return {}
        ids = sorted({a.engine_id for a in allocations}, key=int)
        argv = ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
                "--format=%i|%T|%r"]
        code, out, err = await run(argv, what="squeue", env=self.env)
        seen: dict[str, AllocationStatus] = {}
        if code != 0:
            if "invalid job id" not in err.lower():
                raise ProvisionError(error_line("squeue", code, err, out))
        else:
            for line in out.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 2 and parts[0] in ids:
                    seen[parts[0]] = _status(parts[1], parts[2] if len(parts) > 2 else "")
        gone = AllocationStatus(AllocationState.FINISHED, "no longer known to Slurm")
        return {job_id: seen.get(job_id, gone) for job_id in ids}

    async def cancel(self, allocation: Allocation) -> None:
        """SIGTERM to the batch step alone, the worker (srun passes it on to the workers
        of a larger allocation): each hands its running jobs back to the server, which runs
        them again elsewhere at once, and exits. Slurm's own cancel, which would kill the
        jobs' processes under the workers (and so fail the jobs), comes only after
        `cancel_grace_seconds`, or at once for an allocation not started yet."""
        job_id = allocation.engine_id
        code, _, _ = await run(["scancel", "--batch", "--signal=TERM", job_id],
                               what="scancel", env=self.env)
        if code == 0:
            deadline = self.clock() + self.cancel_grace_seconds
            while self.clock() < deadline:
                status = (await self.status([allocation]))[job_id]
                if status.state in (AllocationState.FINISHED, AllocationState.FAILED):
                    return
                await asyncio.sleep(0.5)
        code, out, err = await run(["scancel", job_id], what="scancel", env=self.env)
        if code != 0 and not any(gone in err.lower() for gone in ("invalid job id",
                                                                  "already complet")):
            raise ProvisionError(error_line("scancel", code, err, out))


def _status(state: str, reason: str) -> AllocationStatus:
    state = state.strip().upper()
    reason = reason.strip()
    said = state if reason in ("", "None", "(null)") else f"{state} ({reason})"
    if state in _WAITING:
        return AllocationStatus(AllocationState.QUEUED, None if reason in ("", "None")
                                else reason)
    if state in _RUNNING:
        return AllocationStatus(AllocationState.RUNNING)
    if state in _ENDED:
        return AllocationStatus(AllocationState.FINISHED, said)
    return AllocationStatus(AllocationState.FAILED, said)

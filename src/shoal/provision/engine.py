"""What the batch-engine providers (slurm, command) share: the worker command line an
allocation runs, its private files, and running an engine's command without blocking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from shoal.provision.base import ProvisionError, SubmitRequest

COMMAND_TIMEOUT_SECONDS = 60.0
MAX_OUTPUT_BYTES = 1 << 20
JOIN_FILE = "join"


def shoal_executable() -> list[str]:
    """How a node runs this shoal: the `shoal` script beside this Python (a venv on a shared
    file system), else this Python with the CLI module."""
    beside = Path(sys.executable).with_name("shoal")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("shoal")
    if found:
        return [found]
    return [sys.executable, "-m", "shoal.cli.main"]


def worker_time_limit(seconds: float) -> float:
    """A worker stops a little before its allocation does, to hand back what still runs."""
    return max(1.0, seconds - min(30.0, seconds / 10))


def worker_argv(request: SubmitRequest, join_file: Path,
                executable: Sequence[str] | None = None) -> list[str]:
    """One worker of the allocation: joined through the private file, stopping when idle
    and before the allocation's end, saying how it was started."""
    argv = [*(executable or shoal_executable()), "worker", "--join-file", str(join_file)]
    if request.started_by:
        argv += ["--started-by", request.started_by]
    if request.idle_timeout_seconds:
        argv += ["--exit-when-idle", f"{request.idle_timeout_seconds:g}"]
    if request.time_limit_seconds:
        argv += ["--time-limit", f"{worker_time_limit(request.time_limit_seconds):g}"]
    if request.cores is not None:
        argv += ["--cores", str(request.cores)]
    if request.memory_bytes is not None:
        argv += ["--memory", f"{max(1, request.memory_bytes >> 20)}M"]
    if request.gpus is not None:
        argv += ["--gpus", str(request.gpus)]
    return [*argv, *request.worker_args]


def prepare_work_dir(request: SubmitRequest) -> Path:
    """The allocation's directory (private) with the join file the workers read."""
    if request.work_dir is None:
        raise ProvisionError(f"{request.name}: no directory to keep the allocation's files in")
    work_dir = Path(request.work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(work_dir, 0o700)
        write_private(work_dir / JOIN_FILE, request.join + "\n")
    except OSError as exc:
        raise ProvisionError(f"{work_dir}: cannot write the allocation's files "
                             f"({exc.strerror})") from None
    return work_dir


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def quoted(argv: Sequence[str]) -> str:
    return shlex.join(argv)


async def run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, stdin: str | None = None,
              timeout: float = COMMAND_TIMEOUT_SECONDS) -> tuple[int, str, str]:
    """Run an engine's command off the event loop's back: (exit code, stdout, stderr).
    A command that cannot start, or outlasts `timeout`, is a ProvisionError naming `what`."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None
            else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    except OSError as exc:
        raise ProvisionError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(
            process.communicate(None if stdin is None else stdin.encode()), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise ProvisionError(f"{what}: {argv[0]} did not answer within {timeout:g}s") from None
    return (process.returncode or 0, out[:MAX_OUTPUT_BYTES].decode(errors="replace"),
            err[:MAX_OUTPUT_BYTES].decode(errors="replace"))


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def error_line(what: str, code: int, err: str, out: str = "") -> str:
    said = last_line(err) or last_line(out) or "no message"
    return f"{what} exited with {code}: {said[:500]}"

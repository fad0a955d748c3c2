"""Small builders shared by the unit tests of the pure core."""

from __future__ import annotations

from shoal.core.models import Job, JobSpec, JobState
from shoal.core.protocol import PROTOCOL_VERSION, AttemptResult, Register, Resources


def make_job(job_id: int = 1, *, state: JobState = JobState.QUEUED, priority: int = 0,
             cores: int = 1, memory_bytes: int = 0, retries: int = 0) -> Job:
    return Job(id=job_id, cmd=f"echo {job_id}", cwd="/tmp", env={}, group="g",
               priority=priority, retries=retries, cores=cores, memory_bytes=memory_bytes,
               time_limit_seconds=None, state=state, queued_at=float(job_id))


def spec(cmd: str, **fields: object) -> JobSpec:
    return JobSpec(cmd=cmd, cwd="/tmp", **fields)  # type: ignore[arg-type]


def register(name: str = "w1", cores: int = 2, running: list | None = None,
             instance_secret: str | None = None) -> Register:
    """A worker's register; its secret follows its name unless given (one process a name)."""
    return Register(protocol_version=PROTOCOL_VERSION, name=name, host=f"{name}.local",
                    resources=Resources(cores=cores, memory_bytes=8 << 30),
                    instance_secret=instance_secret or name.encode().hex().ljust(32, "0"),
                    running=running or [])


def result(job_id: int, lease_id: int, *, exit_code: int = 0, outcome: str = "exited",
           at: float = 10.0) -> AttemptResult:
    return AttemptResult(job_id=job_id, lease_id=lease_id, outcome=outcome,  # type: ignore[arg-type]
                         exit_code=exit_code, started_at=at - 1, ended_at=at, wall_seconds=1.0,
                         cpu_seconds=0.5, peak_rss_bytes=1 << 20, pid=4242)

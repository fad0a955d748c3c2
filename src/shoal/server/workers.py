"""What the server knows of each worker: what it offers and what its running jobs hold."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from shoal.core.models import Job
from shoal.server.scheduler import Capacity


def worker_identity(credential: str, instance_secret: str) -> str:
    """Who a worker is, for claiming attempts: its token (a digest of it) and the secret it
    proves itself with (kept across its restarts, worker/identity.py), as
    `TOKEN-PART.PROCESS-PART`. Another worker, or the same secret with another token, differs."""
    token_part = hashlib.sha256(credential.encode()).hexdigest()[:32]
    process_part = hashlib.sha256(f"{credential}\0{instance_secret}".encode()).hexdigest()
    return f"{token_part}.{process_part}"


@dataclass(slots=True)
class WorkerState:
    id: int
    name: str
    host: str
    cores: int
    memory_bytes: int
    connected_at: float
    last_seen: float
    identity: str = ""  # worker_identity(): whose attempts it may claim
    address: str | None = None  # where its connection came from
    gpus: list[str] = field(default_factory=list)
    custom: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    containment: str | None = None  # as the worker said: cgroup-v1, cgroup-v2, process-group
    provider: str | None = None  # how it was started: "ssh", "slurm:<alloc>"; None: by hand
    deadline: float | None = None  # when it stops (an allocation's end); None: no limit
    connected: bool = True
    accepting: bool = True  # False once the worker said it is stopping
    used_cores: int = 0
    used_memory_bytes: int = 0
    used_custom: dict[str, int] = field(default_factory=dict)
    gpus_held: dict[int, list[str]] = field(default_factory=dict)  # job id -> its GPU ids
    job_ids: set[int] = field(default_factory=set)

    def hold(self, job: Job, gpu_ids: list[str]) -> None:
        if job.id in self.job_ids:
            return
        self.job_ids.add(job.id)
        self.used_cores += job.cores
        self.used_memory_bytes += job.memory_bytes
        for name, amount in job.resources.items():
            self.used_custom[name] = self.used_custom.get(name, 0) + amount
        if gpu_ids:
            self.gpus_held[job.id] = list(gpu_ids)

    def release(self, job: Job) -> None:
        if job.id not in self.job_ids:
            return
        self.job_ids.discard(job.id)
        self.used_cores -= job.cores
        self.used_memory_bytes -= job.memory_bytes
        for name, amount in job.resources.items():
            self.used_custom[name] -= amount
        self.gpus_held.pop(job.id, None)

    def release_all(self) -> None:
        self.job_ids.clear()
        self.gpus_held.clear()
        self.used_custom.clear()
        self.used_cores = self.used_memory_bytes = 0

    def capacity(self) -> Capacity:
        held = {gpu for ids in self.gpus_held.values() for gpu in ids}
        return Capacity(
            worker_id=self.id, name=self.name, labels=self.labels,
            total_cores=self.cores, total_memory_bytes=self.memory_bytes,
            free_cores=self.cores - self.used_cores,
            free_memory_bytes=self.memory_bytes - self.used_memory_bytes,
            total_gpus=len(self.gpus), free_gpus=[g for g in self.gpus if g not in held],
            total_custom=dict(self.custom),
            free_custom={name: amount - self.used_custom.get(name, 0)
                         for name, amount in self.custom.items()},
            deadline=self.deadline,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.name, "host": self.host, "address": self.address,
            "connected": self.connected,
            "accepting": self.accepting,
            "labels": dict(self.labels),
            "containment": self.containment,
            "provider": self.provider,
            "deadline": self.deadline,
            "resources": {"cores": self.cores, "memory_bytes": self.memory_bytes,
                          "gpus": list(self.gpus), "custom": dict(self.custom)},
            "used": {"cores": self.used_cores, "memory_bytes": self.used_memory_bytes,
                     "gpus": sum(len(ids) for ids in self.gpus_held.values()),
                     "custom": {k: v for k, v in self.used_custom.items() if v}},
            "running": len(self.job_ids), "connected_at": self.connected_at,
            "last_seen": self.last_seen,
        }

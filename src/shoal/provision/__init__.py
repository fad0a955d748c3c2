"""Starting and stopping workers elsewhere: one `WorkerProvider` protocol, several engines.

The autoscale policy (server/autoscale.py) decides *when*; a provider only knows *how*: submit
an allocation of workers, ask how allocations are doing, cancel one. SSH, Slurm and the
user's own commands each implement it in a module of their own.
"""

from shoal.provision.base import (
    Allocation,
    AllocationState,
    AllocationStatus,
    ProvisionError,
    SubmitRequest,
    WorkerProvider,
)

__all__ = [
    "Allocation",
    "AllocationState",
    "AllocationStatus",
    "ProvisionError",
    "SubmitRequest",
    "WorkerProvider",
]

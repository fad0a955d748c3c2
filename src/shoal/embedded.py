"""The embedded default: `shoal run FILE -j N` runs a file's commands on this machine.

The same service and worker code as a real deployment, in one process and one event loop: the
worker is linked to the service by plain calls instead of a WebSocket. State lives in `.shoal/`
beside FILE (or `$SHOAL_HOME` when set), so a second run skips what is done and retries failures.
It holds jobs' environments and output, so it is kept as a server's home is: the directories
0700, the database and every file beside it 0600.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.server.service import Service

if TYPE_CHECKING:
    from shoal.provision.hosts import SshHost
    from shoal.provision.temporary import TemporaryWorkers
    from shoal.runfile.listen import Listener, ListenSettings

LOCAL_WORKER = "local"


@dataclass
class RunReport:
    """What a run did, for the summary."""

    total: int
    skipped_done: int
    done: int = 0
    failed: int = 0
    interrupted: bool = False
    wall_seconds: float = 0.0
    failures: list[dict[str, object]] = field(default_factory=list)
    slowest: list[dict[str, object]] = field(default_factory=list)
    skipped_failed: int = 0  # --resume: failed in an earlier run, not run again
    failures_more: int = 0  # failures beyond those listed
    not_run: int = 0  # cancelled when the run stopped (--halt, a bad line of a stream)
    halted: str | None = None  # the --halt rule that stopped the run
    halted_on_success: bool = False
    input_error: str | None = None  # a bad line of a stream: what came before it ran
    state_dir: str | None = None
    numbered_by: str = "line"  # what a job's "line" counts: "line" or "argument set"
    rerun_resumes: bool = True  # run again, it finishes what is left (a file; not stdin)

    @property
    def succeeded(self) -> bool:
        if self.interrupted or self.input_error:
            return False
        # A success rule of --halt that was met is a success, whatever failed before it
        # (GNU parallel exits 0 then too).
        return self.halted_on_success or (not self.failed and self.done == self.total)


def state_dir(path: Path) -> Path:
    home = os.environ.get("SHOAL_HOME")
    return Path(home).expanduser() if home else path.resolve().parent / ".shoal"


def group_for(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@+-]", "_", path.name)[:128] or "run"


def job_defaults(path: Path) -> dict[str, object]:
    return {"cwd": os.getcwd(), "group": group_for(path)}


async def _ssh_workers(service: Service, home: Path, hosts: Sequence[SshHost],
                       listen: ListenSettings | None) -> tuple[TemporaryWorkers, Listener]:
    """Listen for workers, and start them on `hosts` over SSH, in the background."""
    from shoal.provision.temporary import TemporaryWorkers
    from shoal.runfile.listen import ListenSettings, start_listening

    listener = await start_listening(service, home, listen or ListenSettings("0.0.0.0", 0))
    workers = TemporaryWorkers(hosts, listener.join, label="shoal run")
    workers.start()
    return workers, listener

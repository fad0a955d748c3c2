"""A real one-node Slurm for tests: munged, slurmctld and slurmd from Debian's packages,
started directly (no systemd) with a generated slurm.conf, all state under a test's
directory, the node on 127.0.0.1. Clients find it through SLURM_CONF."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.ports import free_ports
from tests.system import require, require_root_tool

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")


def require_slurm() -> None:
    for tool in DAEMONS:
        require_root_tool(tool)
    for tool in CLIENTS:
        require(shutil.which(tool) is not None, tool)


class Slurm:
    """`cpus`: what the node claims (more than the machine has is fine: Slurm is told to
    believe its configuration), so several allocations fit on it at once."""

    def __init__(self, root: Path, cpus: int = 8, partition: str = "debug"):
        self.root = root
        self.cpus = cpus
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        root = self.root
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(f"""\
ClusterName=shoaltest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed with it
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **self.env})

    def start(self, timeout: float = 60.0) -> None:
        require_slurm()
        self.write_config()
        root = self.root
        self._spawn("munged", ["munged", "-F", "-f", f"--socket={root}/munge.sock",
                               f"--key-file={root}/munge.key",
                               f"--log-file={root}/log/munged.log",
                               f"--pid-file={root}/munged.pid",
                               f"--seed-file={root}/munged.seed"])
        self._wait(lambda: (root / "munge.sock").exists(), "munged's socket", timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, "the Slurm node to be idle", timeout)

    def _node_idle(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited: {self.logs()}")
        result = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True,
                                text=True, env={**os.environ, **self.env}, timeout=10)
        return result.returncode == 0 and result.stdout.strip().startswith(("idle", "mix"))

    @staticmethod
    def _wait(predicate: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def squeue(self) -> list[tuple[str, str]]:
        """(job id, state) of every job Slurm still knows, ended ones included."""
        result = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T"],
                                capture_output=True, text=True,
                                env={**os.environ, **self.env}, timeout=30)
        return [tuple(line.split("|", 1)) for line in result.stdout.split()  # type: ignore[misc]
                if "|" in line]

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        # Jobs first (their workers), then the daemons.
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user=root"], capture_output=True,
                           env={**os.environ, **self.env}, timeout=30, check=False)
            time.sleep(0.5)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

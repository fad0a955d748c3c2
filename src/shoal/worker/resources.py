"""What this host can offer: the cores this process may run on, the memory it may use and the
GPUs it may hand out."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from pathlib import Path

import psutil

from shoal.core.protocol import Resources

_log = logging.getLogger(__name__)

_CGROUP_ROOT = Path("/sys/fs/cgroup")
NVIDIA_SMI_TIMEOUT_SECONDS = 10.0
# Values that CUDA and batch systems use for "no device at all".
_NO_GPU_MARKERS = frozenset({"-1", "NoDevFiles"})


def detect_resources(*, with_gpus: bool = True) -> Resources:
    """Cores from the CPU affinity mask; memory from the host total, lowered by a cgroup limit;
    GPUs from `detect_gpus` unless `with_gpus` is False (the caller offers its own list)."""
    cores = len(os.sched_getaffinity(0))
    memory_bytes = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    if limit is not None:
        memory_bytes = min(memory_bytes, limit)
    gpus = detect_gpus() if with_gpus else []
    return Resources(cores=cores, memory_bytes=memory_bytes, gpus=gpus)


@functools.cache
def machine_memory() -> int:
    """What `detect_resources` finds of memory, looked up once a process (`shoal run` asks
    at each check of its input and again for its worker)."""
    return detect_resources(with_gpus=False).memory_bytes


def detect_gpus() -> list[str]:
    """The GPU ids this worker may hand out; none if they cannot be found out.

    A `CUDA_VISIBLE_DEVICES` in the worker's environment is an allocation made for it (by a
    batch system or by hand), so exactly those ids are offered. Otherwise every GPU that
    `nvidia-smi` lists is offered, by index.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_visible_devices(visible)
    return _nvidia_smi_indexes()


def parse_visible_devices(value: str) -> list[str]:
    """The ids in a CUDA_VISIBLE_DEVICES value, as CUDA reads it: up to the first invalid one."""
    ids: list[str] = []
    for item in value.split(","):
        device = item.strip()
        if not device or device in _NO_GPU_MARKERS or device.startswith("-"):
            break
        if device not in ids:
            ids.append(device)
    return ids


def _nvidia_smi_indexes() -> list[str]:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:  # the common case on a machine without GPUs: nothing to say
        return []
    try:
        completed = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _log.info("no GPUs offered: nvidia-smi could not run (%s)", type(exc).__name__)
        return []
    if completed.returncode != 0:  # e.g. no driver loaded, or no devices found
        _log.info("no GPUs offered: nvidia-smi exited with status %d", completed.returncode)
        return []
    indexes = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    if not all(index.isdigit() for index in indexes):
        _log.info("no GPUs offered: nvidia-smi printed something other than GPU indexes")
        return []
    return list(dict.fromkeys(indexes))


def cgroup_memory_limit() -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors, if any is set."""
    limits = [limit for path in _limit_files() if (limit := _read_limit(path)) is not None]
    return min(limits) if limits else None


def _limit_files() -> list[Path]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2: limits apply from every ancestor
            files += _along_path(_CGROUP_ROOT, cgroup_path, "memory.max")
        elif "memory" in controllers.split(","):  # cgroup v1 memory controller
            files += _along_path(_CGROUP_ROOT / "memory", cgroup_path, "memory.limit_in_bytes")
    return files


def _along_path(mount: Path, cgroup_path: str, filename: str) -> list[Path]:
    """The limit file at the mount root and at each level down to the process's own cgroup.

    Inside a cgroup namespace the mount root already is the process's cgroup, so the root is
    always looked at, and deeper levels only where they exist.
    """
    parts = [part for part in cgroup_path.split("/") if part]
    return [mount.joinpath(*parts[:depth], filename) for depth in range(len(parts) + 1)]


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2) means no limit
        return None
    value = int(text)
    return value if value < 2**62 else None  # v1 writes a huge page-rounded number for "none"

"""Job containment: each job in a cgroup of its own, so that every process it starts can be
found, killed and measured, including those that left its process group (``setsid``).

`Containment.detect` looks at what this machine allows and picks one of

- ``cgroup-v2``: a unified hierarchy at /sys/fs/cgroup. Jobs go in children of a parent cgroup
  the worker creates under its own cgroup; killing writes ``cgroup.kill`` (Linux 5.14), or
  freezes the cgroup and SIGKILLs every pid in it. Peak memory is ``memory.peak`` where the
  memory controller could be enabled for the parent.
- ``cgroup-v1``: the v1 ``freezer`` and ``memory`` controllers (either is enough). A kill
  freezes the job, SIGKILLs every pid and thaws it, so nothing can fork away in between; peak
  memory is ``memory.max_usage_in_bytes``.

and returns None when there is neither (no cgroup file system, no permission to create
cgroups): the worker then kills process groups only, as it always did.

With v1 a job is born in its cgroups: the spawning thread moves itself in (v1 moves single
threads through ``tasks``), forks the job, and moves back. v2 moves whole processes only, so
there the job's pid is written right after the spawn; the job has then only just exec'd bash.

Under v1 an ended job's cgroups are kept for the next job when nothing is left in them (no
process, under `REUSE_BELOW_BYTES` still charged to its memory): its peak is reset instead of
a `mkdir` and `rmdir` per controller, which cost a short job's worker more than all its other
cgroup work. What the earlier jobs left charged (a few hundred KiB of cache) may count in the
next one's peak. (v2 resets `memory.peak` only for the descriptor that wrote it: there every
job gets new cgroups.)

Standard library only: the keeper imports `kill_cgroup` too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
FREEZE_WAIT_SECONDS = 1.0
REUSE_BELOW_BYTES = 1 << 20  # what may stay charged to a v1 memory cgroup kept for reuse
IDLE_KEPT = 64  # cgroups kept for reuse, at most
_V1_CONTROLLERS = ("freezer", "memory")


class JobCgroup:
    """One job's cgroups: one directory under v2, one per controller under v1."""

    def __init__(self, version: int, paths: dict[str, Path]) -> None:
        self.version = version
        self.paths = paths  # controller ("unified" for v2) -> directory
        self._born_inside = False  # set once a spawn was done from inside every one
        self._emptied = False  # kill() found no process left
        self._tasks_fds: dict[str, int] | None = None
        # Memory files read (and under v1 written) at every job's end, opened once: a kept
        # cgroup serves many jobs. (Not `cgroup.procs`: v1 keeps the list an open file read
        # first.)
        self._memory_fds: dict[str, int] = {}
        # As strings, made once: a job's few cgroup operations run on the event loop.
        self._dirs = [str(path) for path in paths.values()]
        memory = paths.get("memory" if version == 1 else "unified")
        self._peak_file = None if memory is None else str(memory) + (
            "/memory.max_usage_in_bytes" if version == 1 else "/memory.peak")

    @property
    def directories(self) -> list[str]:
        return list(self._dirs)

    @contextlib.contextmanager
    def spawning(self, home_tasks: dict[str, int]) -> Iterator[None]:
        """While inside, a process forked by the calling thread is born in this job's cgroups
        (v1; under v2 this does nothing and `adopt` must follow the spawn). `home_tasks`:
        controller -> the descriptor of the worker's own `tasks` file, to move back."""
        if self.version != 1:
            yield
            return
        tid = b"%d" % threading.get_native_id()
        moved: list[str] = []
        try:
            for controller, fd in self._tasks().items():
                if controller not in home_tasks:
                    continue  # no way back: `adopt` moves the job in after the spawn
                with contextlib.suppress(OSError):
                    os.write(fd, tid)
                    moved.append(controller)
            self._born_inside = len(moved) == len(self.paths)
            yield
        finally:
            for controller in moved:
                with contextlib.suppress(OSError):
                    os.write(home_tasks[controller], tid)

    def _tasks(self) -> dict[str, int]:
        """controller -> the file that moves a thread in (v1's `tasks`) or a process (v2's
        `cgroup.procs`), opened once: kept cgroups serve many spawns."""
        if self._tasks_fds is None:
            name = "/tasks" if self.version == 1 else "/cgroup.procs"
            self._tasks_fds = {}
            for controller, directory in zip(self.paths, self._dirs, strict=True):
                with contextlib.suppress(OSError):
                    self._tasks_fds[controller] = os.open(directory + name,
                                                          os.O_WRONLY | os.O_CLOEXEC)
        return self._tasks_fds

    def entry_fds(self) -> list[int]:
        """Descriptors a child writes "0" to, to move itself into these cgroups before it
        execs; `entered` once it has."""
        return list(self._tasks().values())

    def entered(self, count: int) -> None:
        """A child started with `count` of `entry_fds` is in these cgroups (in all of them,
        if that is all of them; else `adopt` must follow)."""
        self._born_inside = count == len(self.paths)

    def adopt(self, pid: int) -> None:
        """Put `pid` in this job's cgroups if it is not there yet (v2, or a v1 move that
        failed)."""
        if self._born_inside:
            return
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                if str(pid) not in _read(path / "cgroup.procs").split():
                    _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.paths.values():
            found.update(_pids(path))
        return sorted(found)

    def signal(self, signal_number: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal_number)

    @property
    def procs_file(self) -> str:
        """Where one of its cgroups lists its processes: born in all of them, a job has none
        left if this is empty."""
        return self._dirs[0] + "/cgroup.procs"

    def kill(self, *, known_empty: bool = False) -> None:
        """SIGKILL every process in the job's cgroups (none if `known_empty`: `procs_file`
        was read empty since the job's leader ended)."""
        # Born in all of them, its processes are in each: one empty list says none is left.
        if self._born_inside and (known_empty or not _pids(self._dirs[0])):
            self._emptied = True
            return
        kill_cgroup(self._dirs)

    def peak_memory_bytes(self) -> int | None:
        if self._peak_file is None:
            return None
        try:
            return int(os.pread(self._memory_fd(self._peak_file), 64, 0))
        except (OSError, ValueError):
            return None

    def _memory_fd(self, path: str) -> int:
        fd = self._memory_fds.get(path)
        if fd is None:  # v1 resets the peak by writing it
            writable = self.version == 1 and path == self._peak_file
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
            self._memory_fds[path] = fd
        return fd

    @property
    def emptied(self) -> bool:
        """Whether every process of the job is known to be gone: born in its cgroups, and
        none left in them when it was killed."""
        return self._born_inside and self._emptied

    @property
    def contained(self) -> bool:
        """Whether the job's processes are known to be in all of its cgroups."""
        return self._born_inside

    def reset_for_reuse(self) -> bool:
        """Whether another job may have these cgroups (v1): no process left, almost nothing
        charged to its memory; if so its peak starts again from what is."""
        if self.version != 1:
            return False
        if not self._emptied and any(_pids(directory) for directory in self._dirs):
            return False
        memory = self.paths.get("memory")
        if memory is not None and self._peak_file is not None:  # v1's max_usage_in_bytes
            try:
                usage = self._memory_fd(f"{memory}/memory.usage_in_bytes")
                if int(os.pread(usage, 64, 0)) >= REUSE_BELOW_BYTES:
                    return False
                os.pwrite(self._memory_fd(self._peak_file), b"0", 0)
            except (OSError, ValueError):
                return False
        self._born_inside = self._emptied = False
        return True

    def close(self) -> None:
        """Close the files kept open (before the directories go, or to hold fewer
        descriptors: the next job in these cgroups opens them again)."""
        for fd in [*(self._tasks_fds or {}).values(), *self._memory_fds.values()]:
            os.close(fd)
        self._tasks_fds = None
        self._memory_fds.clear()

    def remove(self) -> bool:
        """Remove the directories; False if a process is still in one (try again later)."""
        self.close()
        removed = True
        for directory in self._dirs:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


class Containment:
    """Per-job cgroups under parents this worker created; see the module's docstring."""

    def __init__(self, version: int, parents: dict[str, Path], home: dict[str, Path]) -> None:
        self.version = version
        self.parents = parents  # controller -> the worker's parent cgroup for its jobs
        self._leftovers: list[JobCgroup] = []
        self._idle: list[JobCgroup] = []  # empty, reset: the next jobs' (see the module doc)
        # v1: the `tasks` files of the worker's own cgroups (`home`: controller -> directory),
        # opened once; a spawn moves its thread back there.
        self._home_tasks: dict[str, int] = {}
        if version == 1:
            for controller in parents:
                with contextlib.suppress(OSError):
                    self._home_tasks[controller] = os.open(f"{home[controller]}/tasks",
                                                           os.O_WRONLY | os.O_CLOEXEC)

    def spawning(self, cgroup: JobCgroup) -> contextlib.AbstractContextManager[None]:
        """While inside, a process forked by the calling thread is born in `cgroup` (v1)."""
        return cgroup.spawning(self._home_tasks)

    @property
    def name(self) -> str:
        return f"cgroup-v{self.version}"

    @classmethod
    def detect(cls, prefix: str = "shoal-worker-", root: Path = CGROUP_ROOT
               ) -> Containment | None:
        """The containment this process may use, with a parent cgroup named `prefix` and
        this process's pid created for it, or None (then jobs are contained by their process
        group only). Empty parents left by processes that are gone (a worker killed with
        SIGKILL) are removed on the way."""
        tag = f"{prefix}{os.getpid()}"
        own = _own_cgroups()
        if (root / "cgroup.controllers").exists():  # the unified hierarchy alone: v2
            home = {"unified": _inside(root, own.get("", "/"))}
            _sweep(home, prefix)
            parents = _make_parents(home, tag, probe_threads=False)
            if not parents:
                return None
            with contextlib.suppress(OSError):  # only possible where the parent is empty
                _write(home["unified"] / "cgroup.subtree_control", "+memory")
            with contextlib.suppress(OSError):
                _write(parents["unified"] / "cgroup.subtree_control", "+memory")
            return cls(2, parents, home)
        home = {controller: _inside(root / controller, own[controller])
                for controller in _V1_CONTROLLERS
                if controller in own and (root / controller / "tasks").exists()}
        _sweep(home, prefix)
        parents = _make_parents(home, tag, probe_threads=True)
        if not parents:
            return None
        return cls(1, parents, {controller: home[controller] for controller in parents})

    def create(self, name: str) -> JobCgroup | None:
        """A job's cgroups (ones kept from an earlier job keep that job's `name`), or None if
        they cannot be made (the job then runs uncontained)."""
        if self._idle:
            return self._idle.pop()
        self.collect()
        paths: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            path = Path(f"{parent}/{name}")
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except OSError:
                JobCgroup(self.version, paths).remove()
                return None
            paths[controller] = path
        return JobCgroup(self.version, paths)

    def discard(self, cgroup: JobCgroup) -> None:
        """Keep a job's cgroups for the next job, or remove them now, or later if its last
        processes are still dying."""
        if len(self._idle) < IDLE_KEPT and cgroup.reset_for_reuse():
            self._idle.append(cgroup)
            return
        if not cgroup.remove():
            self._leftovers.append(cgroup)

    def collect(self) -> None:
        """Remove cgroups whose processes have since gone."""
        if self._leftovers:
            self._leftovers = [cgroup for cgroup in self._leftovers if not cgroup.remove()]

    def close(self) -> None:
        """Kill what is left in the job cgroups and remove them and the parents."""
        for cgroup in self._idle + self._leftovers:
            cgroup.close()  # the files they keep open, before the directories go
        self._leftovers.clear()
        self._idle.clear()
        deadline = time.monotonic() + 2.0
        for parent in self.parents.values():
            for child in _children(parent):
                kill_cgroup([str(child)])
        while True:
            remaining = [child for parent in self.parents.values() for child in _children(parent)]
            for child in remaining:
                with contextlib.suppress(OSError):
                    child.rmdir()
            if not any(child.exists() for child in remaining) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                parent.rmdir()
        for fd in self._home_tasks.values():
            os.close(fd)
        self._home_tasks.clear()


def kill_cgroup(directories: list[str]) -> None:
    """SIGKILL every process in these cgroup directories (one job's), so that none escapes
    by forking: v2 writes cgroup.kill; otherwise the cgroup is frozen first if it can be."""
    paths = [Path(directory) for directory in directories]
    if not any(_pids(path) for path in paths):  # the usual case once a job has ended
        return
    for path in paths:
        if (path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(path / "cgroup.kill", "1")
                return
    frozen = [path for path in paths if _freeze(path, True)]
    try:
        for _ in range(100):  # unfrozen, a fork may land between reading the list and the kill
            pids = {pid for path in paths for pid in _pids(path)}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if frozen:
                break
    finally:
        for path in frozen:
            _freeze(path, False)


def _freeze(path: Path, frozen: bool) -> bool:
    """Freeze (v1 freezer.state, v2 cgroup.freeze) or thaw; True once frozen as asked."""
    if (path / "freezer.state").exists():
        state_file, value, done = path / "freezer.state", "FROZEN" if frozen else "THAWED", None
    elif (path / "cgroup.freeze").exists():
        state_file, value, done = path / "cgroup.freeze", "1" if frozen else "0", "events"
    else:
        return False
    try:
        _write(state_file, value)
    except OSError:
        return False
    if not frozen:
        return True
    deadline = time.monotonic() + FREEZE_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            if done is None:
                if _read(state_file).strip() == "FROZEN":
                    return True
            elif "frozen 1" in _read(path / "cgroup.events"):
                return True
        except OSError:
            return False
        time.sleep(0.001)
    return False  # still freezing: killing pid by pid still works, only less surely


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 unified hierarchy)."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            found[""] = path
        for controller in controllers.split(","):
            if controller:
                found[controller] = path
    return found


def _inside(mount: Path, cgroup_path: str) -> Path:
    """The directory of `cgroup_path` under `mount`; the mount itself inside a cgroup
    namespace, where the path shown may not exist below it."""
    path = mount.joinpath(*[part for part in cgroup_path.split("/") if part])
    return path if path.is_dir() else mount


def _make_parents(home: dict[str, Path], tag: str, *, probe_threads: bool) -> dict[str, Path]:
    """Create `tag` under each of the worker's own cgroups; keep those it may use: under v1,
    where the calling thread could move in and back out (what every spawn does)."""
    parents: dict[str, Path] = {}
    tid = str(threading.get_native_id())
    for controller, own in home.items():
        parent = own / tag
        try:
            parent.mkdir(exist_ok=True)
            if probe_threads:
                _write(parent / "tasks", tid)
                _write(own / "tasks", tid)
            elif not os.access(parent / "cgroup.procs", os.W_OK):
                raise PermissionError(errno.EACCES, "cgroup.procs")
        except OSError:
            with contextlib.suppress(OSError):
                _write(own / "tasks", tid)
            with contextlib.suppress(OSError):
                parent.rmdir()
            continue
        parents[controller] = parent
    return parents


def _sweep(home: dict[str, Path], prefix: str) -> None:
    """Remove `prefix`PID parents whose process is gone, if nothing runs in them any more.
    (One with processes may belong to a worker in another pid namespace: left alone.)"""
    for own in home.values():
        try:
            entries = [entry for entry in own.iterdir() if entry.name.startswith(prefix)]
        except OSError:
            continue
        for parent in entries:
            pid = parent.name[len(prefix):]
            if not pid.isdigit() or _process_exists(int(pid)):
                continue
            children = _children(parent)
            if any(_pids(child) for child in [parent, *children]):
                continue
            with contextlib.suppress(OSError):
                for child in children:
                    child.rmdir()
                parent.rmdir()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _children(parent: Path) -> list[Path]:
    try:
        return [entry for entry in parent.iterdir() if entry.is_dir()]
    except OSError:
        return []


def _pids(path: Path | str) -> list[int]:
    try:
        return [int(pid) for pid in _read(f"{path}/cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def _read(path: Path | str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        while len(data) >= 65536 and (more := os.read(fd, 65536)):  # a long list of pids
            data += more
        return data.decode()
    finally:
        os.close(fd)


def _write(path: Path | str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

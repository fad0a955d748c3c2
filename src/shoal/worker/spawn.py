"""Start a job's process: ``bash -c CMD`` in a session of its own, output to spool files.

A session of its own makes the process group id the job's pid, so the whole job can be
signalled at once. Its environment is the worker's (as it was when the Spawner was made) plus the
assignment's, ``SHOAL_JOB_ID``, ``SHOAL_ATTEMPT_LEASE``, ``SHOAL_SLOT`` (1..N, unique among the
worker's running jobs: GNU parallel's ``{%}``; a job queued behind another in the native
launcher takes its slot, any other the lowest free) and ``SHOAL_GPUS`` (the GPU
ids granted, comma-separated, empty if none). stdin is /dev/null; stdout and stderr go to files
in the spool directory (see ``capture``), so a running job costs the event loop nothing.

A command that needs no shell starts its program directly (see ``direct``), either way.
Where the native launcher is built (and not turned off), a job not held at a start line is
handed to it (`native_start` says what it execs, or that it cannot; see ``launcher``).
Otherwise a job in the worker's own
directory and not held at a start line is started
with ``posix_spawn`` (glibc's vfork-style clone: no copy of the worker's page tables, no
Python in the child), which costs the worker a fraction of a ``fork``. Other jobs go through
``subprocess.Popen``, which can change directory and pass a gate's descriptors. Descriptors
this process inherited from its own parent are made close-on-exec once, so ``posix_spawn``
hands a job nothing but its stdin, stdout and stderr, as Popen's ``close_fds`` does.

GPUs: a job granted GPUs gets ``CUDA_VISIBLE_DEVICES`` set to exactly their ids. On a worker
that offers GPUs, a job granted none gets ``CUDA_VISIBLE_DEVICES=""``, so it cannot use a GPU
the scheduler has given to another job; either value overrides one in the job's own env. On a
worker that offers none, the variable is left as the worker and the job have it.

Open files: a worker holds a few descriptors per running job (its pidfd, its cgroups' files),
so it raises its own soft limit to the hard one (`shoal run -j 500` under the usual 1024
would fail to start jobs). Its jobs still get the limit the worker was started with: the soft
limit is put back for the instant of each spawn, which the child inherits. (A job started
through Popen needs a free descriptor below that limit for Popen's own pipe, so beyond about
that many descriptors in use those still fail to start; posix_spawn needs none.)
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from shoal.core.protocol import Assignment
from shoal.worker.capture import open_spool_file
from shoal.worker.direct import Recent, direct_environment, direct_program, direct_start
from shoal.worker.gate import Gate

# Python ignores these, and an ignored signal stays ignored across an exec: a job gets them
# back at their defaults, as Popen's restore_signals gives them (`yes | head -1` ends by SIGPIPE).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_MOST_OPEN_FILES = 1 << 20  # what the soft limit is raised to at most (Linux's nr_open)


_Limits = tuple[int, int]  # (soft, hard)


def raise_open_files_limit() -> tuple[_Limits, _Limits] | None:
    """Raise this process's soft limit on open files to its hard limit; (the limits it had,
    the limits it has now) if it changed them, else None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard,
                                                                         _MOST_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return (soft, hard), (target, hard)


class Process(Protocol):
    """A started job's leader: a Popen, or a SpawnedProcess."""

    pid: int
    returncode: int | None

    def wait(self) -> int: ...


class SpawnedProcess:
    """A child started by posix_spawn; the runner reaps it (wait4 on its pidfd)."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _close_inherited_on_exec() -> None:
    """Descriptors above 2 that this process inherited stay out of its jobs."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


@dataclass(slots=True)
class _Template:
    """A job's environment but for shoal's own variables (and `_`): as given to bash, and
    as bash gives it to a program it starts (None: every command goes through bash)."""

    envp: list[bytes]
    direct_envp: list[bytes] | None
    directories: tuple[bytes, ...] | None  # where a program's name is searched


class NativeStart(NamedTuple):
    """A job as the native launcher execs it (see launcher.py)."""

    path: bytes
    argv: list[bytes]
    envp: list[bytes]
    fallback: tuple[bytes, list[bytes], list[bytes]] | None  # bash -c, if `path` fails
    rlimit: tuple[int, int] | None  # the job's limit on open files, if not the worker's
    cwd: bytes | None  # None: the worker's own directory


class Spawner:
    def __init__(self, *, hide_unassigned_gpus: bool) -> None:
        self._hide_unassigned_gpus = hide_unassigned_gpus
        self._bash = shutil.which("bash") or "/bin/bash"  # resolved once: one exec per spawn
        self._base_env = dict(os.environb)  # bytes, so Popen need not encode it for every job
        self._bash_path = os.fsencode(self._bash)
        # Made once a second for each directory and environment, not for every job.
        self._templates: Recent[tuple[str, tuple[tuple[str, str], ...], bool], _Template] = \
            Recent(1.0, 64)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.getcwd()
        self._posix_spawn = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")
        if self._posix_spawn:
            _close_inherited_on_exec()
        # (the jobs' limits, the worker's own), if they differ: see the module's docstring.
        self._open_files = raise_open_files_limit()

    def spawn(
        self,
        assignment: Assignment,
        cwd: str,
        stdout_path: str,
        stderr_path: str,
        slot: int,
        gate: Gate | None = None,
    ) -> Process:
        """Start the command (held at its start line if `gate` is given)."""
        env = self._job_env(assignment, slot)
        stdout_fd = open_spool_file(stdout_path)
        try:
            stderr_fd = open_spool_file(stderr_path)
            try:
                # The child gets its own copies of the descriptors; the parent's are not needed.
                with self._jobs_open_files(self._devnull, stdout_fd, stderr_fd):
                    return self._start(assignment.cmd, env, cwd, stdout_fd, stderr_fd, gate)
            finally:
                os.close(stderr_fd)
        finally:
            os.close(stdout_fd)

    def _job_env(self, assignment: Assignment, slot: int) -> dict[bytes, bytes]:
        return {**self._base_env,
                **{os.fsencode(name): os.fsencode(value)
                   for name, value in assignment.env.items()},
                **dict(self._own_variables(assignment, slot))}

    def _own_variables(self, assignment: Assignment, slot: int) -> list[tuple[bytes, bytes]]:
        """What shoal sets in every job's environment (see the module's docstring)."""
        gpus = os.fsencode(",".join(assignment.gpus))
        own = [(b"SHOAL_JOB_ID", b"%d" % assignment.job_id),
               (b"SHOAL_ATTEMPT_LEASE", b"%d" % assignment.lease_id),
               (b"SHOAL_SLOT", b"%d" % slot), (b"SHOAL_GPUS", gpus)]
        if assignment.gpus or self._hide_unassigned_gpus:
            own.append((b"CUDA_VISIBLE_DEVICES", gpus))
        return own

    def native_start(self, assignment: Assignment, cwd: str, slot: int) -> NativeStart | None:
        """What the native launcher execs for this job, if it can start it: nothing an exec
        would refuse (a NUL, a name with "="); else None, and `spawn` starts it (and says
        what is wrong)."""
        cmd = os.fsencode(assignment.cmd)
        if b"\0" in cmd or "\0" in cwd or any(
                "=" in name or "\0" in name or "\0" in value or not name
                for name, value in assignment.env.items()):
            return None
        own = not cwd or cwd == self._cwd
        template = self._template(assignment, self._cwd if own else cwd)
        variables = [name + b"=" + value for name, value in self._own_variables(assignment, slot)]
        shell = (self._bash_path, [b"bash", b"-c", cmd], template.envp + variables)
        directory = None if own else os.fsencode(cwd)
        direct_envp = template.direct_envp
        found = None if direct_envp is None else \
            direct_program(assignment.cmd, template.directories)
        if found is None or direct_envp is None:
            return NativeStart(*shell, None, self.jobs_open_files, directory)
        program, argv = found
        return NativeStart(program, argv, direct_envp + variables + [b"_=" + program],
                           shell, self.jobs_open_files, directory)

    def _template(self, assignment: Assignment, cwd: str) -> _Template:
        """The part of a job's environment that jobs alike share (bash's start checks look
        at the file system: see `_templates`)."""
        key = (cwd, tuple(assignment.env.items()), bool(assignment.gpus))
        return self._templates.get(key, lambda: self._make_template(assignment, cwd))

    def _make_template(self, assignment: Assignment, cwd: str) -> _Template:
        env = {**self._base_env, **{os.fsencode(name): os.fsencode(value)
                                    for name, value in assignment.env.items()}}
        own = {name for name, _ in self._own_variables(assignment, 0)}
        prepared = direct_environment(env, cwd)
        return _Template(
            envp=[name + b"=" + value for name, value in env.items() if name not in own],
            direct_envp=None if prepared is None else [
                name + b"=" + value for name, value in prepared[0].items()
                if name not in own and name != b"_"],
            directories=None if prepared is None else prepared[1])

    @property
    def jobs_open_files(self) -> tuple[int, int] | None:
        """The limit on open files a job gets, if the worker raised its own."""
        return None if self._open_files is None else self._open_files[0]

    def stdin(self) -> int:
        """A descriptor of /dev/null for one job's stdin (the caller closes it)."""
        return os.dup(self._devnull)

    def _start(self, cmd: str, env: dict[bytes, bytes], cwd: str, stdout_fd: int,
               stderr_fd: int, gate: Gate | None) -> Process:
        """posix_spawn where it can (see the module's docstring), else Popen."""
        if self._posix_spawn and gate is None and (not cwd or cwd == self._cwd):
            return SpawnedProcess(self._posix_spawn_job(cmd, env, stdout_fd, stderr_fd))
        options: dict[str, Any] = dict(
            stdin=self._devnull, stdout=stdout_fd, stderr=stderr_fd, cwd=cwd or None,
            start_new_session=True)
        direct = None if gate else direct_start(cmd, env, cwd or self._cwd)
        if direct is not None:
            program, argv, direct_env = direct
            with contextlib.suppress(OSError):  # bash says why, as below
                return subprocess.Popen(argv, executable=program, env=direct_env, **options)
        return subprocess.Popen(
            gate.argv(cmd) if gate else ["bash", "-c", cmd],
            executable=self._bash, env=env,
            pass_fds=gate.child_fds if gate else (), **options)

    @contextlib.contextmanager
    def _jobs_open_files(self, *passed: int) -> Iterator[None]:
        """While inside, the soft limit on open files is the jobs' (a child started now
        inherits it), if the worker raised its own, and if the descriptors `passed` to the
        child are below it (a descriptor above the limit cannot be handed over); else the
        child gets the worker's limit."""
        if self._open_files is None or max(passed) >= self._open_files[0][0]:
            yield
            return
        jobs, own = self._open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, jobs)
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, own)

    def _posix_spawn_job(self, cmd: str, env: dict[bytes, bytes], stdout_fd: int,
                         stderr_fd: int) -> int:
        """The job's pid: its program started directly if it needs no shell (see direct),
        else, or if that start fails, `bash -c`."""
        actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0), (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
                   (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
        direct = direct_start(cmd, env, self._cwd)
        if direct is not None:
            program, argv, direct_env = direct
            try:
                return os.posix_spawn(program, argv, direct_env, file_actions=actions,
                                      setsid=True, setsigdef=_DEFAULT_SIGNALS)
            except OSError:
                pass  # not executable, no #! line, gone: bash says what, or runs it as a script
        return os.posix_spawn(self._bash, [b"bash", b"-c", os.fsencode(cmd)], env,
                              file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS)

    def close(self) -> None:
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1


def spawn_error_message(exc: Exception, cwd: str) -> str:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if cwd and exc.filename == cwd:
            return f"cwd {cwd}: {reason}"
        return f"{exc.filename}: {reason}" if exc.filename else reason
    return f"cannot start the command: {exc}"  # e.g. a NUL byte; never echoes env values


def signal_group(pgid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal_number)


def abandon(process: Process) -> None:
    """Kill and reap a child that cannot be watched."""
    signal_group(process.pid, signal.SIGKILL)
    process.wait()

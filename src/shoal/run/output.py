"""Jobs' output as `shoal run` shows and keeps it: grouped or line by line, tagged, in input
order, `--results DIR` and `--joblog FILE`.

The worker writes a job's output to spool files. When the job's process ends, before those
go, the runner hands them here (`take`): they are linked into `kept/` under the run's state
directory and shown once the job has ended for good (a job that is retried shows only its last
attempt's output). A job run on another host (`--hosts`) has no local files: what its worker
captured (the head and tail of each stream) is shown instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.core.models import MEMORY_LIMIT_REASON, TIME_LIMIT_REASON, Job, JobState
from shoal.core.protocol import Captured
from shoal.run.terminal import Terminal

GROUP, LINE, NONE = "group", "line", "none"
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputSettings:
    mode: str = GROUP  # group: each job's output whole when it ends; line: lines as they come
    tag: bool = False
    keep_order: bool = False


@dataclass
class Shown:
    """What the printer needs of a job once it has ended."""

    job: Job
    number: int  # its line in the file, or its place among the arguments
    tag: str
    index: int  # its place among this run's jobs, for --keep-order


def _read_file(path: str, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return b""


def _captured_bytes(captured: Captured) -> bytes:
    data = captured.head
    if captured.tail:
        missing = captured.total_bytes - len(captured.head.encode()) - len(captured.tail.encode())
        data += (f"\n[... {missing} bytes not kept ...]\n" if missing > 0 else "") + captured.tail
    return data.encode("utf-8", "replace")


def _tagged(data: bytes, tag: str) -> bytes:
    if not tag or not data:
        return data
    prefix = tag.encode("utf-8", "replace") + b"\t"
    lines = data.split(b"\n")
    last = lines.pop() if not data.endswith(b"\n") else None
    if last is None:
        lines.pop()
    out = b"".join(prefix + line + b"\n" for line in lines)
    return out + (prefix + last if last else b"")


class Printer:
    def __init__(self, settings: OutputSettings, terminal: Terminal, kept_dir: Path,
                 stored_output: Callable[[int, str], Captured], *, keep_files: bool):
        self.settings = settings
        self.terminal = terminal
        self.kept_dir = kept_dir
        self._stored_output = stored_output
        # -k with --line-buffer: only the oldest job not yet printed is printed as it runs;
        # the others' output is kept until it is their turn (GNU parallel's --lb -k).
        self._line_in_order = settings.mode == LINE and settings.keep_order
        # Whether ended jobs' output is needed whole: to print it grouped or later (-k), or
        # to keep it for --results.
        self._keep = keep_files or settings.mode == GROUP or self._line_in_order
        if self._keep:
            kept_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tags: dict[int, str] = {}  # job id -> tag, for line mode
        self._indexes: dict[int, int] = {}  # job id -> its place in the run, for line mode
        self._offsets: dict[int, list[int]] = {}  # job id -> [stdout, stderr] bytes printed
        self._printed_live: set[int] = set()  # line mode, -k: jobs whose output is all out
        self._held: dict[int, Shown] = {}  # index -> ended, waiting for earlier ones (-k)
        self._next_index = 0
        self._skipped: set[int] = set()

    # ---- the runner's hook: the job's process has ended, its spool files still exist -----------

    def take(self, job_id: int, stdout_path: str, stderr_path: str) -> None:
        if self.settings.mode == LINE and self._printing_now(job_id):
            self._stream_rest(job_id, stdout_path, stderr_path)
            if self._line_in_order:
                self._printed_live.add(job_id)
        if self._keep:
            for path, suffix in ((stdout_path, "stdout"), (stderr_path, "stderr")):
                kept = self.kept_dir / f"{job_id}.{suffix}"
                with contextlib.suppress(FileNotFoundError):
                    kept.unlink()
                try:
                    os.link(path, kept)
                except OSError:
                    with contextlib.suppress(OSError):
                        shutil.copyfile(path, kept)

    # ---- --line-buffer ---------------------------------------------------------------------

    def watch(self, job_id: int, tag: str, index: int) -> None:
        self._tags[job_id] = tag if self.settings.tag else ""
        self._indexes[job_id] = index

    def _printing_now(self, job_id: int) -> bool:
        """Line mode: whether the job's lines go out as they come (with -k, the oldest's)."""
        return not self._line_in_order or self._indexes.get(job_id) == self._next_index

    def stream(self, job_id: int, stdout_path: str, stderr_path: str) -> None:
        """Print the complete lines written since last time (line mode, jobs running)."""
        if not self._printing_now(job_id):
            return
        offsets = self._offsets.setdefault(job_id, [0, 0])
        for position, path in enumerate((stdout_path, stderr_path)):
            data = _read_file(path, offsets[position])
            cut = data.rfind(b"\n") + 1
            if cut:
                offsets[position] += cut
                self.terminal.write(_tagged(data[:cut], self._tags.get(job_id, "")),
                                    stderr=position == 1)

    def _stream_rest(self, job_id: int, stdout_path: str, stderr_path: str) -> None:
        offsets = self._offsets.pop(job_id, [0, 0])
        for position, path in enumerate((stdout_path, stderr_path)):
            data = _read_file(path, offsets[position])
            self.terminal.write(_tagged(data, self._tags.get(job_id, "")),
                                stderr=position == 1)

    # ---- a job has ended for good ----------------------------------------------------------

    def output_of(self, job_id: int, stream: str) -> bytes:
        kept = self.kept_dir / f"{job_id}.{stream}"
        if kept.exists():
            return _read_file(str(kept))
        return _captured_bytes(self._stored_output(job_id, stream))

    def ended(self, shown: Shown) -> None:
        if self.settings.mode == LINE:
            self._indexes.pop(shown.job.id, None)
            if not self._line_in_order:
                self._tags.pop(shown.job.id, None)
        if self.settings.mode == NONE or (self.settings.mode == LINE
                                         and not self._line_in_order):
            self._discard(shown.job.id)
            return
        if not self.settings.keep_order:
            self._print(shown)
            return
        self._held[shown.index] = shown
        self._release()

    def skip(self, index: int) -> None:
        """A job of this run that will not end here (halted before it ran): -k moves past it."""
        self._skipped.add(index)
        self._release()

    def _release(self) -> None:
        while True:
            if self._next_index in self._skipped:
                self._skipped.discard(self._next_index)
            elif self._next_index in self._held:
                self._print(self._held.pop(self._next_index))
            else:
                return
            self._next_index += 1

    def flush_held(self) -> None:
        """At the end (interrupted, halted): what is held is printed, in order."""
        for index in sorted(self._held):
            self._print(self._held.pop(index))

    def _print(self, shown: Shown) -> None:
        tag = shown.tag if self.settings.tag else ""
        if self._line_in_order:
            self._tags.pop(shown.job.id, None)
            if shown.job.id in self._printed_live:  # printed as it ran, the oldest
                self._printed_live.discard(shown.job.id)
                self._discard(shown.job.id)
                return
        for stream in ("stdout", "stderr"):
            data = self.output_of(shown.job.id, stream)
            self.terminal.write(_tagged(data, tag), stderr=stream == "stderr")
        self._discard(shown.job.id)

    def _discard(self, job_id: int) -> None:
        if not self._keep:
            return
        for stream in ("stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                (self.kept_dir / f"{job_id}.{stream}").unlink()


def signal_of(job: Job) -> int:
    reason = job.fail_reason or ""
    if reason.startswith("killed by signal "):
        with contextlib.suppress(ValueError):
            return int(reason.removeprefix("killed by signal ").split()[0])
    return 0


def joblog_exit(job: Job) -> tuple[int, int]:
    """The joblog's Exitval and Signal, as GNU parallel writes them: a job that shoal ended
    for going past a limit (--timeout, --memory-limit) is -1 and the signal that ended it
    (shoal sends SIGTERM first, SIGKILL after a grace period); one killed by a signal
    otherwise is 0 and that signal."""
    if job.fail_reason in (TIME_LIMIT_REASON, MEMORY_LIMIT_REASON):
        code = job.exit_code
        return -1, code - 128 if code is not None and code > 128 else int(signal.SIGTERM)
    signal_number = signal_of(job)
    if signal_number:
        return 0, signal_number
    return (job.exit_code if job.exit_code is not None else -1), 0


class Results:
    """`--results DIR`: DIR/N/ for the job numbered N, with stdout, stderr, cmd, exit_code."""

    def __init__(self, directory: Path):
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            from shoal.core.errors import InputError

            raise InputError(f"--results {directory}: {error.strerror or error}") from None

    def write(self, shown: Shown, printer: Printer) -> None:
        place = self.directory / str(shown.number)
        place.mkdir(exist_ok=True)
        job = shown.job
        for stream in ("stdout", "stderr"):
            (place / stream).write_bytes(printer.output_of(job.id, stream))
        (place / "cmd").write_text(job.cmd + "\n", encoding="utf-8", errors="surrogateescape")
        code = "" if job.exit_code is None else str(job.exit_code)
        (place / "exit_code").write_text(code + "\n")
        if job.state is not JobState.DONE and job.fail_reason:
            (place / "fail_reason").write_text(job.fail_reason + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                (place / "fail_reason").unlink()


class Joblog:
    """`--joblog FILE` in GNU parallel's format: a header, then one line per ended job."""

    def __init__(self, path: Path, *, append: bool, header: bool = True):
        self.path = path
        fresh = not append or not path.exists() or path.stat().st_size == 0
        try:
            self._handle = open(path, "w" if fresh else "a", encoding="utf-8",  # noqa: SIM115
                                errors="surrogateescape")
        except OSError as error:
            from shoal.core.errors import InputError

            raise InputError(f"--joblog {path}: {error.strerror or error}") from None
        if fresh and header:
            self._handle.write(JOBLOG_HEADER)
            self._handle.flush()

    def write(self, shown: Shown, send_bytes: int, receive_bytes: int,
              local_worker: str) -> None:
        job = shown.job
        host = ":" if job.worker in (None, local_worker) else (job.host or job.worker or ":")
        exit_value, signal_number = joblog_exit(job)
        command = job.cmd.replace("\n", " ")
        self._handle.write(f"{shown.number}\t{host}\t{job.started_at or 0.0:.3f}\t"
                           f"{job.wall_seconds or 0.0:10.3f}\t{send_bytes}\t{receive_bytes}\t"
                           f"{exit_value}\t{signal_number}\t{command}\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

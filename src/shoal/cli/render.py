"""What the command line prints: sizes, durations, times, tables, job details, progress.

Everything shown that came from a job or a worker (commands, output, reasons, names) is
untrusted: `sanitize` removes terminal control sequences before it is printed. Tables are
plain aligned text (fast for a million rows, greppable off a terminal), coloured only on a
terminal; rich is imported only for the progress bar of `shoal wait`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

# The job states in the order a job usually meets them. Kept here, not taken from
# core.models.JobState, so that loading the command line (`shoal --help`) does not import
# pydantic; a unit test keeps the two equal.
STATES: tuple[str, ...] = (
    "waiting", "queued", "delayed", "running", "lost", "done", "failed", "cancelled",
)
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
# The states in which the server says why a job is not running (its pending_reason).
PENDING_STATES = frozenset({"waiting", "queued", "delayed"})

_STATE_COLORS = {  # SGR codes
    "waiting": "2",
    "delayed": "33",
    "running": "36",
    "lost": "35",
    "done": "32",
    "failed": "1;31",
    "cancelled": "33",
}

_ESCAPE_SEQUENCE = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]                 # CSI: colours, cursor movement, erase
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?      # OSC: titles, hyperlinks, clipboard
    | \x1b[PX^_][^\x1b]*(?:\x1b\\)?           # DCS, SOS, PM, APC strings
    | \x1b[ -/]*[0-~]                         # every other escape
    | \x9b[0-?]*[ -/]*[@-~]                   # 8-bit CSI
    """,
    re.VERBOSE,
)
# C0 and C1 controls except tab and newline, DEL, and bidirectional overrides.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def sanitize(text: str) -> str:
    """Make untrusted text safe to print on a terminal: escape sequences are removed,
    carriage returns become newlines, and other control characters are shown escaped."""
    text = _ESCAPE_SEQUENCE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARACTER.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """Untrusted text for a table cell: sanitized, on one line."""
    return sanitize(text).replace("\n", "\\n").replace("\t", " ")


# ---- numbers --------------------------------------------------------------------------

_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: int | float | None) -> str:
    """1536 -> '1.5 KiB'. Binary units, which parse_memory reads back."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in _SIZE_UNITS:
        value /= 1024
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """0.25 -> '250ms', 75 -> '1m15s', 7300 -> '2h01m', 90000 -> '1d01h'."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_time(timestamp: float | None) -> str:
    """Unix seconds -> local 'YYYY-MM-DD HH:MM:SS'."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_ago(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "-"
    elapsed = max(0.0, (time.time() if now is None else now) - timestamp)
    return f"{format_duration(elapsed)} ago"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def ordered_states(states: Iterable[str]) -> list[str]:
    """Known states in lifecycle order, then any the server knows and this client does not."""
    present = set(states)
    return [s for s in STATES if s in present] + sorted(present - set(STATES))


def summarize_counts(counts: Mapping[str, int]) -> str:
    """{'done': 3, 'failed': 1} -> '3 done, 1 failed' (lifecycle order, zeros left out)."""
    parts = [f"{counts[s]} {s}" for s in ordered_states(counts) if counts[s]]
    return ", ".join(parts) or "no jobs"


# ---- output ---------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """The stable, documented `--json` output: indented, keys as the server sent them."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def paint(text: str, sgr: str | None, *, color: bool) -> str:
    """`text` in the colour of an SGR code, when colour is on."""
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr else text


def paint_state(state: str, *, color: bool) -> str:
    return paint(state, _STATE_COLORS.get(state), color=color)


_RIGHT_ALIGNED = frozenset({
    "ID", "#", "EXIT", "TRIES", "WALL", "RUNNING", "QUEUED", "TOTAL", "CORES", "MEMORY", "GPUS",
    "CAP", *STATES,
})
_MIN_LAST_COLUMN = 20


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]],
                stream: TextIO | None = None, *, widths: Sequence[int] = (),
                with_header: bool = True) -> list[int]:
    """Aligned columns; cells must already be one-line safe text (see `one_line`).

    On a terminal the header is bold, states are coloured and the last column is cut to
    the terminal's width; elsewhere lines are whole. A table printed in pages passes the
    widths each page returns to the next (they only grow) and the header once.
    """
    stream = stream or sys.stdout
    terminal, color = stream.isatty(), use_color(stream)
    rows = [list(row) for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in rows),
                   *(widths[i:i + 1])]) for i, header in enumerate(headers)]
    last_width = None
    if terminal:
        used = sum(widths[:-1]) + 2 * (len(widths) - 1)
        last_width = max(shutil.get_terminal_size().columns - used, _MIN_LAST_COLUMN)
    state_column = headers.index("STATE") if "STATE" in headers else None

    def line(cells: Sequence[str], *, header: bool) -> str:
        parts = []
        for i, text in enumerate(cells):
            last = i == len(cells) - 1
            if last and last_width is not None and len(text) > last_width:
                text = text[: last_width - 1] + "…"
            if last and headers[i] not in _RIGHT_ALIGNED:
                padded = text
            elif headers[i] in _RIGHT_ALIGNED:
                padded = text.rjust(widths[i])
            else:
                padded = text.ljust(widths[i])
            if header:
                padded = paint(padded, "1", color=color)
            elif i == state_column:
                padded = paint(padded, _STATE_COLORS.get(text), color=color)
            parts.append(padded)
        return "  ".join(parts).rstrip()

    if with_header:
        stream.write(line(headers, header=True) + "\n")
    for row in rows:
        stream.write(line(row, header=False) + "\n")
    stream.flush()
    return widths


# ---- tables ---------------------------------------------------------------------------


def status_rows(status: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Counts per group (rows) and state (columns); a total row unless there is one group."""
    groups: Mapping[str, Mapping[str, int]] = status.get("groups", {})
    totals: Mapping[str, int] = status.get("totals", {})
    columns = ordered_states(state for state, count in totals.items() if count)
    rows = []
    for group in sorted(groups):
        counts = groups[group]
        cells = [str(counts.get(state) or "") for state in columns]
        rows.append([one_line(group), *cells, str(sum(counts.values()))])
    if len(groups) != 1:
        cells = [str(totals.get(state, 0)) for state in columns]
        rows.append(["(all)", *cells, str(sum(totals.values()))])
    return ["GROUP", *columns, "TOTAL"], rows


def jobs_rows(jobs: Sequence[Mapping[str, Any]], *,
              why: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per job; with `why`, a WHY column: the server's reason a job is not running."""
    with_names = any(job.get("name") for job in jobs)
    headers = ["ID", "STATE", "GROUP", "EXIT", "TRIES", "WALL", "WORKER"]
    headers += ["NAME"] if with_names else []
    headers += ["WHY"] if why else []
    rows = []
    for job in jobs:
        row = [
            str(job["id"]),
            one_line(job["state"]),
            text_cell(job.get("group")),
            text_cell(job.get("exit_code")),
            str(job.get("attempts", 0)),
            format_duration(job.get("wall_seconds")),
            text_cell(job.get("worker")),
        ]
        if with_names:
            row.append(text_cell(job.get("name")))
        if why:
            row.append(text_cell(pending_reason(job)))
        rows.append([*row, one_line(job["cmd"])])
    return [*headers, "COMMAND"], rows


def pending_reason(job: Mapping[str, Any]) -> str | None:
    """Why a job that is waiting its turn is not running, if the server says."""
    return job.get("pending_reason") if job.get("state") in PENDING_STATES else None


def workers_rows(workers: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per worker. GPUS, RESOURCES (named ones) and LABELS appear only when some
    worker has them, so a plain cluster keeps a narrow table; CONTAINMENT (how a job's
    processes are held together: cgroup-v1, cgroup-v2 or process-group) when some worker
    says; STARTED BY (ssh, slurm:<alloc>, or by hand) when some worker was started by shoal."""
    offers = [worker.get("resources") or {} for worker in workers]
    with_gpus = any(offer.get("gpus") for offer in offers)
    with_custom = any(offer.get("custom") for offer in offers)
    with_labels = any(worker.get("labels") for worker in workers)
    with_containment = any(worker.get("containment") for worker in workers)
    with_provider = any(worker.get("provider") for worker in workers)
    headers = ["NAME", "HOST", "STATE", "CORES", "MEMORY"]
    headers += ["GPUS"] if with_gpus else []
    headers += ["RESOURCES"] if with_custom else []
    headers += ["RUNNING", "LAST SEEN"]
    headers += ["CONTAINMENT"] if with_containment else []
    headers += ["STARTED BY"] if with_provider else []
    headers += ["LABELS"] if with_labels else []
    rows = []
    for worker, offered in zip(workers, offers, strict=True):
        used = worker.get("used") or {}
        row = [
            text_cell(worker.get("name")),
            text_cell(worker.get("host")),
            "connected" if worker.get("connected") else "disconnected",
            f"{used.get('cores', 0)}/{offered.get('cores', 0)}",
            f"{format_bytes(used.get('memory_bytes', 0))}/"
            f"{format_bytes(offered.get('memory_bytes', 0))}",
        ]
        if with_gpus:
            row.append(f"{used.get('gpus', 0)}/{len(offered.get('gpus') or ())}")
        if with_custom:
            row.append(custom_resources_cell(offered.get("custom") or {},
                                             used.get("custom") or {}))
        row += [str(worker.get("running", 0)), format_ago(worker.get("last_seen"))]
        if with_containment:
            row.append(text_cell(worker.get("containment") or None))
        if with_provider:
            row.append(text_cell(worker.get("provider") or "by hand"))
        if with_labels:
            labels = worker.get("labels") or {}
            row.append(one_line(",".join(f"{key}={labels[key]}" for key in sorted(labels)))
                       or "-")
        rows.append(row)
    return headers, rows


def custom_resources_cell(offered: Mapping[str, int], used: Mapping[str, int]) -> str:
    """{'license': 4}, {'license': 1} -> 'license=1/4': used of offered, per name."""
    cells = [f"{name}={used.get(name, 0)}/{offered[name]}" for name in sorted(offered)]
    return one_line(",".join(cells)) or "-"


def limits_rows(limits: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [text_cell(entry.get("name")), format_cap(entry.get("cap")),
         str(entry.get("running", 0)), str(entry.get("queued", 0))]
        for entry in limits
    ]
    return ["NAME", "CAP", "RUNNING", "QUEUED"], rows


def format_cap(cap: int | None) -> str:
    """A limit's cap: '-' when there is none, 'paused' at 0."""
    if cap is None:
        return "-"
    return "paused" if cap == 0 else str(cap)


def describe_limit(entry: Mapping[str, Any]) -> str:
    """'limit db: cap 4, 2 running, 10 queued' (or 'no cap', or 'paused')."""
    cap = entry.get("cap")
    cap_text = "no cap" if cap is None else "paused" if cap == 0 else f"cap {cap}"
    return (f"limit {text_cell(entry.get('name'))}: {cap_text}, "
            f"{entry.get('running', 0)} running, {entry.get('queued', 0)} queued")


def attempts_rows(attempts: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["#", "WORKER", "HOST", "STARTED", "WALL", "EXIT", "OUTCOME", "REASON"]
    rows = [
        [
            str(attempt.get("attempt", "")),
            text_cell(attempt.get("worker")),
            text_cell(attempt.get("host")),
            format_time(attempt.get("started_at")),
            format_duration(attempt.get("wall_seconds")),
            text_cell(attempt.get("exit_code")),
            text_cell(attempt.get("outcome")),
            text_cell(attempt.get("reason")),
        ]
        for attempt in attempts
    ]
    return headers, rows


def text_cell(value: object) -> str:
    return "-" if value is None else one_line(str(value))


# ---- one job --------------------------------------------------------------------------


def job_fields(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The `status ID` view of a job as (label, text) pairs; empty ones are left out."""
    exit_code = job.get("exit_code")
    fields = [
        ("command", job["cmd"]),
        ("name", job.get("name") or ""),
        ("state", job["state"]),
        (WHY_LABEL, pending_reason(job) or ""),
        ("reason", job.get("fail_reason") or ""),
        ("exit code", "" if exit_code is None else str(exit_code)),
        ("group", job.get("group") or ""),
        ("cwd", job.get("cwd") or ""),
        ("priority", str(job.get("priority", 0))),
        ("retries", str(job.get("retries", 0))),
        ("attempts", attempts_text(job)),
        ("worker", worker_text(job)),
        ("requested", requested_text(job)),
        ("req group", job.get("req_group") or ""),
        ("requirements", job.get("requirements_source") or ""),
        ("used", used_text(job)),
        ("after", ", ".join(map(str, job.get("dependencies") or ()))),
        ("after any", ", ".join(map(str, job.get("dependencies_any") or ()))),
        ("limits", ", ".join(job.get("limits") or ())),
        ("on worker", job.get("on_worker") or ""),
        ("env", ", ".join(job.get("env") or ())),
        ("added", format_time(job.get("added_at"))),
        ("started", format_time(job["started_at"]) if job.get("started_at") else ""),
        ("ended", format_time(job["ended_at"]) if job.get("ended_at") else ""),
        ("retry at", format_time(job["retry_at"]) if job.get("retry_at") else ""),
    ]
    return [(label, one_line(text)) for label, text in fields if text]


WHY_LABEL = "why not running"


def requested_text(job: Mapping[str, Any]) -> str:
    """'2 cores, 8.0 GiB (grows), 1 GPU, license=1, expected 1h00m, limit 2h00m'."""
    resources = job.get("resources") or {}
    requested = [plural(resources.get("cores", 1), "core")]
    if resources.get("memory_bytes"):
        grows = " (grows)" if job.get("grow_memory") else ""
        requested.append(format_bytes(resources["memory_bytes"]) + grows)
    elif job.get("grow_memory"):
        requested.append("memory grows")
    if resources.get("gpus"):
        requested.append(plural(resources["gpus"], "GPU"))
    custom = resources.get("custom") or {}
    requested += [f"{name}={custom[name]}" for name in sorted(custom)]
    if job.get("time_seconds"):
        requested.append(f"expected {format_duration(job['time_seconds'])}")
    if job.get("time_limit_seconds"):
        requested.append(f"limit {format_duration(job['time_limit_seconds'])}")
    return ", ".join(requested)


def attempts_text(job: Mapping[str, Any]) -> str:
    attempts = str(job.get("attempts", 0))
    if job.get("lost_attempts"):
        attempts += f" ({job['lost_attempts']} lost)"
    return attempts


def worker_text(job: Mapping[str, Any]) -> str:
    """'node1 on node1, pid 3234, GPUs 0,1': where it runs, and while it runs, its GPUs."""
    if not job.get("worker"):
        return ""
    text = f"{job['worker']} on {job.get('host') or '?'}"
    text += f", pid {job['pid']}" if job.get("pid") else ""
    if job.get("state") == "running" and job.get("gpu_ids"):
        text += f", GPUs {','.join(map(str, job['gpu_ids']))}"
    return text


def used_text(job: Mapping[str, Any]) -> str:
    if job.get("wall_seconds") is None:
        return ""
    return (f"wall {format_duration(job['wall_seconds'])}, "
            f"cpu {format_duration(job.get('cpu_seconds'))}, "
            f"peak RSS {format_bytes(job.get('peak_rss_bytes'))}")


OUTPUT_TAIL_LINES = 10


def print_job(job: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """Details of one job: its fields, its attempts, and the end of its output."""
    stream = stream or sys.stdout
    color = use_color(stream)
    stream.write(paint(f"job {job['id']}", "1", color=color) + "\n")
    fields = job_fields(job)
    width = max(10, *(len(label) + 1 for label, _ in fields))
    for label, text in fields:
        if label == "state":
            text = paint_state(text, color=color)
        elif label == WHY_LABEL:  # the first thing to know about a job that does not start
            text = paint(text, "1;33", color=color)
        stream.write(f"  {label:<{width}} {text}\n")
    if job.get("attempt_history"):
        stream.write("\n")
        print_table(*attempts_rows(job["attempt_history"]), stream=stream)
    for name in ("stdout", "stderr"):
        output = job.get(name) or {}
        if not output.get("total_bytes"):
            continue
        tail = output_tail(output, OUTPUT_TAIL_LINES)
        title = f"{name} ({format_bytes(output['total_bytes'])}, last lines)"
        stream.write("\n" + paint(title, "1", color=color) + "\n")
        stream.write("".join(f"  {line}\n" for line in tail.split("\n")))


def output_tail(output: Mapping[str, Any], lines: int) -> str:
    """The last `lines` lines of a stream's captured output, sanitized."""
    text = output.get("tail") or output.get("head") or ""
    return "\n".join(sanitize(text).rstrip("\n").split("\n")[-lines:])


def unseen_output(log: Mapping[str, Any], position: int) -> tuple[list[str | int], int]:
    """The output of a `logs` answer from byte `position` on, and the position after it.

    The server keeps the first bytes (head) and the last bytes (tail) of a stream; when
    total_bytes exceeds both, the middle is gone. Pieces are text, or an int: a count of
    omitted bytes.
    """
    head = log.get("head", "").encode()
    tail = log.get("tail", "").encode()
    total = max(int(log.get("total_bytes", 0)), len(head))
    tail_start = max(total - len(tail), 0)  # below len(head) when head and tail overlap
    pieces: list[str | int] = []
    if position < len(head):
        pieces.append(head[position:].decode(errors="replace"))
        position = len(head)
    if position < tail_start:
        pieces.append(tail_start - position)
        position = tail_start
    if position < total:
        pieces.append(tail[position - tail_start:].decode(errors="replace"))
    return [piece for piece in pieces if piece != ""], max(position, total)


def omitted_marker(byte_count: int) -> str:
    return f"… [{byte_count} bytes omitted] …"


# ---- waiting --------------------------------------------------------------------------


class WaitDisplay:
    """Shows progress towards every job ending: a bar on a terminal, otherwise a plain line
    whenever the counts change (at most every PLAIN_INTERVAL seconds), and a last line."""

    PLAIN_INTERVAL = 5.0

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._last_line = ""
        self._last_line_at = 0.0
        self._progress: Any = None
        self._task: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream, highlight=False),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("waiting", total=None)

    def update(self, counts: Mapping[str, int]) -> None:
        total, ended = sum(counts.values()), sum(counts.get(s, 0) for s in FINAL_STATES)
        summary = summarize_counts(counts)
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=ended, description=summary)
            return
        now = time.monotonic()
        if summary != self._last_line and now - self._last_line_at >= self.PLAIN_INTERVAL:
            self._write(f"{ended}/{total} ended: {summary}", now)

    def finish(self, counts: Mapping[str, int]) -> None:
        if self._progress is not None:
            self.update(counts)
            self._progress.stop()
            return
        total, ended = sum(counts.values()), sum(counts.get(s, 0) for s in FINAL_STATES)
        line = f"{ended}/{total} ended: {summarize_counts(counts)}"
        if line != self._last_line:
            self._write(line, time.monotonic())

    def _write(self, line: str, now: float) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line, self._last_line_at = line, now

"""What an ensemble run shows and keeps: a line per change of state, a live table on a
terminal, an attached component's output, the results table and the run directory.

Everything shown that came from a job (output, reasons, names) goes through render's sanitizing.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shoal.cli import render
from shoal.core.errors import InputError, NotFound
from shoal.ensemble.states import ComponentState

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.ensemble.driver import EnsembleBackend

STREAMS = ("stdout", "stderr")
# Reads in a row of an attached component's output, while it has more to give.
ATTACH_READS_PER_POLL = 16
DEFAULT_RUNS_DIR = Path("shoal-runs")
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.:@+-]")


def note(message: str) -> None:
    """A message for the person watching: stderr, so that stdout holds only results."""
    print(message, file=sys.stderr, flush=True)


# ---- showing a run as it goes -----------------------------------------------------------


class RunWatcher:
    """With `verbose`, prints each change of the run's or a component's state as a line on
    stderr; on a terminal, keeps a table of the components below those lines while the run
    goes."""

    def __init__(self, *, live: bool, verbose: bool = True):
        self.verbose = verbose
        self._states: dict[str, str] = {}
        self._run_state: str | None = None
        self._console: Console | None = None
        self._live: Any = None
        if live and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._console = Console(stderr=True, highlight=False)
            self._live = Live(console=self._console, transient=True, auto_refresh=False)

    def __enter__(self) -> RunWatcher:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()

    def line(self, text: str) -> None:
        stamped = f"{clock_text(time.time())} {text}"
        if self._console is not None:
            self._console.out(stamped, highlight=False)
        else:
            note(stamped)

    def update(self, snapshot: Mapping[str, Any]) -> None:
        for line in self.changes(snapshot):
            if self.verbose:
                self.line(line)
        if self._live is not None:
            self._live.update(live_table(snapshot), refresh=True)

    def changes(self, snapshot: Mapping[str, Any]) -> list[str]:
        """One line per component whose state changed since the last snapshot, and one
        for the run's own state."""
        lines = []
        for component in snapshot.get("components", []):
            name, state = component["name"], component["state"]
            if self._states.get(name) != state:
                self._states[name] = state
                lines.append(f"{render.one_line(name)} ({render.one_line(component['host'])}): "
                             f"{render.one_line(state)}{state_detail(component)}")
        if snapshot["state"] != self._run_state:
            self._run_state = snapshot["state"]
            lines.append(f"run {snapshot['run_id']} {render.one_line(snapshot['name'])}: "
                         f"{render.one_line(snapshot['state'])}")
        return lines


def state_detail(component: Mapping[str, Any]) -> str:
    """What is worth knowing about a component as it enters its state."""
    state = component["state"]
    copied, skipped = component.get("copied_files") or 0, component.get("skipped_files") or 0
    if state == "ready" and copied + skipped:
        return (f" ({render.plural(copied, 'file')} copied, "
                f"{render.format_bytes(component.get('copied_bytes') or 0)}; "
                f"{skipped} already there)")
    if state == "running" and component.get("start_skew_seconds") is not None:
        return f" (skew {skew_text(component['start_skew_seconds'])})"
    parts = []
    if component.get("exit_code") is not None and state != "running":
        parts.append(f"exit {component['exit_code']}")
    if component.get("duration_seconds") is not None:
        parts.append(render.format_duration(component["duration_seconds"]))
    if component.get("fail_reason"):
        parts.append(render.one_line(component["fail_reason"]))
    return f" ({', '.join(parts)})" if parts else ""


def live_table(snapshot: Mapping[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    title = f"{render.one_line(snapshot['name'])}: {render.one_line(snapshot['state'])}"
    table = Table(title=Text(title), title_justify="left",
                  box=None, header_style="bold")
    for header in ("COMPONENT", "HOST", "STAGE", "STATE", "EXIT", "FILES"):
        table.add_column(header)
    for component in snapshot.get("components", []):
        files = component.get("copied_files")
        table.add_row(*(Text(render.one_line(str(cell))) for cell in (
            component["name"], component["host"], component.get("stage", ""),
            component["state"], render.text_cell(component.get("exit_code")),
            "-" if files is None else f"{files} copied")))
    return table


# ---- an attached component's output -----------------------------------------------------


@dataclass
class AttachedOutput:
    """Streams one component's output while it runs: its live output from byte offsets,
    then, once it has ended, what is left of its captured output."""

    backend: EnsembleBackend
    name: str
    out: TextIO
    job_id: int | None = None
    positions: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    def poll(self, snapshot: Mapping[str, Any]) -> None:
        component = next((c for c in snapshot.get("components", [])
                          if c["name"] == self.name), None)
        if component is None or component.get("job_id") is None:
            return
        job_id: int = component["job_id"]
        if job_id != self.job_id:  # a new run of the file's next ensemble
            self.job_id, self.positions, self.ended = job_id, {}, set()
        for stream in STREAMS:
            if stream not in self.ended:
                self._read(job_id, stream)

    def _read(self, job_id: int, stream: str) -> None:
        for _ in range(ATTACH_READS_PER_POLL):
            position = self.positions.get(stream, 0)
            try:
                answer = self.backend.logs(job_id, stream, offset=position)
            except NotFound:  # the job was removed: nothing more will come
                self.ended.add(stream)
                return
            if answer.get("live"):
                data = answer.get("data") or ""
                self._write(stream, data)
                self.positions[stream] = next_offset(answer, position)
                if not data or self.positions[stream] >= answer.get("total_bytes", 0):
                    return
                continue
            pieces, self.positions[stream] = render.unseen_output(answer, position)
            for piece in pieces:
                text = f"\n{render.omitted_marker(piece)}\n" if isinstance(piece, int) else piece
                self._write(stream, text)
            if answer.get("state") in render.FINAL_STATES:
                self.ended.add(stream)
            return

    def _write(self, stream: str, text: str) -> None:
        if not text:
            return
        target = sys.stderr if stream == "stderr" else self.out
        target.write(render.sanitize(text) if target.isatty() else text)
        target.flush()


def next_offset(answer: Mapping[str, Any], position: int) -> int:
    """Where the next live read starts: after the bytes this one gave."""
    if answer.get("next_offset") is not None:
        return int(answer["next_offset"])
    start = int(answer.get("offset", position))
    return start + len((answer.get("data") or "").encode())


# ---- the end: results and the run directory ---------------------------------------------


class LogDirs:
    """Each run's directory: `--log-dir` itself (a subdirectory per ensemble when the file
    holds several), else shoal-runs/NAME-TIMESTAMP/."""

    def __init__(self, chosen: Path | None, *, several: bool):
        self.chosen, self.several = chosen, several
        self._used: set[Path] = set()

    def make(self, ensemble_name: str) -> Path:
        name = _UNSAFE_IN_FILE_NAME.sub("_", ensemble_name)[:100] or "ensemble"
        if self.chosen is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            base = DEFAULT_RUNS_DIR / f"{name}-{stamp}"
        else:
            base = self.chosen / name if self.several else self.chosen
        directory, number = base, 1
        while directory in self._used or (self.chosen is None and directory.exists()):
            number += 1
            directory = base.with_name(f"{base.name}-{number}")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{directory}: cannot make the run directory: "
                             f"{exc.strerror or exc}") from None
        self._used.add(directory)
        return directory


def write_log_dir(directory: Path, snapshot: Mapping[str, Any],
                  backend: EnsembleBackend) -> None:
    """COMPONENT.stdout and COMPONENT.stderr (as captured: the middle of a very long output
    is replaced by a note of its size), run.log (the run's log, then its results) and
    run.json (the final snapshot)."""
    for component in snapshot.get("components", []):
        for stream in STREAMS:
            text = captured_output(backend, component.get("job_id"), stream)
            (directory / f"{component['name']}.{stream}").write_text(text, errors="replace")
    with (directory / "run.log").open("w", errors="replace") as log:
        for entry in snapshot.get("log", []):
            log.write(f"{iso_time(entry.get('at'))} {entry.get('message', '')}\n")
        if snapshot.get("components"):
            log.write("\n")
            print_results(snapshot, None, log)
    (directory / "run.json").write_text(json.dumps(snapshot, indent=2) + "\n")


def captured_output(backend: EnsembleBackend, job_id: int | None, stream: str) -> str:
    if job_id is None:
        return ""
    try:
        answer = backend.logs(job_id, stream)
    except NotFound:  # removed since the run
        return ""
    pieces, _ = render.unseen_output(answer, 0)
    return "".join(f"\n{render.omitted_marker(piece)}\n" if isinstance(piece, int) else piece
                   for piece in pieces)


def print_results(snapshot: Mapping[str, Any], directory: Path | None, stream: TextIO) -> None:
    """The outcome, a row per component, the stages' start spreads, and where output went."""
    name = render.one_line(snapshot.get("name", "?"))
    elapsed = ""
    if snapshot.get("started_at") and snapshot.get("ended_at"):
        elapsed = f" in {render.format_duration(snapshot['ended_at'] - snapshot['started_at'])}"
    state = render.one_line(snapshot["state"])
    if snapshot["state"] == "detached" and snapshot.get("outcome"):
        state += f" ({render.one_line(snapshot['outcome'])}; services left running)"
    stream.write(f"ensemble {name}: {state}{elapsed}\n")
    if snapshot.get("reason") and snapshot["state"] != "done":
        stream.write(f"  {render.one_line(snapshot['reason'])}\n")
    rows = [[
        render.one_line(component["name"]),
        render.one_line(component["host"]),
        render.one_line(component["state"]),
        render.text_cell(component.get("exit_code")),
        clock_text(component.get("started_at")),
        skew_text(component.get("start_skew_seconds")),
        render.format_duration(component.get("duration_seconds")),
        render.one_line(component.get("fail_reason") or ""),
    ] for component in snapshot.get("components", [])]
    if rows:
        render.print_table(["COMPONENT", "HOST", "STATE", "EXIT", "STARTED", "SKEW", "DURATION",
                            "REASON"], rows, stream=stream)
    for stage in snapshot.get("stages", []):
        stream.write(f"stage {stage['stage']}: {stage_text(stage)}\n")
    if directory is not None:
        stream.write(f"output in {directory}\n")
    if snapshot["state"] == "detached":
        run_id = snapshot["run_id"]
        live = [c["name"] for c in snapshot.get("components", [])
                if not c.get("wait", True) and ComponentState(c["state"]).is_live]
        if live:
            stream.write(f"left running: {render.one_line(', '.join(live))}; follow one with "
                         f"`shoal ensemble attach {run_id} NAME`, stop them with "
                         f"`shoal ensemble stop {run_id}`\n")


# ---- each component's output, after the results (NetJobs prints it) ----------------------

OUTPUT_HEAD_LINES = 10
OUTPUT_TAIL_LINES = 10
OUTPUT_LINE_CHARS = 300


def print_outputs(snapshot: Mapping[str, Any], directory: Path, stream: TextIO) -> None:
    """Each component's captured output, as saved in the run directory: its first and last
    lines (the middle of a long one left out), and the file that holds it all."""
    for component in snapshot.get("components", []):
        for name in STREAMS:
            path = directory / f"{component['name']}.{name}"
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if not text:
                continue
            lines = text.splitlines()
            stream.write(f"--- {render.one_line(component['name'])} "
                         f"({render.one_line(component['host'])}) {name}, "
                         f"{render.plural(len(lines), 'line')}: {path}\n")
            shown: list[str | int] = list(lines)
            if len(lines) > OUTPUT_HEAD_LINES + OUTPUT_TAIL_LINES:
                shown = [*lines[:OUTPUT_HEAD_LINES], len(lines) - OUTPUT_HEAD_LINES
                         - OUTPUT_TAIL_LINES, *lines[-OUTPUT_TAIL_LINES:]]
            for line in shown:
                if isinstance(line, int):
                    stream.write(f"[... {render.plural(line, 'line')} more in the file ...]\n")
                    continue
                line = render.sanitize(line)
                if len(line) > OUTPUT_LINE_CHARS:
                    line = line[:OUTPUT_LINE_CHARS] + " [...]"
                stream.write(line + "\n")


def netjobs_log_path(config: Path, ensemble_name: str) -> Path:
    """NetJobs -l: LABEL_TIMESTAMP.log, beside the configuration file."""
    import datetime

    name = _UNSAFE_IN_FILE_NAME.sub("_", ensemble_name)[:100] or "ensemble"
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    return config.absolute().parent / f"{name}_{stamp}.log"


def stage_text(stage: Mapping[str, Any]) -> str:
    release_at, spread = stage.get("release_at"), stage.get("spread_seconds")
    if release_at is None and spread is None:
        return "not started"
    started = ("started one by one" if release_at is None  # --sequential
               else f"released {clock_text(release_at)}")
    return f"{started}, start spread {skew_text(spread)}"


def clock_text(timestamp: float | None) -> str:
    """Local time of day to the millisecond: what start skews are judged by."""
    if timestamp is None:
        return "-"
    whole = int(timestamp)
    milliseconds = int((timestamp - whole) * 1000)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{milliseconds:03d}"


def iso_time(timestamp: float | None) -> str:
    """UTC, to the millisecond, for log files."""
    if timestamp is None:
        return "-"
    whole = int(timestamp)
    milliseconds = int((timestamp - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{milliseconds:03d}Z"


def skew_text(seconds: float | None) -> str:
    """Milliseconds to the microsecond: synchronized starts are sub-millisecond apart."""
    return "-" if seconds is None else f"{seconds * 1000:.3f}ms"



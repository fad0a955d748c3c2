"""What the dashboard's templates show, shaped from the service's answers: numbers for people,
bars, the ensemble timeline, and job output made safe to display.

Nothing here writes HTML by hand: the templates escape every string (Jinja's autoescape).
Output is also stripped of terminal escape sequences and control characters, which escaping
alone would leave in as invisible noise.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from shoal.core.models import JobState

STATE_ORDER = [JobState.WAITING, JobState.QUEUED, JobState.RUNNING, JobState.DELAYED,
               JobState.LOST, JobState.DONE, JobState.FAILED, JobState.CANCELLED]
STATE_NAMES = [state.value for state in STATE_ORDER]
UNFINISHED = frozenset({"waiting", "queued", "running", "delayed", "lost"})

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character escapes.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_output(text: str) -> str:
    """Untrusted output for a page: escape sequences dropped, carriage returns as newlines,
    other control characters shown as \\xNN (the template then escapes HTML)."""
    text = _ESCAPE_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def format_bytes(size: float | int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def format_time(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def ago(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "-"
    return format_seconds(max(0.0, (now or time.time()) - at)) + " ago"


@dataclass(frozen=True)
class Segment:
    state: str
    count: int
    x: float
    width: float


def bar(counts: dict[str, int], width: float = 1000.0) -> list[Segment]:
    """A group's bar: one segment per state, in the order jobs move through them."""
    total = sum(counts.values())
    segments = []
    x = 0.0
    for state in STATE_NAMES:
        count = counts.get(state, 0)
        if count and total:
            part = width * count / total
            segments.append(Segment(state, count, round(x, 2), round(part, 2)))
            x += part
    return segments


def group_rows(groups: dict[str, dict[str, int]], search: str, per_minute: Any,
               limit: int = 500) -> tuple[list[dict[str, Any]], int]:
    """Rows of the groups page (those whose name holds `search`), and how many matched."""
    needle = search.strip().lower()
    matched = [name for name in groups if needle in name.lower()]
    rows = []
    for name in matched[:limit]:
        counts = groups[name]
        total = sum(counts.values())
        remaining = sum(counts.get(state, 0) for state in UNFINISHED)
        rate = per_minute(name)
        eta = remaining / rate * 60 if rate > 0 and remaining else None
        rows.append({"name": name, "counts": counts, "total": total, "remaining": remaining,
                     "segments": bar(counts), "rate": rate,
                     "eta": "done" if not remaining else format_seconds(eta) if eta else "-"})
    return rows, len(matched)


def usage(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Resources asked for against what the last attempt used; over-limit rows are marked."""
    asked = job["resources"]
    rows = [{"what": "cores", "asked": str(asked["cores"]),
             "used": f"{job['cpu_seconds'] / job['wall_seconds']:.2f} average"
             if job.get("cpu_seconds") is not None and job.get("wall_seconds") else "-",
             "over": False}]
    memory = asked["memory_bytes"]
    peak = job.get("peak_rss_bytes")
    rows.append({"what": "memory", "asked": format_bytes(memory) if memory else "no limit",
                 "used": format_bytes(peak) + " peak" if peak is not None else "-",
                 "over": bool(memory and peak and peak > memory)})
    limit = job.get("time_limit_seconds") or job.get("time_seconds")
    wall = job.get("wall_seconds")
    rows.append({"what": "wall time", "asked": format_seconds(limit) if limit else "no limit",
                 "used": format_seconds(wall), "over": bool(limit and wall and wall > limit)})
    if asked.get("gpus"):
        rows.append({"what": "GPUs", "asked": str(asked["gpus"]),
                     "used": ", ".join(job.get("gpu_ids") or []) or "-", "over": False})
    for name, amount in sorted(asked.get("custom", {}).items()):
        rows.append({"what": name, "asked": str(amount), "used": "-", "over": False})
    return rows


def kept_output(captured: dict[str, Any]) -> dict[str, Any]:
    head, tail = captured.get("head", ""), captured.get("tail", "")
    total = int(captured.get("total_bytes", 0))
    missing = max(0, total - len(head.encode()) - len(tail.encode()))
    return {"head": clean_output(head), "tail": clean_output(tail) if missing else "",
            "missing": missing, "total": total,
            "whole": clean_output(head + tail) if not missing and tail != head else
            clean_output(head)}


@dataclass(frozen=True)
class GanttBar:
    label: str
    state: str
    x: float
    width: float
    y: float
    title: str


@dataclass(frozen=True)
class Gantt:
    width: float
    height: float
    bars: list[GanttBar]
    hosts: list[tuple[str, float]]  # host name, y of its lane
    lines: list[tuple[float, str]]  # x of a stage's start line, its label
    ticks: list[tuple[float, str]]


LANE = 26.0
LEFT = 160.0


def gantt(run: dict[str, Any], now: float | None = None, width: float = 900.0) -> Gantt:
    """An ensemble run's components per host on a time axis, with its stages' start lines."""
    now = now or time.time()
    components = run.get("components", [])
    starts = [c["started_at"] or c["ready_at"] for c in components
              if c.get("started_at") or c.get("ready_at")]
    origin = min([run.get("started_at") or now, *starts])
    end = max([origin + 1.0, *(c.get("ended_at") or now for c in components)])
    scale = (width - LEFT - 10) / (end - origin)
    hosts: dict[str, list[dict[str, Any]]] = {}
    for component in components:
        hosts.setdefault(str(component.get("host") or component.get("worker")), []).append(
            component)
    bars: list[GanttBar] = []
    lanes: list[tuple[str, float]] = []
    y = 20.0
    for host, members in hosts.items():
        lanes.append((host, y))
        for component in members:
            begin = component.get("started_at") or component.get("ready_at")
            if begin is None:
                y += LANE
                continue
            finish = component.get("ended_at") or now
            skew = component.get("start_skew_seconds")
            title = (f"{component['name']} on {host}: {component['state']}, "
                     f"{format_seconds(finish - begin)}"
                     + (f", start skew {skew * 1000:.3f} ms" if skew is not None else ""))
            bars.append(GanttBar(str(component["name"]), str(component["state"]),
                                 round(LEFT + (begin - origin) * scale, 2),
                                 round(max(2.0, (finish - begin) * scale), 2), y, title))
            y += LANE
    lines = []
    for stage in run.get("stages", []):
        release = stage.get("release_at")
        if release is not None:
            spread = stage.get("spread_seconds")
            label = f"stage {stage['stage']}" + (
                f" (spread {spread * 1000:.3f} ms)" if spread is not None else "")
            lines.append((round(LEFT + (release - origin) * scale, 2), label))
    ticks = [(round(LEFT + i * (width - LEFT - 10) / 4, 2),
              format_seconds(i * (end - origin) / 4)) for i in range(5)]
    return Gantt(width, y + 10, bars, lanes, lines, ticks)

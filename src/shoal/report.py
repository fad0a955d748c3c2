"""Reports of a run or a group: plots of what the jobs did, as a self-contained HTML page or
a PNG. Read from a server (through the client) or from `shoal run`'s state directory.

Plots: run time and peak memory distributions, throughput over time, a Gantt chart per
worker, failures by reason and, for ensemble runs, each component's start against the
stage's release. Drawn with matplotlib (Agg) and inlined as PNG data, so the page needs
nothing else; every name from the jobs is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from shoal.client import Client

FINAL = ("done", "failed", "cancelled")
MAX_GANTT_JOBS = 20_000  # a Gantt of more bars is a blur; the rest are counted, not drawn
STATE_COLOURS = {"done": "#3aa757", "failed": "#d9443c", "cancelled": "#8c8c8c",
                 "running": "#2f7ed8"}


@dataclass
class ReportData:
    title: str
    jobs: list[dict[str, Any]]
    ensembles: list[dict[str, Any]] = field(default_factory=list)
    made_at: float = field(default_factory=time.time)


# ---- reading ---------------------------------------------------------------------------------


def from_server(client: Client, group: str | None) -> ReportData:
    jobs = list(client.jobs(group=group))
    runs = []
    for run in client.list_ensembles():
        if group is None or group == f"ensemble.{run['name']}" or group == run["name"]:
            runs.append(client.ensemble(run["run_id"]))
    return ReportData(f"group {group}" if group else "all jobs", jobs, runs)


def from_state_dir(state_dir: Path, group: str | None) -> ReportData:
    """The jobs `shoal run` kept in its state directory, read as `shoal jobs` reads them:
    read only, so the run's database stays as the run left it (sealed)."""
    from shoal.run.local import RunState

    run = RunState(state_dir)
    try:
        jobs = list(run.jobs(group=group))
    finally:
        run.close()
    return ReportData(f"{run.directory}" + (f", group {group}" if group else ""), jobs)


# ---- numbers -----------------------------------------------------------------------------


def summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    states = Counter(job["state"] for job in jobs)
    walls = sorted(job["wall_seconds"] for job in jobs if job.get("wall_seconds") is not None)
    starts = [job["started_at"] for job in jobs if job.get("started_at")]
    ends = [job["ended_at"] for job in jobs if job.get("ended_at")]
    span = max(ends) - min(starts) if starts and ends else None
    return {"jobs": len(jobs), "states": dict(states), "span_seconds": span,
            "wall_median": walls[len(walls) // 2] if walls else None,
            "wall_max": walls[-1] if walls else None,
            "peak_rss_max": max((job.get("peak_rss_bytes") or 0 for job in jobs), default=0),
            "workers": len({job["worker"] for job in jobs if job.get("worker")})}


def failures(jobs: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter((job.get("fail_reason") or job["state"])[:80] for job in jobs
                   if job["state"] in ("failed", "cancelled"))


# ---- plots ---------------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 3.4) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes,
            color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_distributions(jobs: list[dict[str, Any]]) -> Figure:
    figure = _figure()
    wall_ax, memory_ax = figure.subplots(1, 2)
    walls = [job["wall_seconds"] for job in jobs if job.get("wall_seconds") is not None]
    if walls:
        wall_ax.hist(walls, bins=min(40, max(5, len(walls) // 5)), color="#2f7ed8")
        wall_ax.set_xlabel("run time (s)")
        wall_ax.set_ylabel("jobs")
    else:
        _empty(wall_ax, "run times")
    wall_ax.set_title("Run time")
    peaks = [job["peak_rss_bytes"] / 2**20 for job in jobs if job.get("peak_rss_bytes")]
    if peaks:
        memory_ax.hist(peaks, bins=min(40, max(5, len(peaks) // 5)), color="#a569bd")
        memory_ax.set_xlabel("peak memory (MiB)")
    else:
        _empty(memory_ax, "memory figures")
    memory_ax.set_title("Peak memory")
    return figure


def plot_throughput(jobs: list[dict[str, Any]]) -> Figure:
    figure = _figure()
    ax = figure.subplots()
    ends = sorted(job["ended_at"] for job in jobs
                  if job.get("ended_at") and job["state"] in FINAL)
    if not ends:
        _empty(ax, "ended jobs")
        ax.set_title("Throughput")
        return figure
    origin = min([job["started_at"] for job in jobs if job.get("started_at")] or ends)
    offsets = [end - origin for end in ends]
    ax.step(offsets, range(1, len(offsets) + 1), where="post", color="#3aa757",
            label="ended (cumulative)")
    ax.set_xlabel("seconds since the first start")
    ax.set_ylabel("jobs ended")
    width = max(1.0, (offsets[-1] or 1.0) / 30)
    rate_ax = ax.twinx()
    counts = Counter(int(offset // width) for offset in offsets)
    xs = [k * width for k in range(int(offsets[-1] // width) + 1)]
    rate_ax.bar(xs, [counts.get(k, 0) / width * 60 for k in range(len(xs))], width=width,
                align="edge", alpha=0.25, color="#2f7ed8", label="per minute")
    rate_ax.set_ylabel("jobs per minute")
    ax.set_title("Throughput")
    return figure


def plot_gantt(jobs: list[dict[str, Any]]) -> Figure:
    """One lane per job slot of each worker: jobs that overlap on a worker stack up."""
    timed = sorted((job for job in jobs if job.get("started_at") and job.get("worker")),
                   key=lambda job: job["started_at"])[:MAX_GANTT_JOBS]
    now = time.time()
    slots: dict[str, list[float]] = {}  # worker -> when each of its lanes is free
    placed: list[tuple[dict[str, Any], str, int]] = []
    for job in timed:
        ends = slots.setdefault(job["worker"], [])
        lane = next((k for k, end in enumerate(ends) if end <= job["started_at"]), len(ends))
        if lane == len(ends):
            ends.append(0.0)
        ends[lane] = job.get("ended_at") or now
        placed.append((job, job["worker"], lane))
    rows: dict[tuple[str, int], int] = {}
    labels: list[str] = []
    for worker in sorted(slots):
        for lane in range(len(slots[worker])):
            rows[worker, lane] = len(labels)
            labels.append(worker if lane == 0 else "")
    figure = _figure(height=min(12.0, max(2.5, 0.25 * len(labels) + 1.2)))
    ax = figure.subplots()
    if not timed:
        _empty(ax, "started jobs")
        ax.set_title("Jobs per worker")
        return figure
    origin = timed[0]["started_at"]
    for job, worker, lane in placed:
        end = job.get("ended_at") or now
        ax.broken_barh([(job["started_at"] - origin, max(end - job["started_at"], 0.001))],
                       (rows[worker, lane] - 0.4, 0.8),
                       facecolors=STATE_COLOURS.get(job["state"], "#b0b7c3"))
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first start")
    total = sum(1 for job in jobs if job.get("started_at") and job.get("worker"))
    shown = f" (first {MAX_GANTT_JOBS} of {total})" if total > MAX_GANTT_JOBS else ""
    ax.set_title("Jobs per worker" + shown)
    return figure


def plot_failures(jobs: list[dict[str, Any]]) -> Figure:
    reasons = failures(jobs).most_common(12)
    figure = _figure(height=max(2.2, 0.35 * len(reasons) + 1.0))
    ax = figure.subplots()
    if not reasons:
        _empty(ax, "failures")
    else:
        names = [reason for reason, _ in reversed(reasons)]
        ax.barh(range(len(names)), [count for _, count in reversed(reasons)], color="#d9443c")
        ax.set_yticks(range(len(names)), labels=names)
        ax.set_xlabel("jobs")
    ax.set_title("Failures by reason")
    return figure


def plot_ensemble(run: dict[str, Any]) -> Figure:
    components = [c for c in run.get("components", []) if c.get("started_at")]
    figure = _figure(height=max(2.2, 0.35 * len(components) + 1.2))
    ax = figure.subplots()
    title = f"Ensemble {run.get('name')} run {run.get('run_id')}: starts"
    if not components:
        _empty(ax, "started components")
        ax.set_title(title)
        return figure
    releases = {stage["stage"]: stage.get("release_at") for stage in run.get("stages", [])}
    labels = []
    for row, component in enumerate(components):
        release = releases.get(component.get("stage")) or component["started_at"]
        skew_ms = (component["started_at"] - release) * 1000
        ax.barh(row, skew_ms, left=0, color="#2f7ed8")
        labels.append(f"{component['name']} @ {component.get('host')}")
    ax.axvline(0, color="#e07b00", linestyle="--", label="release")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("start after the stage's release (ms)")
    spreads = [s.get("spread_seconds") for s in run.get("stages", [])
               if s.get("spread_seconds") is not None]
    if spreads:
        title += f" (spread {max(spreads) * 1000:.3f} ms)"
    ax.set_title(title)
    return figure


def figures(data: ReportData) -> list[tuple[str, Figure]]:
    made = [("Run time and peak memory", plot_distributions(data.jobs)),
            ("Throughput over time", plot_throughput(data.jobs)),
            ("Jobs per worker", plot_gantt(data.jobs)),
            ("Failures by reason", plot_failures(data.jobs))]
    made += [(f"Ensemble run {run.get('run_id')}", plot_ensemble(run))
             for run in data.ensembles]
    return made


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---- writing -------------------------------------------------------------------------------


def write_html(data: ReportData, path: Path) -> None:
    numbers = summary(data.jobs)
    esc = html.escape
    states = ", ".join(f"{esc(state)} {count}" for state, count in
                       sorted(numbers["states"].items())) or "none"
    span = numbers["span_seconds"]
    rows = [("jobs", str(numbers["jobs"])), ("states", states),
            ("from first start to last end", f"{span:.1f} s" if span is not None else "-"),
            ("median run time", f"{numbers['wall_median']:.2f} s"
             if numbers["wall_median"] is not None else "-"),
            ("longest run time", f"{numbers['wall_max']:.2f} s"
             if numbers["wall_max"] is not None else "-"),
            ("largest peak memory", f"{numbers['peak_rss_max'] / 2**20:.1f} MiB"),
            ("workers", str(numbers["workers"]))]
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>shoal report: {esc(data.title)}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2rem;max-width:960px;color:#1d2330}"
        "table{border-collapse:collapse}td,th{padding:.2rem .8rem;border-bottom:1px solid #dde2ea;"
        "text-align:left}img{max-width:100%;border:1px solid #dde2ea;margin:.5rem 0}"
        "h2{margin-top:2rem}</style></head><body>",
        f"<h1>shoal report: {esc(data.title)}</h1>",
        f"<p>Made {esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(data.made_at)))}.</p>",
        "<table>" + "".join(f"<tr><th>{esc(key)}</th><td>{value}</td></tr>"
                            for key, value in rows) + "</table>",
    ]
    reasons = failures(data.jobs).most_common(20)
    if reasons:
        parts.append("<h2>Failures</h2><table><tr><th>reason</th><th>jobs</th></tr>"
                     + "".join(f"<tr><td>{esc(reason)}</td><td>{count}</td></tr>"
                               for reason, count in reasons) + "</table>")
    for title, figure in figures(data):
        encoded = base64.b64encode(_png(figure)).decode("ascii")
        parts.append(f"<h2>{esc(title)}</h2><img alt=\"{esc(title)}\" "
                     f"src=\"data:image/png;base64,{encoded}\">")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_png(data: ReportData, path: Path) -> None:
    """Every plot, one under the other, in one PNG."""
    from matplotlib.image import imread

    images = [imread(io.BytesIO(_png(figure)), format="png") for _, figure in figures(data)]
    height = sum(image.shape[0] for image in images) / 100
    width = max(image.shape[1] for image in images) / 100
    combined = _figure(width=width, height=height)
    combined.set_layout_engine("none")
    top = 1.0
    for image in images:
        share = image.shape[0] / 100 / height
        ax = combined.add_axes((0.0, top - share, image.shape[1] / 100 / width, share))
        ax.imshow(image)
        ax.axis("off")
        top -= share
    combined.savefig(path, format="png")

"""The dashboard's job listings and job page, read through the service's paged job listing.

Pages are keyset pages by id (after / before an id), so the cost of a page is the page's
whatever the number of jobs. Sorting by start, wall time or peak memory orders the page shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.core.models import JobState
from shoal.server import dashboard_views as views
from shoal.server.service import Service
from shoal.store import JobQuery

SORT_KEYS = {
    "started": lambda job: job.get("started_at") or 0.0,
    "wall": lambda job: job.get("wall_seconds") or 0.0,
    "memory": lambda job: job.get("peak_rss_bytes") or 0,
}
MAX_DEPENDANTS = 200


@dataclass
class JobListPage:
    jobs: list[dict[str, Any]]
    total: int | None
    filters: dict[str, Any]
    next_after: int | None = None
    previous_before: int | None = None
    sorted_in_page: bool = False
    sees_owners: bool = False
    query: dict[str, str] = field(default_factory=dict)


def list_page(service: Service, scope: str | None, *, state: str, group: str, worker: str,
              text: str, sort: str, order: str, after: int | None, before: int | None,
              size: int) -> JobListPage:
    query = JobQuery(states=(JobState(state),) if state else (), group=group or None,
                     owner=scope, cmd_contains=text or None, worker=worker or None)
    newest_first = order == "desc" if sort == "id" else True
    if before is not None:  # the page before: walk the other way from its first id
        answer = service.jobs(query, after_id=before, limit=size, newest_first=not newest_first)
        jobs = list(reversed(answer["jobs"]))
        more_before = len(jobs) == size
        more_after = True
    else:
        answer = service.jobs(query, after_id=after, limit=size, newest_first=newest_first)
        jobs = answer["jobs"]
        more_before = after is not None
        more_after = len(jobs) == size
    filters = {"state": state, "group": group, "worker": worker, "q": text, "sort": sort,
               "order": order, "size": size}
    page = JobListPage([_row(job) for job in jobs], answer.get("total"), filters,
                       sees_owners=scope is None)
    if jobs:
        page.next_after = jobs[-1]["id"] if more_after else None
        page.previous_before = jobs[0]["id"] if more_before else None
    if sort in SORT_KEYS:
        page.jobs.sort(key=SORT_KEYS[sort], reverse=order == "desc")
        page.sorted_in_page = True
    page.query = {key: str(value) for key, value in filters.items() if value}
    return page


def _row(job: dict[str, Any]) -> dict[str, Any]:
    cmd = job["cmd"]
    return {**job, "cmd_short": views.clean_output(cmd[:160]) + ("…" if len(cmd) > 160 else "")}


def job_page(service: Service, job_id: int, scope: str | None) -> dict[str, Any]:
    """A job as its page shows it: the service's answer, plus usage against what it asked
    for and its kept output made safe to show."""
    job = service.job(job_id, owner=scope)
    job["usage"] = views.usage(job)
    job["outputs"] = {stream: views.kept_output(job.get(stream) or {})
                      for stream in ("stdout", "stderr")}
    job["running"] = job["state"] == JobState.RUNNING.value
    job["after"] = [_dependency(entry) for entry in job.get("dependencies", [])]
    job["after_any"] = [_dependency(entry) for entry in job.get("dependencies_any", [])]
    return job


def _dependency(entry: str) -> dict[str, Any]:
    if entry.isdigit():
        return {"job_id": int(entry), "group": None, "text": f"job {entry}"}
    group = entry.partition(":")[2]
    return {"job_id": None, "group": group, "text": f"every job of group {group}"}


def dependants(service: Service, job_id: int, scope: str | None) -> list[dict[str, Any]]:
    """The jobs still waiting on this one (by its id or its group), up to MAX_DEPENDANTS."""
    waiting = service.waiting_on(job_id, scope)  # NotFound if the job is not theirs
    return [{"id": other.id, "name": other.name, "state": other.state.value,
             "group": other.group} for other in waiting[:MAX_DEPENDANTS]]

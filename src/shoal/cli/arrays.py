"""`shoal arrays`: the arrays added with `shoal add --array`, and how far each has gone."""

from __future__ import annotations

import typer

from shoal.cli import JsonOption, render, session_of


def arrays(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the arrays: tasks, how many are jobs already, and why one stopped."""
    found = session_of(ctx).client().arrays()
    if as_json:
        render.print_json({"arrays": found})
        return
    if not found:
        print("no arrays")
        return
    rows = [[str(entry["id"]), render.one_line(entry["group"]), f"{entry['tasks']:,}",
             f"{entry['queued_as_jobs']:,}", f"{entry['not_yet_jobs']:,}",
             render.one_line(entry["stop_reason"] or ("feeding" if entry["not_yet_jobs"]
                                                      else "all jobs")),
             render.one_line(entry["cmd"])] for entry in found]
    render.print_table(["ID", "GROUP", "TASKS", "JOBS", "NOT YET", "STATE", "COMMAND"], rows)

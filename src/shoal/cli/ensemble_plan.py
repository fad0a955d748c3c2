"""`shoal ensemble run --dry-run` (or -s): the plan of each ensemble, as text or JSON, with
nothing started and no host or server contacted."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from shoal.cli import render
from shoal.ensemble.driver import manifests_json
from shoal.ensemble.spec import Component, Ensemble

HIDDEN = "(hidden)"


def print_plan(ensembles: Sequence[Ensemble], root: Path, start: str,
               stream: TextIO | None = None, *, no_kill: bool = False) -> None:
    """Per ensemble: its stages in order, and each component's host, command, files,
    timeout and whether the run waits for it."""
    from shoal.ensemble.manifest import build_manifests, copy_entries, summarize_copy

    stream = stream or sys.stdout
    for number, ensemble in enumerate(ensembles, 1):
        build_manifests(ensemble, root, hash_contents=False)  # a missing file is an error here too
        if number > 1:
            stream.write("\n")
        if len(ensembles) > 1:
            stream.write(f"[{number}/{len(ensembles)}] ")
        hosts = {c.host for c in ensemble.components}
        stream.write(f"ensemble {render.one_line(ensemble.name)}: "
                     f"{render.plural(len(ensemble.components), 'component')} on "
                     f"{render.plural(len(hosts), 'host')}, start {start}\n")
        waited = sum(1 for c in ensemble.components if c.wait)
        must = (f"every waited-for component ({waited})" if ensemble.required == waited
                else f"{ensemble.required} of the {waited} waited-for components")
        stream.write(f"  must succeed: {must}; "
                     f"run timeout {timeout_text(ensemble.run_timeout_seconds)}\n")
        services_stay = no_kill or not waited
        previous: int | None = None
        for stage in ensemble.stages:
            if previous is None:
                stream.write(f"  stage {stage}: first\n")
            else:
                after = ensemble.stage_starts_after.get(stage, "started")
                stream.write(f"  stage {stage}: once stage {previous} has {after}\n")
            previous = stage
            for component in (c for c in ensemble.components if c.stage == stage):
                timeout = component.timeout_seconds or ensemble.timeout_seconds
                role = ("waited for" if component.wait
                        else "service, left running" if services_stay
                        else "service, killed when the run ends")
                stream.write(f"    {render.one_line(component.name)} on "
                             f"{render.one_line(component.host)}: timeout "
                             f"{timeout_text(timeout)}, {role}\n")
                stream.write(f"      $ {render.one_line(component.command)}\n")
                stream.write(f"      in {directory_text(component)}\n")
                if component.cores or component.memory_bytes:
                    stream.write(f"      takes {resources_text(component)}\n")
                if component.env:  # names only: values may be secrets
                    stream.write(f"      env {', '.join(sorted(component.env))}\n")
                for copy in component.files:
                    entries = [entry for entry, _ in copy_entries(copy, root, component.name,
                                                                  None)]
                    files, size = summarize_copy(entries)
                    what = (f"{render.format_bytes(size)}, mode {entries[0].mode:o}"
                            if entries[0].kind == "file"
                            else f"{render.plural(files, 'file')}, {render.format_bytes(size)}")
                    stream.write(f"      {entries[0].kind} {render.one_line(copy.local)} -> "
                                 f"{render.one_line(entries[0].path)} ({what})\n")


def plan_json(ensembles: Sequence[Ensemble], root: Path) -> list[dict[str, Any]]:
    from shoal.ensemble.manifest import build_manifests

    plans: list[dict[str, Any]] = []
    for ensemble in ensembles:
        manifests = build_manifests(ensemble, root, hash_contents=False)
        plan = ensemble.model_dump(mode="json")
        for component in plan["components"]:  # values may be secrets; names are enough here
            component["env"] = dict.fromkeys(component["env"], HIDDEN)
        plans.append({"ensemble": plan, "manifests": manifests_json(manifests)})
    return plans


def timeout_text(seconds: float | None) -> str:
    return "none" if seconds is None else render.format_duration(seconds)

def directory_text(component: Component) -> str:
    """Where a component runs, as its worker will choose it."""
    if component.base_dir is None:
        return "a fresh directory on its host (mktemp -d), its files in it"
    if component.base_dir.startswith("/"):
        return render.one_line(component.base_dir)
    if component.base_dir == ".":
        return "its worker's working directory (shoal worker --workdir)"
    return f"{render.one_line(component.base_dir)} under its worker's working directory"

def resources_text(component: Component) -> str:
    parts = []
    if component.cores:
        parts.append(render.plural(component.cores, "core"))
    if component.memory_bytes:
        parts.append(f"{render.format_bytes(component.memory_bytes)} of memory")
    return " and ".join(parts)

"""`shoal file set|list|wait|check FILE`: a runmaker file, worked on in place (runset4, runwait4).

They read and write the file alone, under runmaker4's locks, so they work whoever is running
the file's lines: shoal runners, runmaker4 processes, or both.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli import render
from shoal.core.errors import InputError
from shoal.formats.runmaker import STATE_CHARS

file_app = typer.Typer(name="file", no_args_is_help=True, add_completion=False,
                       help="Work on a runmaker file in place: set, list, wait, check.")

FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="The runmaker file.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SETTABLE = STATE_CHARS  # a line may be set to any state it can be in
WAIT_SECONDS = 1.0


def check_states(text: str, allowed: str, *, one: bool) -> str:
    """--state: state characters of a runmaker file, each one of `allowed`; exactly one
    when `one` (what `set` writes), else one or more (what `list` shows)."""
    if not text or (one and len(text) != 1) or any(char not in allowed for char in text):
        listed = " ".join(allowed)
        what = "one of" if one else "made of the state characters"
        raise InputError(f"--state: {text!r} is not {what} {listed}")
    return text


@file_app.command("list")
def list_lines(
    file: FileArgument,
    state: Annotated[str | None, typer.Option(
        "--state", metavar="S", help="Only lines in these states, e.g. '!e'.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the job lines: line number, state, command (runset4 --list)."""
    from shoal.formats import RunmakerFile
    from shoal.formats.runmaker import READABLE_STATES
    from shoal.runfile.lines import read_lines

    if state is not None:
        check_states(state, READABLE_STATES, one=False)
    with RunmakerFile(file, writable=False) as runmaker:
        _, lines = read_lines(runmaker)
    shown = [line for line in lines if state is None or (line.parsed.state_char or "") in state]
    if as_json:
        print(json.dumps([{"line": line.parsed.line, "offset": line.offset,
                           "state": line.parsed.state_char, "cmd": line.parsed.spec.cmd}
                          for line in shown], indent=2))
        return
    for line in shown:
        print(f"{line.parsed.line}: {line.parsed.state_char} - "
              f"{render.one_line(line.parsed.spec.cmd)}")


@file_app.command("set")
def set_lines(
    file: FileArgument,
    lines: Annotated[list[int] | None, typer.Argument(
        metavar="[LINE]...", show_default=False,
        help="Line numbers in the file (as `shoal file list` shows them).")] = None,
    state: Annotated[str, typer.Option("--state", "-s", metavar="S",
                                       help="The new state: . r d ! or e.")] = ".",
    all_lines: Annotated[bool, typer.Option("--all", "-a", help="Every job line.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Also lines a live shoal runner holds (its job then may run twice).")
    ] = False,
) -> None:
    """Set the state of job lines in place (runset4 --set).

    Lines a live shoal runner holds are left alone unless --force: runset4 would set them.
    """
    from shoal.formats import RunmakerFile
    from shoal.runfile.claims import ClaimBook
    from shoal.runfile.lines import read_lines

    check_states(state, SETTABLE, one=True)
    if all_lines == bool(lines):
        raise InputError("give line numbers or --all (not both)")
    with RunmakerFile(file) as runmaker:
        _, found = read_lines(runmaker)
        by_number = {line.parsed.line: line for line in found}
        for number in lines or ():
            if number not in by_number:
                raise InputError("not a job line", source=str(file), line=number)
        numbers = dict.fromkeys(lines or ())
        chosen = found if all_lines else [by_number[number] for number in numbers]
        changed, held = 0, []
        with ClaimBook(file) as book:
            for line in chosen:
                offset = line.offset
                free = book.try_hold(offset)
                if not free and not force:
                    held.append(line.parsed.line)
                    continue
                try:
                    if runmaker.compare_and_set(offset, ".rd!e?", state, line.rest) is not None:
                        changed += 1
                    if free:
                        book.clear(offset)  # a dead runner's mark no longer applies
                finally:
                    if free:
                        book.release(offset)
    print(f"{file}: set {changed} lines to '{state}'", file=sys.stderr)
    if held:
        shown = ", ".join(str(number) for number in held[:20])
        print(f"{file}: lines {shown}{' ...' if len(held) > 20 else ''} are held by a live "
              "shoal runner: left alone (--force sets them too)", file=sys.stderr)


@file_app.command("wait")
def wait(
    file: FileArgument,
    progress: Annotated[bool, typer.Option("--progress", "-p",
                                           help="Show progress while waiting.")] = False,
    use_exit_status: Annotated[bool, typer.Option(
        "--use-exit-status", "-e", help="Exit 1 unless every line ends done.")] = False,
) -> None:
    """Wait until no line is new or running (runwait4)."""
    from shoal.formats import RunmakerFile
    from shoal.runfile.lines import read_lines

    with RunmakerFile(file, writable=False) as runmaker:
        _, lines = read_lines(runmaker)
        offsets = [line.offset for line in lines]
        previous: list[str] = []
        while True:
            states = runmaker.states(offsets)
            counts = {char: states.count(char) for char in ".r?d!e"}
            if progress and states != previous:
                print(_progress_line(counts, len(states)), flush=True)
            previous = states
            if counts["."] + counts["r"] + counts["?"] == 0:
                break
            time.sleep(WAIT_SECONDS)
    if use_exit_status and counts["d"] != len(states):
        raise typer.Exit(1)


def _progress_line(counts: dict[str, int], total: int) -> str:
    """runwait4's progress line."""
    width = 16
    parts = {char: int(counts[char] / total * width) if total else 0 for char in "r!ed"}
    rest = width - sum(parts.values())
    bar = "=" * parts["d"] + "e" * parts["e"] + "!" * parts["!"] + ">" * parts["r"] + " " * rest
    processed = counts["!"] + counts["e"] + counts["d"]
    return (f"progress: {processed:3d} of {total:3d} jobs processed, "
            f"{counts['!'] + counts['e']} errors [{bar}]")


@file_app.command("check")
def check(
    file: FileArgument,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say what would be recovered.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Judge the lines marked running: set back to '.' those whose shoal runner is gone.

    A line a live shoal runner holds is never taken. Lines runmaker4 marked running cannot be
    judged (runmaker4 records no owner) and are listed.
    """
    from shoal.formats import RunmakerFile
    from shoal.runfile.claims import check_claims
    from shoal.runfile.lines import read_lines

    with RunmakerFile(file) as runmaker:
        data, lines = read_lines(runmaker)
        report = check_claims(runmaker, data, [line.parsed for line in lines], file,
                              recover=not dry_run)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    groups = (("recovered", "set back to '.' (their shoal runner is gone)"),
              ("dead", "would be set back to '.' (their shoal runner is gone)"),
              ("live", "held by a live shoal runner"),
              ("unjudgeable", "marked running by runmaker4 (or by a shoal runner that died "
                              "while claiming them): cannot be judged, left alone"))
    said = False
    for name, meaning in groups:
        refs = getattr(report, name)
        if refs:
            said = True
            print(f"{len(refs)} lines {meaning}:")
            for ref in refs:
                print(f"  {ref.line}: {ref.state} - {render.one_line(ref.cmd)}")
    if not said:
        print("no line is marked running")

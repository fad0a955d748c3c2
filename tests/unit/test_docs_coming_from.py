"""The "coming from" tables of docs/ name only shoal commands and options that exist.

Each table puts another tool's flags beside shoal's. A shoal column's `shoal VERB ...` is
resolved through the real command line and each of its options looked up; a bare `-x` or
`--name` is an option of the section's command (or of a `shoal VERB` named in the same cell).
So a table cannot advertise a flag that was renamed or never written.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from shoal.cli import main as cli_main

DOCS = Path(__file__).resolve().parents[2] / "docs"
# (file, heading that starts the section, the command its bare options belong to)
SECTIONS = [
    ("cli.md", "### coming from GNU parallel and xargs", "run"),
    ("formats.md", "## coming from runmaker4", "run"),
    ("ensembles.md", "## Coming from NetJobs", "ensemble run"),
    ("ensembles.md", "## Coming from remote_runner", "ensemble run"),
    ("guide.md", "### HyperQueue", None),
    ("guide.md", "### wr", None),
]
_SPAN = re.compile(r"`([^`]+)`")


def _section(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(heading)
    level = heading.split()[0]
    end = next((index for index in range(start + 1, len(lines))
                if lines[index].startswith("#") and
                len(lines[index].split()[0]) <= len(level)), len(lines))
    return lines[start + 1:end]


def _shoal_cells(lines: list[str]) -> list[str]:
    """The cells of the tables' `shoal` columns."""
    cells: list[str] = []
    column: int | None = None
    for line in lines:
        if not line.startswith("|"):
            column = None
            continue
        row = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if column is None:
            column = row.index("shoal") if "shoal" in row else -1
        elif column >= 0 and not set(line) <= set("|-: "):
            cells.append(row[column])
    return cells


def _command(words: list[str]) -> tuple[Any, list[str]]:
    """The command (typer's click) that `shoal WORDS...` runs, and the words left for it."""
    name, rest = words[0], words[1:]
    root: Any = typer.main.get_command(cli_main.app)
    command = cli_main.load_command(name, rest) if name in cli_main.LAZY_COMMANDS \
        else root.commands.get(name)
    assert command is not None, f"no command `shoal {name}`"
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


@functools.cache
def _options_of(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_options(_command(list(words))[0]))


def _options(command: Any) -> set[str]:
    return {"-h", "--help"} | {flag for param in command.params
                               for flag in (*param.opts, *param.secondary_opts)}


def _flags(words: list[str]) -> list[str]:
    """The words that are options, up to `--` (what follows goes to another program)."""
    flags = []
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not word[1:].isdigit():
            flags.append(word.split("=")[0])
    return flags


def _words(span: str) -> list[str]:
    span = span.replace("...", "").replace("…", "").replace("\\|", "|")
    try:
        return shlex.split(span.split("|")[-1] if span.startswith(("find ", "... ")) else span)
    except ValueError:  # an unbalanced quote: not a command line
        return []


def _checked(cell: str, default: str | None) -> list[str]:
    """What in the cell is not a shoal command or option."""
    problems = []
    named = [default.split()] if default else []
    for span in _SPAN.findall(cell):
        words = _words(span)
        if words[:1] == ["shoal"] and len(words) > 1:
            command, rest = _command(words[1:])
            named.append(words[1:len(words) - len(rest)])
            problems += [f"`{span}`: {flag}" for flag in _flags(rest)
                         if flag not in _options(command)]
    known = set().union(*(_options_of(tuple(name)) for name in named))
    for span in _SPAN.findall(cell):
        words = _words(span)
        if words[:1] != ["shoal"] and words and words[0].startswith("-"):
            problems += [f"`{span}`: {flag}" for flag in _flags(words) if flag not in known]
    return problems


@pytest.mark.parametrize(("file", "heading", "default"), SECTIONS,
                         ids=[f"{file}:{heading.lstrip('# ')}" for file, heading, _ in SECTIONS])
def test_every_shoal_option_in_a_coming_from_table_exists(file: str, heading: str,
                                                          default: str | None) -> None:
    cells = _shoal_cells(_section((DOCS / file).read_text(), heading))
    assert cells, f"{file}: no table with a shoal column under {heading!r}"
    problems = [problem for cell in cells for problem in _checked(cell, default)]
    assert problems == []


def test_a_made_up_option_is_caught() -> None:
    assert _checked("`shoal run --no-such-flag -j 2`", None) == [
        "`shoal run --no-such-flag -j 2`: --no-such-flag"]
    assert _checked("`--tag`, `--colour`", "run") == ["`--colour`: --colour"]
    assert _checked("`shoal alloc add slurm --max-workers 2 -- -p debug`", None) == []

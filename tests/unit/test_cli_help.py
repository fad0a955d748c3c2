"""Help texts are rendered with rich markup, where `[word]` is a tag and vanishes: a literal
one (`[user@]host`) must be written `\\[user@]`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import typer

from shoal.cli import main as cli_main

_TAG = re.compile(r"(?<!\\)\[[A-Za-z#/@]")  # what rich would read as markup


def _texts(command: Any, path: str) -> Iterator[tuple[str, str]]:
    yield path, command.help or ""
    for param in command.params:
        yield f"{path} {param.name}", getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _texts(sub, f"{path} {name}")


def test_no_help_text_loses_a_bracket_to_markup() -> None:
    root: Any = typer.main.get_command(cli_main.app)
    commands = {**root.commands,
                **{name: cli_main.load_command(name, []) for name in cli_main.LAZY_COMMANDS}}
    assert len(commands) > 20
    eaten = [(where, text) for name, command in commands.items()
             for where, text in _texts(command, name) if _TAG.search(text)]
    assert eaten == []


def test_host_forms_are_shown_whole() -> None:
    for words, form in ((["up"], "[ssh://][user@]host[:port]"),
                        (["run"], "[user@]host[:port]")):
        shown = subprocess.run([sys.executable, "-m", "shoal.cli.main", *words, "--help"],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "COLUMNS": "250"})
        assert shown.returncode == 0, shown.stderr
        assert form in shown.stdout

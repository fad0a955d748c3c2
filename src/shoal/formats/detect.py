"""Telling the input formats apart (`--format auto`).

The rules, in order:
1. runmaker: at least one line, and every line that is neither blank nor a comment (first
   non-space character '#', or starting '//') starts with a state character (. r d ! e) and a
   space or TAB. runmaker wins first because its files are rewritten in place, so it must be
   unambiguous: one line of any other shape and the file is not runmaker.
2. wr: some line has a TAB followed by '{', or is itself a JSON object ('{"...'). The JSON need
   not be valid: a malformed options object is then reported as an error, where the `lines`
   reading would quietly run the TAB and the JSON as part of the command.
3. lines: everything else.
"""

from __future__ import annotations

import re

from shoal.formats.common import is_blank_or_comment, numbered_lines
from shoal.formats.wr import JSON_ONLY_LINE

_RUNMAKER_JOB = re.compile(r"[.rd!e][ \t]")


def detect_format(text: str) -> str:
    """Return "runmaker", "wr" or "lines" for the given file content."""
    content = [
        line
        for _, line in numbered_lines(text)
        if not is_blank_or_comment(line) and not line.startswith("//")
    ]
    if content and all(_RUNMAKER_JOB.match(line) for line in content):
        return "runmaker"
    if any(_has_wr_options(line) for line in content):
        return "wr"
    return "lines"


def _has_wr_options(line: str) -> bool:
    _, tab, after = line.partition("\t")
    if tab:
        return after.lstrip().startswith("{")
    return JSON_ONLY_LINE.match(line.strip()) is not None

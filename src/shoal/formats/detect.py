"""Telling the input formats apart (`--format auto`).

The rules, in order:
1. runmaker: of the lines that are neither blank nor a comment (first non-space character '#',
   or starting '//'), at least one, and at least half, start with a state character
   (. r d ! e, or runmaker4's transient ?) and a space or TAB. Such a file is read as runmaker
   even if some lines are not job lines: those are then errors naming the line. Reading it as
   plain commands instead would run its state characters (`. cmd`, `d cmd`) as commands, and
   a file runmaker4 is working on always has some lines of an odd shape for an instant (`?`)
   or by a typo (`.make`).
2. wr: some line has a TAB followed by '{', or is itself a JSON object ('{"...'). The JSON need
   not be valid: a malformed options object is then reported as an error, where the `lines`
   reading would quietly run the TAB and the JSON as part of the command.
3. lines: everything else.
"""

from __future__ import annotations

import re

from shoal.formats.common import is_blank_or_comment, numbered_lines
from shoal.formats.wr import JSON_ONLY_LINE

_RUNMAKER_JOB = re.compile(r"[.rd!e?][ \t]")
# What any line that rule 1 or 2 looks for must contain, found in the whole text at once: a
# file with neither (a million plain commands) is `lines` without a look at each line.
# (Each search is tried only where it can match: a regex that does not start with a fixed
# character, or a line start, tries every position, 0.1 s a million lines.)
_MAYBE_RUNMAKER = re.compile(r"\n[.rd!e?][ \t]")
_MAYBE_WR = re.compile(r"\t\s*\{|\{\s*[\"}]")


def detect_format(text: str) -> str:
    """Return "runmaker", "wr" or "lines" for the given file content."""
    maybe_runmaker = _RUNMAKER_JOB.match(text) or _MAYBE_RUNMAKER.search(text)
    if not maybe_runmaker and ("{" not in text or _MAYBE_WR.search(text) is None):
        return "lines"
    content = [
        line
        for _, line in numbered_lines(text)
        if not is_blank_or_comment(line) and not line.startswith("//")
    ]
    if looks_like_runmaker(content):
        return "runmaker"
    if any(_has_wr_options(line) for line in content):
        return "wr"
    return "lines"


def _has_wr_options(line: str) -> bool:
    _, tab, after = line.partition("\t")
    if tab:
        return after.lstrip().startswith("{")
    return JSON_ONLY_LINE.match(line.strip()) is not None


def runmaker_share(text: str) -> tuple[int, int]:
    """(lines shaped like runmaker job lines, lines that are not blank or comments)."""
    content = [
        line
        for _, line in numbered_lines(text)
        if not is_blank_or_comment(line) and not line.startswith("//")
    ]
    return sum(1 for line in content if _RUNMAKER_JOB.match(line)), len(content)


def looks_like_runmaker(content: list[str]) -> bool:
    shaped = sum(1 for line in content if _RUNMAKER_JOB.match(line))
    return shaped > 0 and 2 * shaped >= len(content)

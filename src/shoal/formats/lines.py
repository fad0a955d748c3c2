"""The `lines` format: one shell command a line."""

from __future__ import annotations

from collections.abc import Iterator

from shoal.core.models import MAX_COMMAND_BYTES, MAX_LINE_BYTES
from shoal.formats.common import ParsedJob, SpecBuilder, is_blank_or_comment


def parse_lines(text: str, builder: SpecBuilder) -> Iterator[ParsedJob]:
    """Blank lines and lines whose first non-space character is '#' are skipped.

    A trailing backslash does not continue a command onto the next line: each line is
    one job, so line numbers and jobs always correspond.
    """
    for number, line in builder.lines(text):
        if is_blank_or_comment(line):
            continue
        yield builder.job({"cmd": line.strip()}, number)


def _unrefusable_lines(text: str) -> list[str] | None:
    """The text's lines (as numbered_lines splits them) when none can be refused: no NUL, and
    no line so long that its UTF-8 bytes (at most four a character) could pass the limit of a
    command. Otherwise None, and parse_lines says which line is bad."""
    if "\x00" in text:
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # as numbered_lines
    if lines and 4 * max(map(len, lines)) > min(MAX_COMMAND_BYTES, MAX_LINE_BYTES):
        return None
    return lines


def count_lines(text: str) -> tuple[int, int] | None:
    """(jobs, the first job's line) of parse_lines, without making the jobs, when no line can
    be refused (otherwise None). A million lines in about a sixth of the time parse_lines
    takes (0.4 s against 2.8 s)."""
    lines = _unrefusable_lines(text)
    if lines is None:
        return None
    if not lines:
        return 0, 0
    # Blank and comment lines, as is_blank_or_comment finds them: few, as a rule.
    skipped = {number for number, line in enumerate(lines, start=1)
               if not (content := line.lstrip()) or content[0] == "#"}
    jobs = len(lines) - len(skipped)
    first = next(number for number in range(1, len(lines) + 2) if number not in skipped)
    return jobs, first if jobs else 0


def plain_commands(text: str) -> Iterator[str] | None:
    """The commands of parse_lines's jobs, without making the jobs, when no line can be
    refused (otherwise None): what a job of only a command needs, at a third of the cost."""
    lines = _unrefusable_lines(text)
    if lines is None:
        return None
    return (command for line in lines if (command := line.strip()) and command[0] != "#")

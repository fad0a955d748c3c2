"""The `lines` format: one shell command a line."""

from __future__ import annotations

from collections.abc import Iterator

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

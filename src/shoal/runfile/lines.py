"""A runmaker file's job lines as read, with what identifies each one in the file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shoal.core.errors import InputError
from shoal.formats import ParsedJob, RunmakerFile, parse_text
from shoal.formats.runmaker import line_rest


@dataclass
class Line:
    number: int  # rank among the file's job lines, from 1 (runmaker4's job number)
    parsed: ParsedJob
    rest: bytes  # the bytes after the state character, to check the line is still the same

    @property
    def offset(self) -> int:
        assert self.parsed.state_offset is not None
        return self.parsed.state_offset

    @property
    def key(self) -> tuple[int, bytes]:
        return self.offset, self.rest


def read_lines(runmaker: RunmakerFile, defaults: Mapping[str, object] | None = None
               ) -> tuple[bytes, list[Line]]:
    """The file read under a shared lock, and its job lines (any bad line: InputError)."""
    data = runmaker.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError("not UTF-8 text", source=runmaker.path,
                         line=data.count(b"\n", 0, error.start) + 1) from None
    parsed = parse_text(text, "runmaker", source=runmaker.path, defaults=defaults)
    lines = []
    for number, item in enumerate(parsed, start=1):
        assert item.state_offset is not None
        rest = line_rest(data, item.state_offset)
        lines.append(Line(number, item, rest))
    return data, lines

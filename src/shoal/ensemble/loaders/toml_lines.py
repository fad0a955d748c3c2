"""Line numbers for keys of an ensemble TOML file.

tomllib reports positions only for syntax errors; a value it parsed fine but shoal refuses
(an unknown key, a bad duration) is found again by scanning the text. Best effort: a key
written as a dotted key or inside an inline table may not be found, and the caller then
names the component instead.
"""

from __future__ import annotations

import re

from shoal.ensemble.loaders.common import split_lines

_COMPONENT_HEADER = re.compile(r"""^\s*\[\[\s*(?:component|"component"|'component')\s*\]\]""")
_STAGES_HEADER = re.compile(r"""^\s*\[\s*(?:stages|"stages"|'stages')\s*\]""")
_ANY_HEADER = re.compile(r"^\s*\[")


class KeyLines:
    def __init__(self, text: str) -> None:
        self._lines = split_lines(text)
        self._component_starts = [i for i, line in enumerate(self._lines)
                                  if _COMPONENT_HEADER.match(line)]
        headers = [i for i, line in enumerate(self._lines) if _ANY_HEADER.match(line)]
        self._top_level_end = headers[0] if headers else len(self._lines)
        self._stages_start = next((i for i, line in enumerate(self._lines)
                                   if _STAGES_HEADER.match(line)), None)

    def top_level(self, key: str) -> int | None:
        return self._find(key, 0, self._top_level_end)

    def stage(self, key: str) -> int | None:
        """The line of a key in the [stages] table, else of the table itself."""
        if self._stages_start is None:
            return self.top_level("stages")
        end = self._next_header(self._stages_start)
        return self._find(key, self._stages_start + 1, end) or self._stages_start + 1

    def component(self, index: int, key: str | None = None) -> int | None:
        """The line of `key` in the index-th [[component]] table, else of its header."""
        if index >= len(self._component_starts):
            return self.top_level("component")  # written as an inline array of tables
        start = self._component_starts[index]
        end = (self._component_starts[index + 1] if index + 1 < len(self._component_starts)
               else len(self._lines))
        found = self._find(key, start + 1, end) if key is not None else None
        return found or start + 1

    def table_header(self, name: str) -> int | None:
        """The line of a [name] table header (not [[name]])."""
        quoted = re.escape(name)
        pattern = re.compile(rf"""^\s*\[\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*\](?!\])""")
        for i, line in enumerate(self._lines):
            if pattern.match(line):
                return i + 1
        return self.top_level(name)

    def _next_header(self, after: int) -> int:
        for i in range(after + 1, len(self._lines)):
            if _ANY_HEADER.match(self._lines[i]):
                return i
        return len(self._lines)

    def _find(self, key: str, start: int, end: int) -> int | None:
        quoted = re.escape(key)
        pattern = re.compile(rf"""^\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*[=.]""")
        for i in range(start, min(end, len(self._lines))):
            if pattern.match(self._lines[i]):
                return i + 1
        return None

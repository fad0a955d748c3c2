"""GNU parallel's argument forms: a command template, `:::` and `::::` sources, placeholders.

`shoal run 'gzip -9 {}' ::: a.csv b.csv` runs one job per argument. Several sources make the
cartesian product, the first varying slowest (as in parallel). In the template:

| placeholder | is replaced by | for `dir/sub/file.tar.gz` |
|---|---|---|
| `{}` | the argument (several sources: all of them, space-separated) | `dir/sub/file.tar.gz` |
| `{.}` | without its extension | `dir/sub/file.tar` |
| `{/}` | its base name | `file.tar.gz` |
| `{//}` | its directory | `dir/sub` |
| `{/.}` | its base name without extension | `file.tar` |
| `{#}` | the job's number (1, 2, ...) | |
| `{%}` | its slot: 1..N among the jobs running at once, the lowest free (`$SHOAL_SLOT`) | |
| `{N}`, `{N.}`, `{N/}`, `{N//}`, `{N/.}` | the same, of source N's argument | |

Arguments are shell-quoted where they are put (as parallel does), so a file name with spaces
or `$` is one word, taken literally. A template with no placeholder gets the arguments
appended, each quoted. With `--colsep`, each argument is first split into columns, which
are numbered on across the sources, and a `{N}` past the last column is empty.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from shoal.core.errors import InputError

SOURCE_ARGS = ":::"
SOURCE_FILES = "::::"
_PLACEHOLDER = re.compile(r"\{(\d*)(\.|/|//|/\.)?\}|\{#\}|\{%\}")
# {%}, the job's slot, is known only when it starts: the worker puts it in SHOAL_SLOT.
SLOT = "$SHOAL_SLOT"


def has_placeholder(template: str) -> bool:
    return _PLACEHOLDER.search(template) is not None


def _transform(value: str, kind: str | None) -> str:
    if kind == ".":
        stem, dot, extension = value.rpartition(".")
        return stem if dot and "/" not in extension and stem and not stem.endswith("/") \
            else value
    if kind == "/":
        return value.rstrip("/").rpartition("/")[2] or value
    if kind == "//":
        head = value.rstrip("/").rpartition("/")[0]
        return head or ("/" if value.startswith("/") else ".")
    if kind == "/.":
        return _transform(_transform(value, "/"), ".")
    return value


def parse_colsep(text: str) -> re.Pattern[str]:
    """--colsep: the regular expression between an argument's columns."""
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise InputError(f"--colsep: {text!r} is not a regular expression: {error}") from None
    if pattern.fullmatch(""):
        raise InputError(f"--colsep: {text!r} matches an empty string; give a separator, "
                         "such as ',' or '\\t'")
    return pattern


def split_columns(args: Sequence[str], colsep: re.Pattern[str]) -> list[str]:
    """--colsep: every argument's columns, numbered on across the sources ({1}, {2}, ...)."""
    return [column for arg in args for column in colsep.split(arg)]


def fill(template: str, args: Sequence[str], number: int, *, columns: bool = False) -> str:
    """The command for one combination of arguments (the job numbered `number`). With
    `columns` (--colsep), a `{N}` past the last column is empty, as in parallel."""
    if not has_placeholder(template):
        return " ".join([template, *(shlex.quote(arg) for arg in args)])

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "{#}":
            return str(number)
        if match.group(0) == "{%}":
            return SLOT
        index, kind = match.group(1), match.group(2)
        if index:
            position = int(index)
            if columns and position > len(args):
                return "''"
            if not 1 <= position <= len(args):
                raise InputError(f"{{{index}{kind or ''}}}: there are {len(args)} input "
                                 "sources, so no argument number " + index)
            return shlex.quote(_transform(args[position - 1], kind))
        return " ".join(shlex.quote(_transform(arg, kind)) for arg in args)

    return _PLACEHOLDER.sub(replace, template)


def split_sources(words: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(the words before the first `:::`/`::::`, the sources after it). `::::` takes files,
    each a source of its lines; `-` is stdin."""
    head: list[str] = []
    sources: list[list[str]] = []
    mode: str | None = None
    for word in words:
        if word in (SOURCE_ARGS, SOURCE_FILES):
            mode = word
            if word == SOURCE_ARGS:
                sources.append([])
            continue
        if mode is None:
            head.append(word)
        elif mode == SOURCE_ARGS:
            sources[-1].append(word)
        else:
            sources.append(_file_lines(word))
    if mode is not None and (not sources or any(not source for source in sources)):
        raise InputError(f"{SOURCE_ARGS}: an input source is empty (nothing after "
                         f"{SOURCE_ARGS}, or an empty {SOURCE_FILES} file)")
    return head, sources


def _file_lines(name: str) -> list[str]:
    try:
        if name == "-":
            import sys

            text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        else:
            text = Path(name).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as error:
        raise InputError(f"{SOURCE_FILES} {name}: cannot read it: "
                         f"{error.strerror or error}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def template_key(template: str) -> str:
    import hashlib

    return hashlib.sha256(template.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def looks_like_template(word: str) -> bool:
    """A first word that is not a file but reads as a command to fill from stdin."""
    return not os.path.exists(word) and word != "-" and (" " in word or has_placeholder(word))

"""GNU parallel's argument forms: a command template, `:::` and `::::` sources, placeholders.

`shoal run 'gzip -9 {}' ::: a.csv b.csv` runs one job per argument. Several sources make the
cartesian product, the first varying slowest (as in parallel). A source after `:::+` (or
`::::+`) is linked to the one before it instead: they are read side by side, as long as the
shorter one lasts; `--link` links every source, and a shorter one starts over until the
longest ends (parallel's `--link`). In the template:

| placeholder | is replaced by | for `dir/sub/file.tar.gz` |
|---|---|---|
| `{}` | the argument (several sources: all of them, space-separated) | `dir/sub/file.tar.gz` |
| `{.}` | without its extension | `dir/sub/file.tar` |
| `{/}` | its base name | `file.tar.gz` |
| `{//}` | its directory | `dir/sub` |
| `{/.}` | its base name without extension | `file.tar` |
| `{#}` | the job's number (1, 2, ...) | |
| `{##}` | how many jobs there are (stdin is read to its end first) | |
| `{%}` | its slot: 1..N among the jobs running at once, the lowest free (`$SHOAL_SLOT`) | |
| `{N}`, `{N.}`, `{N/}`, `{N//}`, `{N/.}` | the same, of source N's argument | |
| `{name}`, `{name.}`, ... | with `--header :`, the same, of the source (or column) so named | |

Arguments are shell-quoted where they are put (as parallel does), so a file name with spaces
or `$` is one word, taken literally. A template with no placeholder gets the arguments
appended, each quoted. With `--colsep`, each argument is first split into columns, which
are numbered on across the sources, and a `{N}` past the last column is empty.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.core.errors import InputError

SOURCE_ARGS = ":::"
SOURCE_FILES = "::::"
LINKED_ARGS = ":::+"  # this source is read beside the one before it
LINKED_FILES = "::::+"
SOURCE_MARKS = (SOURCE_ARGS, SOURCE_FILES, LINKED_ARGS, LINKED_FILES)
_KIND = r"(\.|/|//|/\.)?"  # what of the argument: without extension, base name, directory
_PLACEHOLDER = re.compile(rf"\{{(\d*){_KIND}\}}|\{{##?\}}|\{{%\}}")
_UNNUMBERED = re.compile(rf"\{{{_KIND}\}}")  # an argument's, not source N's
_NAMED = re.compile(rf"\{{([^{{}}#%./\s][^{{}}./\s]*){_KIND}\}}")  # --header's {name}
# {%}, the job's slot, is known only when it starts: the worker puts it in SHOAL_SLOT.
SLOT = "$SHOAL_SLOT"
TOTAL = "{##}"


def by_position(template: str, names: Sequence[str]) -> str:
    """--header: `{name}` (and `{name.}`, `{name/}`, ...) of a source or column named so
    becomes `{N}`, its position; any other `{word}` (awk's `{print}`) is left as it is."""
    positions: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        positions.setdefault(name, position)

    def replace(match: re.Match[str]) -> str:
        position = positions.get(match.group(1))
        if position is None or match.group(1).isdigit():
            return match.group(0)
        return f"{{{position}{match.group(2) or ''}}}"

    return _NAMED.sub(replace, template)


def has_placeholder(template: str) -> bool:
    return _PLACEHOLDER.search(template) is not None


def wants_total(template: str | None) -> bool:
    """Whether `{##}` is in it: the number of jobs must be known before the first."""
    return template is not None and TOTAL in template


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


def fill(template: str, args: Sequence[str], number: int, *, padded: bool = False,
         quote: bool = True, per_word: bool = False, total: int | None = None) -> str:
    """The command for one combination of arguments (the job numbered `number` of `total`,
    which `{##}` needs). With
    `padded` (--colsep, -N), a `{N}` past the last argument is empty, as in parallel. Without
    `quote` (--tagstring), arguments go in as they are, and only where a placeholder is.
    With `per_word` (-N, -X), a word holding `{}` (or `{.}`, ...) is repeated for each argument,
    as parallel's context replace: `gzip {}.txt` of `a b` is `gzip a.txt b.txt`."""
    if not has_placeholder(template):
        return " ".join([template, *(shlex.quote(arg) for arg in args)]) if quote else template
    word = shlex.quote if quote else str

    def replace(match: re.Match[str], each: Sequence[str] = args) -> str:
        if match.group(0) == "{#}":
            return str(number)
        if match.group(0) == TOTAL:
            if total is None:
                raise InputError(f"{TOTAL}: the number of jobs is known only for arguments "
                                 f"(after {SOURCE_ARGS}, {SOURCE_FILES}, -a, or a command's "
                                 "stdin)")
            return str(total)
        if match.group(0) == "{%}":
            return SLOT
        index, kind = match.group(1), match.group(2)
        if index:
            position = int(index)
            if padded and position > len(args):
                return word("")
            if not 1 <= position <= len(args):
                raise InputError(f"{{{index}{kind or ''}}}: there are {len(args)} input "
                                 "sources, so no argument number " + index)
            return word(_transform(args[position - 1], kind))
        return " ".join(word(_transform(arg, kind)) for arg in each)

    if not per_word or not args:
        return _PLACEHOLDER.sub(replace, template)
    return "".join(
        " ".join(_PLACEHOLDER.sub(lambda match, arg=arg: replace(match, (arg,)), token)
                 for arg in args)
        if _UNNUMBERED.search(token) else _PLACEHOLDER.sub(replace, token)
        for token in re.split(r"(\s+)", template))


@dataclass(frozen=True)
class Sources:
    """The `:::` and `::::` sources, in order, and how they combine: `linked[i]` says source
    i is read beside source i - 1 (`:::+`) rather than across it; `link_all` (--link) reads
    them all side by side, the shorter ones starting over."""

    lists: tuple[tuple[str, ...], ...] = ()
    linked: tuple[bool, ...] = ()
    link_all: bool = False

    def __bool__(self) -> bool:
        return bool(self.lists)

    def without_headers(self) -> tuple[list[str], Sources]:
        """--header: each source's first value is its name, not an argument."""
        empty = [index for index, values in enumerate(self.lists, start=1) if len(values) < 2]
        if empty:
            raise InputError(f"--header: input source {empty[0]} has its name and no "
                             "argument after it")
        return ([values[0] for values in self.lists],
                dataclasses.replace(self, lists=tuple(values[1:] for values in self.lists)))

    def _groups(self) -> list[list[tuple[str, ...]]]:
        """Sources read side by side, in groups; the groups are crossed."""
        if self.link_all:
            return [list(self.lists)] if self.lists else []
        groups: list[list[tuple[str, ...]]] = []
        for values, linked in zip(self.lists, self.linked, strict=True):
            if linked and groups:
                groups[-1].append(values)
            else:
                groups.append([values])
        return groups

    def _rows(self, group: list[tuple[str, ...]]) -> int:
        lengths = [len(values) for values in group]
        if not all(lengths):  # an empty source has nothing to start over from
            return 0
        return max(lengths) if self.link_all else min(lengths)

    def count(self) -> int:
        return math.prod(self._rows(group) for group in self._groups())

    def combinations(self) -> Iterator[tuple[str, ...]]:
        """Each job's arguments, one per source, in order: the first group varies slowest."""
        groups = self._groups()
        if all(len(group) == 1 for group in groups):  # nothing linked: no copy of each value
            yield from itertools.product(*(group[0] for group in groups))
            return
        readings = [[tuple(values[row % len(values)] for values in group)
                     for row in range(self._rows(group))] for group in groups]
        for parts in itertools.product(*readings):
            yield tuple(arg for part in parts for arg in part)


def split_sources(words: Sequence[str], arg_files: Sequence[str] = (),
                  link_all: bool = False, delimiter: bytes | None = None
                  ) -> tuple[list[str], Sources]:
    """(the words before the first source mark, the sources after it). `::::` takes files,
    each a source of its lines (of its items, with a `delimiter`); `-` is stdin.
    `arg_files` (-a) are `::::` sources before the others, and crossed with them even after
    `:::+`, as in parallel."""
    head: list[str] = []
    lists: list[list[str]] = [read_items(name, delimiter, given_by="-a")
                              for name in arg_files]
    linked = [False] * len(lists)
    mode: str | None = None
    for word in words:
        if word in SOURCE_MARKS:
            if word in (SOURCE_ARGS, LINKED_ARGS):
                linked.append(word == LINKED_ARGS and mode is not None)
                lists.append([])
            mode = word
        elif mode is None:
            head.append(word)
        elif mode in (SOURCE_ARGS, LINKED_ARGS):
            lists[-1].append(word)
        else:  # each file after `::::+` is linked to the source before it
            linked.append(mode == LINKED_FILES and len(lists) > len(arg_files))
            lists.append(read_items(word, delimiter))
    # An empty source (nothing after `:::`, an empty `::::` file) makes no jobs, and the run
    # ends at once with nothing to do, as GNU parallel's does: `find ... > list` that found
    # nothing is not an error.
    if link_all and not lists:
        raise InputError(f"--link: links sources given after {SOURCE_ARGS} or "
                         f"{SOURCE_FILES}; there are none")
    return head, Sources(tuple(tuple(values) for values in lists), tuple(linked), link_all)


def read_items(name: str, delimiter: bytes | None, given_by: str = SOURCE_FILES) -> list[str]:
    """The items of a `::::` file (or of stdin, `-`), read to its end. `given_by`: the option
    that named it, for the message if it cannot be read."""
    try:
        if name == "-":
            import sys

            data = sys.stdin.buffer.read()
        else:
            data = Path(name).read_bytes()
    except OSError as error:
        raise InputError(f"{given_by} {name}: cannot read it: "
                         f"{error.strerror or error}") from None
    return split_items(data, delimiter, "stdin" if name == "-" else name)


def split_items(data: bytes, delimiter: bytes | None, source: str) -> list[str]:
    """Input items: lines (without their CR), or what `delimiter` ends (-0, -d), taken as
    they are. A last one without its ending counts. All of them must be UTF-8 text (a
    command is text): the first that is not is refused, by its number, before any runs."""
    ending = b"\n" if delimiter is None else delimiter
    try:
        text = data.decode("utf-8")  # once: a UTF-8 delimiter (parse_delimiter) splits it
    except UnicodeDecodeError as error:
        number = data.count(ending, 0, error.start) + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[error.start]:02x})", source=source,
                         line=number) from None
    items = text.split(ending.decode("utf-8"))
    if items and items[-1] == "":
        items.pop()
    if delimiter is None:
        items = [item.removesuffix("\r") for item in items]
    return items


def parse_delimiter(text: str) -> bytes:
    """-d: a string, with C's escapes (`\\t`, `\\0`, `\\x1f`, `\\012`) as parallel reads it."""
    import codecs

    try:
        delimiter = codecs.escape_decode(text.encode("utf-8"))[0]
    except ValueError as error:
        raise InputError(f"-d: {text!r}: {error}") from None
    if not delimiter:
        raise InputError("-d: the delimiter is empty; give one, such as ':' or '\\0'")
    try:  # the input is read as UTF-8 text: a byte of no character would split characters
        delimiter.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"-d: {text} is not UTF-8 text, and the input is read as UTF-8; "
                         "give characters, such as ':' or '\\0'") from None
    return bytes(delimiter)


def with_replace_string(template: str, replace: str) -> str:
    """-I REPLACE (xargs, parallel): REPLACE stands for `{}` in the command."""
    if not replace:
        raise InputError("-I: the replacement string is empty")
    return template.replace(replace, "{}")


def chunked(combinations: Iterator[tuple[str, ...]], size: int
            ) -> Iterator[tuple[str, ...]]:
    """-N: a job's arguments are the next `size` of one source (the last job's may be
    fewer); -N 0, a job per argument, given none of them."""
    if size == 0:
        yield from (() for _ in combinations)
        return
    while chunk := list(itertools.islice(combinations, size)):
        yield tuple(arg for args in chunk for arg in args)


def packed(args: Sequence[str], slots: int, base: int, cost: Callable[[str], int],
           limit: int) -> list[tuple[str, ...]]:
    """-X, -m: the arguments in order, as many a job as keep its command within `limit`
    bytes (`base` with none, each adding `cost(arg)`), and spread evenly over `slots` jobs
    when they are few (parallel's way: `seq 10 | parallel -j2 -X echo` is two jobs of five).
    An argument too long for a command alone is a job of its own (and refused as one)."""
    per_job = max(1, -(-len(args) // max(1, slots)))
    jobs: list[tuple[str, ...]] = []
    chunk: list[str] = []
    size = base
    for arg in args:
        extra = cost(arg)
        if chunk and (len(chunk) == per_job or size + extra > limit):
            jobs.append(tuple(chunk))
            chunk, size = [], base
        chunk.append(arg)
        size += extra
    if chunk:
        jobs.append(tuple(chunk))
    return jobs


def template_key(template: str) -> str:
    import hashlib

    return hashlib.sha256(template.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def looks_like_template(word: str) -> bool:
    """A first word that is not a file but reads as a command to fill from stdin."""
    return not os.path.exists(word) and word != "-" and (" " in word or has_placeholder(word))

"""Job arrays: one command repeated over many items, as `shoal add --array` and `--each-line`.

    shoal add --array 1-100 'simulate --seed {}'        # items are the numbers 1..100
    shoal add --each-line samples.txt 'align {}.fq'     # items are the lines of a file

Each item makes one job: every `{}` of the command (and of the name, control characters
escaped) is replaced by the item, and the job's env gets SHOAL_ARRAY_INDEX and SHOAL_ARRAY_ITEM.
An --array is kept by the server as one record, its numbers as a few `Run`s (first, last,
step), and its jobs made as workers take them (server/arrays.py); --each-line items are sent
as jobs. Everything here is pure and raises ValueError with a message the caller prefixes with
the option's name.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.core.models import MAX_ENV_VALUE_BYTES

PLACEHOLDER = "{}"
MAX_ARRAY_ITEMS = 1_000_000  # items sent as jobs (--each-line), or numbers spelt out one by one
MAX_ARRAY_TASKS = 100_000_000  # numbers of an --array, kept as runs
FIRST_ARRAY_JOBS = 10_000  # an array's tasks made into jobs with its add (see server/arrays.py)
INDEX_VARIABLE = "SHOAL_ARRAY_INDEX"
ITEM_VARIABLE = "SHOAL_ARRAY_ITEM"

# Slurm's --array syntax, less the % throttle: N, A-B, A-B:STEP, joined by commas. ASCII digits,
# at most 18: every index fits a 64-bit integer, and int() never meets its digit limit.
_ARRAY_ENTRY = re.compile(r"^([0-9]{1,18})(?:-([0-9]{1,18})(?::([0-9]{1,18}))?)?$")
_THROTTLE_CAP = re.compile(r"%(\d+)$")
_SPEC_EXAMPLES = "examples: 1-100, 1-100:10, 1,5,9, 1-3,7"
_TOO_MANY = f"more than {MAX_ARRAY_ITEMS:,} items; split them into several adds"

# An item is (index, text): SHOAL_ARRAY_INDEX and what replaces {} (also SHOAL_ARRAY_ITEM).
ArrayItem = tuple[int, str]


# (first, last, step): the numbers first, first + step, ... up to last, which it reaches.
Run = tuple[int, int, int]


def parse_array_spec(spec: str) -> list[Run]:
    """'1-3,7,10-20:5' -> [(1, 3, 1), (7, 7, 1), (10, 20, 5)]: ascending, each number once,
    as Slurm. Entries that overlap are spelt out and joined (at most MAX_ARRAY_ITEMS
    numbers); apart, each stays a run, so '1-100000000' is one."""
    if "%" in spec:
        throttle = _THROTTLE_CAP.search(spec.strip())
        cap = throttle.group(1) if throttle else "N"
        raise ValueError(f"{spec!r}: a % throttle is not supported; "
                         f"use --limit NAME:{cap} to run at most {cap} at once")
    if not spec.strip():
        raise ValueError(f"no numbers given ({_SPEC_EXAMPLES})")
    runs = sorted(_as_run(*_parse_entry(entry.strip())) for entry in spec.split(","))
    if run_count(runs) > MAX_ARRAY_TASKS:
        raise ValueError(f"{spec!r} makes more than {MAX_ARRAY_TASKS:,} tasks")
    if all(earlier[1] < later[0] for earlier, later in itertools.pairwise(runs)):
        return runs
    # Overlapping entries: each number once. Counted before it is built, so a huge overlap
    # fails fast instead of filling memory.
    if run_count(runs) > MAX_ARRAY_ITEMS:
        raise ValueError(f"{spec!r}: overlapping ranges make {_TOO_MANY}")
    numbers: set[int] = set()
    for first, last, step in runs:
        numbers.update(range(first, last + 1, step))
    return runs_of(sorted(numbers))


def _as_run(first: int, last: int, step: int) -> Run:
    """A run that ends on its last number (1-10:4 is 1, 5, 9)."""
    return first, first + (last - first) // step * step, step


def runs_of(numbers: Sequence[int]) -> list[Run]:
    """Ascending distinct numbers as runs: [1, 2, 3, 7, 9, 11] -> [(1, 3, 1), (7, 11, 2)]."""
    runs: list[Run] = []
    index = 0
    while index < len(numbers):
        first = numbers[index]
        if index + 1 == len(numbers):
            runs.append((first, first, 1))
            break
        step = numbers[index + 1] - first
        end = index + 1
        while end + 1 < len(numbers) and numbers[end + 1] - numbers[end] == step:
            end += 1
        runs.append((first, numbers[end], step))
        index = end + 1
    return runs


def run_count(runs: Sequence[Run]) -> int:
    return sum((last - first) // step + 1 for first, last, step in runs)


def numbers_from(runs: Sequence[Run], start: int, count: int) -> list[int]:
    """`count` numbers of `runs`, from the `start`-th (0-based)."""
    found: list[int] = []
    for first, last, step in runs:
        size = (last - first) // step + 1
        if start >= size:
            start -= size
            continue
        end = min(size, start + count - len(found))
        found.extend(range(first + start * step, first + end * step, step))
        start = 0
        if len(found) == count:
            break
    return found


def _parse_entry(entry: str) -> tuple[int, int, int]:
    """One comma-separated entry as (first, last, step)."""
    if not entry:
        raise ValueError(f"an empty entry between commas ({_SPEC_EXAMPLES})")
    match = _ARRAY_ENTRY.match(entry)
    if not match:
        raise ValueError(f"{entry!r} is not a number, a range A-B or A-B:STEP ({_SPEC_EXAMPLES})")
    first = int(match.group(1))
    last = first if match.group(2) is None else int(match.group(2))
    step = 1 if match.group(3) is None else int(match.group(3))
    if last < first:
        raise ValueError(f"{entry!r}: the range ends before it starts")
    if step < 1:
        raise ValueError(f"{entry!r}: the step must be at least 1")
    return first, last, step


def items_from_lines(text: str) -> list[ArrayItem]:
    """--each-line items: every line that is not blank, as it is (less its line ending),
    indexed from 0 in the order they come."""
    text = text.removeprefix("\ufeff")
    items: list[ArrayItem] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if "\x00" in line:
            raise ValueError(f"line {number} contains a NUL byte")
        # Each item is also the value of SHOAL_ARRAY_ITEM. Bytes are counted (by encoding)
        # only for a line with enough characters to be too long.
        if (len(line) > MAX_ENV_VALUE_BYTES // 4
                and len(line.encode(errors="surrogatepass")) > MAX_ENV_VALUE_BYTES):
            raise ValueError(f"line {number} is longer than {MAX_ENV_VALUE_BYTES} bytes")
        if len(items) == MAX_ARRAY_ITEMS:
            raise ValueError(_TOO_MANY)
        items.append((len(items), line))
    return items


def expand(fields: Mapping[str, Any], items: Sequence[ArrayItem]) -> list[dict[str, Any]]:
    """The job spec fields of each item: `fields` with {} replaced in cmd and name, and the
    item's two variables added to env (they win over an --env of the same name)."""
    command: str = fields["cmd"]
    if PLACEHOLDER not in command:
        # Without it every job would be the same command, which adds only one job.
        raise ValueError(f"the command has no {PLACEHOLDER} to replace")
    name: str | None = fields.get("name")
    name_varies = name is not None and PLACEHOLDER in name
    env: Mapping[str, str] = fields.get("env") or {}
    jobs = []
    for index, item in items:
        job = {
            **fields,
            "cmd": command.replace(PLACEHOLDER, item),
            "env": {**env, INDEX_VARIABLE: str(index), ITEM_VARIABLE: item},
        }
        if name_varies:
            assert name is not None
            job["name"] = name.replace(PLACEHOLDER, _printable(item))
        jobs.append(job)
    return jobs


def _printable(item: str) -> str:
    """An item as a name can hold it: a TAB or other control character written as an escape
    (\\t), since names are one printable line. The command and env get the item as it is."""
    if item.isprintable():
        return item
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in item)

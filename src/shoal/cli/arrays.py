"""Job arrays: one command repeated over many items, as `shoal add --array` and `--each-line`.

    shoal add --array 1-100 'simulate --seed {}'        # items are the numbers 1..100
    shoal add --each-line samples.txt 'align {}.fq'     # items are the lines of a file

Each item makes one job: every `{}` of the command (and of the name, control characters
escaped) is replaced by the item, and the job's env gets SHOAL_ARRAY_INDEX and SHOAL_ARRAY_ITEM.
Everything here is pure and raises ValueError with a message the caller prefixes with the
option's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.core.models import MAX_ENV_VALUE_BYTES

PLACEHOLDER = "{}"
MAX_ARRAY_ITEMS = 1_000_000
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


def parse_array_spec(spec: str) -> list[int]:
    """'1-3,7,10-20:5' -> [1, 2, 3, 7, 10, 15, 20]: ascending, each number once, as Slurm."""
    if "%" in spec:
        throttle = _THROTTLE_CAP.search(spec.strip())
        cap = throttle.group(1) if throttle else "N"
        raise ValueError(f"{spec!r}: a % throttle is not supported; "
                         f"use --limit NAME:{cap} to run at most {cap} at once")
    if not spec.strip():
        raise ValueError(f"no numbers given ({_SPEC_EXAMPLES})")
    numbers: set[int] = set()
    for entry in spec.split(","):
        first, last, step = _parse_entry(entry.strip())
        # Counted before it is built, so '1-999999999999' fails fast instead of filling memory.
        if (last - first) // step + 1 > MAX_ARRAY_ITEMS:
            raise ValueError(f"{spec!r} makes {_TOO_MANY}")
        numbers.update(range(first, last + 1, step))
        if len(numbers) > MAX_ARRAY_ITEMS:
            raise ValueError(f"{spec!r} makes {_TOO_MANY}")
    return sorted(numbers)


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


def items_from_numbers(numbers: Sequence[int]) -> list[ArrayItem]:
    """--array items: the index is the number itself, as Slurm's SLURM_ARRAY_TASK_ID."""
    return [(number, str(number)) for number in numbers]


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

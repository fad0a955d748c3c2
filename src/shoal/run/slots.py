"""`-j`: how many jobs `shoal run` runs at once, in GNU parallel's forms."""

from __future__ import annotations

import re

from shoal.core.errors import InputError

# The local worker is offered up to eight times its slots (see run.driver), which must stay
# within a worker's cores (1,000,000).
MAX_JOBS_AT_ONCE = 100_000
_FORM = re.compile(r"(?P<sign>[+-])?(?P<number>\d+(?:\.\d+)?)(?P<percent>%)?", re.ASCII)


def jobs_at_once(text: str, cores: int) -> int:
    """`N`, `N%` of the cores (rounded down, at least 1), `+N` or `-N` cores (at least 1).

    `0` is one per core, as runmaker4's "autodetect" (GNU parallel's "as many as possible"
    would start every line of a million-line file at once)."""
    form = _FORM.fullmatch(text.strip())
    if form is None or (form["sign"] and form["percent"]) \
            or ("." in form["number"] and not form["percent"]):
        raise InputError(f"-j: {text!r} is not N, N%, +N or -N (jobs at once; N% and ±N "
                         f"count from the {cores} cores here)")
    number = float(form["number"])
    if form["percent"]:
        slots = max(1, int(cores * number / 100))
    elif form["sign"]:
        offset = int(number) if form["sign"] == "+" else -int(number)
        slots = max(1, cores + offset)
    else:
        slots = int(number) or cores
    if slots > MAX_JOBS_AT_ONCE:
        raise InputError(f"-j: {text!r} is more than {MAX_JOBS_AT_ONCE} jobs at once")
    return slots

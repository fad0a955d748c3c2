"""`-j`: how many jobs `shoal run` runs at once, in GNU parallel's forms."""

from __future__ import annotations

import re

from shoal.core.errors import InputError

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
        return max(1, int(cores * number / 100))
    if form["sign"]:
        offset = int(number) if form["sign"] == "+" else -int(number)
        return max(1, cores + offset)
    return int(number) or cores

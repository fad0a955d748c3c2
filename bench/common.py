"""What the benchmarks share: shoal's bytecode compiled, and writing their figures into a
marked section of a document."""

from __future__ import annotations

import compileall
import importlib.util
import statistics
from collections.abc import Sequence
from pathlib import Path


def compile_shoal() -> None:
    """Compile shoal's modules to bytecode, as installing a wheel does. An editable install
    under PYTHONDONTWRITEBYTECODE never writes it, and every `shoal` started would compile
    its modules again first (about 0.15 s): a cost of the checkout, not of shoal."""
    spec = importlib.util.find_spec("shoal")
    if spec is not None and spec.submodule_search_locations:
        for package_dir in spec.submodule_search_locations:
            compileall.compile_dir(package_dir, quiet=1)


def replace_section(path: Path, start: str, end: str, body: str, *, scaffold: str) -> None:
    """Put `body` between the `start` and `end` markers of `path`. A document without them
    gets `scaffold` (which must hold both markers) appended first."""
    doc = path.read_text() if path.exists() else ""
    if start not in doc or end not in doc:
        doc = doc.rstrip("\n") + "\n\n" + scaffold
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{start}\n{body}{end}{tail}")


def seconds_cell(values: Sequence[float]) -> str:
    """A table cell of measured seconds: the median, with the range of the rounds."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"

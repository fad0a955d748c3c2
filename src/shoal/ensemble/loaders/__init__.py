"""Ensemble files: shoal's TOML, NetJobs configurations and remote_runner Python configurations,
told apart by their content."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from shoal.core.errors import InputError
from shoal.ensemble.loaders.common import read_text
from shoal.ensemble.loaders.netjobs import looks_like_netjobs, parse_netjobs
from shoal.ensemble.loaders.remote_runner import load_remote_runner
from shoal.ensemble.loaders.toml import parse_toml
from shoal.ensemble.spec import Ensemble

Kind = Literal["toml", "netjobs", "remote_runner"]

# Lines only Python has: TOML cannot start a line with these outside a multi-line string.
_PYTHON_LINE = re.compile(
    r"^\s*(?:import\s+\w|from\s+[\w.]+\s+import\s|def\s+\w+\s*\(|class\s+\w+"
    r"|[\w.]+\s*=\s*Component\s*\(|config\.add_component\s*\()",
    re.MULTILINE)


def detect_kind(text: str) -> Kind:
    """NetJobs if it opens with a 'label:' block and has an 'end' line; remote_runner if it
    has lines only Python has; otherwise TOML."""
    if looks_like_netjobs(text):
        return "netjobs"
    if _PYTHON_LINE.search(text):
        return "remote_runner"
    return "toml"


def load_ensembles(path: Path | str, *, muddler: Path | None = None,
                   extra_args: str | None = None,
                   arg_parser: Path | None = None) -> list[Ensemble]:
    """The ensembles a file describes, in the order to run them (NetJobs: one per test).
    `muddler`, `extra_args` and `arg_parser` are remote_runner's."""
    path = Path(path)
    text = read_text(path)
    kind = detect_kind(text)
    for given, option in ((muddler, "--muddler"), (extra_args, "--extra-args"),
                          (arg_parser, "--arg-parser")):
        if given is not None and kind != "remote_runner":
            raise InputError(f"{option} applies to remote_runner configurations; this file "
                             f"reads as {kind}", source=str(path))
    if kind == "netjobs":
        return parse_netjobs(text, source=str(path))
    if kind == "remote_runner":
        return load_remote_runner(path, text, muddler=muddler, extra_args=extra_args,
                                  arg_parser=arg_parser)
    return [parse_toml(text, source=str(path), base_dir=path.absolute().parent,
                       default_name=path.stem)]


__all__ = ["Kind", "detect_kind", "load_ensembles"]

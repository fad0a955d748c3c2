"""What the ensemble loaders share: names, local paths, commands, and model errors."""

from __future__ import annotations

import os
import posixpath
import re
import reprlib
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shoal.core.errors import InputError
from shoal.core.models import MAX_LINE_BYTES
from shoal.ensemble.spec import Component, Ensemble, FileCopy

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")

# How values from a file are quoted in messages: short, one line, never too deep to print.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 60
_QUOTE.maxlong = 40
_QUOTE.maxlevel = 3


def read_text(path: Path) -> str:
    """A file's UTF-8 text (a byte order mark skipped), or an InputError saying why not."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such file", source=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", source=str(path)) from None
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror or error}", source=str(path)) from None
    except UnicodeDecodeError as error:
        data = error.object
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise InputError(f"not UTF-8 text (byte {column} of the line is "
                         f"{data[error.start]:#04x})", source=str(path), line=line) from None


def split_lines(text: str) -> list[str]:
    """Lines split on '\\n' only, as editors and tomllib count them (line n is index n-1)."""
    return text.split("\n")


def check_line_lengths(text: str, source: str) -> None:
    """Refuse a line longer than MAX_LINE_BYTES, naming it, before anything parses the text."""
    if len(text) <= MAX_LINE_BYTES // 4:  # no line can be that long: skip the split
        return
    for number, line in enumerate(split_lines(text), start=1):
        if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8", "surrogatepass")) > \
                MAX_LINE_BYTES:
            raise InputError(f"the line is longer than {MAX_LINE_BYTES} bytes", source=source,
                             line=number)


def quoted(value: Any) -> str:
    """repr(value) for a one-line message: shortened, and safe on any object."""
    try:
        return _QUOTE.repr(value)
    except Exception:  # a user's object whose repr fails
        return f"<{type(value).__name__}>"


def safe_name(text: str) -> str:
    """A component name the model accepts: unsafe characters become '_', at most 128 long.

    Foreign formats name components freely ('My main', a host list entry); shoal's names
    must be usable in CLI arguments and file names.
    """
    return _NAME_UNSAFE.sub("_", text)[:128] or "_"


def local_path(path: str, relative_to: Path) -> str:
    """An absolute local path: '~' expanded, relative paths taken from `relative_to`."""
    expanded = os.path.expanduser(path)
    return os.path.normpath(os.path.join(relative_to, expanded))


def remote_path(path: str) -> str:
    """A remote path tidied ('./a//b' -> 'a/b'); relative ones stay relative (to base_dir).
    A trailing '/' stays: it means 'into this directory' (see ensemble.manifest)."""
    tidy = posixpath.normpath(path)
    return tidy + "/" if path.endswith("/") and not tidy.endswith("/") else tidy


def missing_local(paths: Iterable[str]) -> list[str]:
    return [path for path in paths if not os.path.lexists(path)]


def command_from(executable: str, args: Sequence[str]) -> str:
    """A bash command line running `executable` with exactly these arguments, nothing expanded."""
    return shlex.join([executable, *args])


def build_ensemble(fields: dict[str, Any], *, source: str, line: int | None = None) -> Ensemble:
    """Ensemble(**fields), with the model's complaints turned into one InputError line."""
    try:
        return Ensemble(**fields)
    except ValidationError as error:
        raise InputError(describe_validation(error, fields), source=source, line=line) from None


def build_file_copy(local: str, remote: str, *, source: str, line: int | None,
                    label: str) -> FileCopy:
    try:
        return FileCopy(local=local, remote=remote)
    except ValidationError as error:
        message = describe_validation(error, {})
        raise InputError(f"{label}: files: {message}", source=source, line=line) from None


def build_component(fields: dict[str, Any], *, source: str, line: int | None) -> Component:
    try:
        return Component(**fields)
    except ValidationError as error:
        label = fields.get("name", "?")
        message = describe_validation(error, fields)
        raise InputError(f"component {quoted(label)}: {message}", source=source,
                         line=line) from None


def describe_validation(error: ValidationError, fields: dict[str, Any]) -> str:
    """The first problem pydantic found, as 'field: message' (ValueError's prefix dropped)."""
    first = error.errors()[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] == "components" and len(location) > 1:
        index = int(location[1])
        components = fields.get("components") or []
        name = getattr(components[index], "name", index) if index < len(components) else index
        location = [f"component {quoted(name)}", *location[2:]]
    return f"{'.'.join(location)}: {message}" if location else message

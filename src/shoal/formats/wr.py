"""The `wr` format, as `wr add -f` reads it: a command, then optionally a TAB and JSON options.

As in wr, a line may also be a JSON object alone whose "cmd" option is the command, and when a
line has both a command column and a "cmd" option, the command column wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from shoal.formats.common import ParsedJob, SpecBuilder, is_blank_or_comment
from shoal.formats.wr_options import OptionError, map_options

# A line that is only a JSON object starts '{"' (or is '{}'); a shell group command such as
# '{ make; make install; }' needs a space after the brace and so is still a command.
JSON_ONLY_LINE = re.compile(r'\{\s*["}]')


def parse_wr(text: str, builder: SpecBuilder) -> Iterator[ParsedJob]:
    for number, line in builder.lines(text):
        if is_blank_or_comment(line):
            continue
        yield _parse_line(line, number, builder)


def _parse_line(line: str, number: int, builder: SpecBuilder) -> ParsedJob:
    command, tab, options_text = line.partition("\t")
    if "\t" in options_text:
        raise builder.error(
            "more than one TAB; a wr line is a command, a TAB and a JSON object of options", number
        )
    options: dict[str, Any] = {}
    if tab and options_text.strip():
        leading = len(options_text) - len(options_text.lstrip())
        column = len(command) + 2 + leading  # 1-based column where the JSON starts
        options = _load_options(options_text.strip(), column, " after the tab", builder, number)
    command = command.strip()
    if not tab and JSON_ONLY_LINE.match(command):
        column = len(line) - len(line.lstrip()) + 1
        options = _load_options(command, column, "", builder, number)
        command = ""

    try:
        mapped = map_options(options)
    except OptionError as error:
        raise builder.error(str(error), number) from None
    except RecursionError:
        raise builder.error("the options are nested too deeply", number) from None

    if command:
        mapped.fields["cmd"] = command
        mapped.labels.pop("cmd", None)
    elif "cmd" not in mapped.fields:
        raise builder.error('no command: write one before the TAB, or give a "cmd" option', number)
    return builder.job(mapped.fields, number, mapped.labels)


def _load_options(
    text: str, column: int, where: str, builder: SpecBuilder, number: int
) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise builder.error(
            f"bad JSON{where}: {error.msg} (column {column + error.pos})", number
        ) from None
    except RecursionError:
        raise builder.error(f"bad JSON{where}: nested too deeply", number) from None
    except ValueError as error:  # e.g. NaN, or an integer with thousands of digits
        reason = str(error).split(":")[0]  # drop advice about Python internals
        raise builder.error(f"bad JSON{where}: {reason}", number) from None
    if not isinstance(value, dict):
        raise builder.error(
            f'the JSON{where} is not an object; options look like {{"memory": "1G"}}', number
        )
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")

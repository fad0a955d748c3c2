"""What every input format shares: the parsed job record, line splitting, and spec building."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shoal.core.errors import InputError
from shoal.core.models import MAX_LINE_BYTES, JobSpec, check_command, with_shared_empties


@dataclass(slots=True)  # not frozen: that makes __init__ 5x slower, a second a million lines
class ParsedJob:
    """One job read from an input file, with where it came from. A line that gives only its
    command is the defaults' spec (`base`) and that command: the job's own JobSpec is made
    when `spec` is asked for, and a large add sent to a server never asks (making one for
    each line cost two thirds of reading the file)."""

    base: JobSpec  # the job's spec; with `command`, the defaults' spec
    line: int  # 1-based line number in the file
    state_offset: int | None = None  # runmaker only: byte offset of the state character
    state_char: str | None = None  # runmaker only: the state character as read
    command: str | None = None  # the line's command, when only that differs from `base`
    copied: tuple[str, ...] = ()  # with `command`: the base's collections each job copies
    _made: JobSpec | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> JobSpec:
        """The job's own spec, made the first time it is asked for."""
        if self.command is None:
            return self.base
        if self._made is None:
            # Each job its own collections: a change to one job's env is not another's. An
            # empty one is shared, and refuses a change.
            self._made = self.base.model_copy(update={
                "cmd": self.command,
                **{name: _copy(getattr(self.base, name)) for name in self.copied}})
        return self._made


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based number, line) split on '\\n' only.

    str.splitlines would also split on form feeds, U+2028 and other characters that may
    legitimately sit inside a command, and would then disagree with editors on line numbers.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return enumerate(lines, start=1)


def is_blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def describe_validation_error(error: ValidationError, labels: Mapping[str, str]) -> str:
    """One line for pydantic's first complaint, naming the field or the option it came from."""
    problems = error.errors(include_url=False)
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"][:1]) or "job"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a job field"
    name = f'option "{labels[field]}"' if field in labels else f'field "{field}"'
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{name}: {message}{more}"


class SpecBuilder:
    """Turns the fields read from one line into a JobSpec, with the caller's defaults underneath."""

    def __init__(self, defaults: Mapping[str, Any] | None, source: str):
        self.source = source
        self._defaults = dict(defaults or {})
        try:
            # Checked once here so a bad default is reported as such, not blamed on line 1.
            self.base = with_shared_empties(
                JobSpec.model_validate({"cmd": "true", **self._defaults}))
            self._copied = tuple(name for name, value in self.base
                                 if isinstance(value, list | dict) and value)
        except ValidationError as error:
            message = describe_validation_error(error, {})
            raise InputError(f"bad default: {message}", source=source) from None

    def job(self, fields: Mapping[str, Any], line: int,
            labels: Mapping[str, str] | None = None, *, state_offset: int | None = None,
            state_char: str | None = None) -> ParsedJob:
        """labels maps a JobSpec field to the name the user wrote, for error messages."""
        if fields.keys() == {"cmd"} and isinstance(command := fields["cmd"], str) \
                and _good_command(command):
            # Only the command differs from the checked defaults: the defaults' spec with
            # this command is the whole check, at a fifth of the cost of validating it anew.
            return ParsedJob(self.base, line, state_offset, state_char, command,
                             self._copied)
        try:
            spec = JobSpec.model_validate({**self._defaults, **fields})
        except ValidationError as error:
            message = describe_validation_error(error, labels or {})
            raise InputError(message, source=self.source, line=line) from None
        return ParsedJob(spec, line, state_offset, state_char)

    def build(self, fields: Mapping[str, Any], line: int,
              labels: Mapping[str, str] | None = None) -> JobSpec:
        """The JobSpec of `job`."""
        return self.job(fields, line, labels).spec

    def error(self, message: str, line: int) -> InputError:
        return InputError(message, source=self.source, line=line)

    def lines(self, text: str) -> Iterator[tuple[int, str]]:
        """numbered_lines, refusing a line longer than MAX_LINE_BYTES before anything parses it."""
        for number, line in numbered_lines(text):
            # Characters first: counting bytes means encoding, needed only for long lines.
            if len(line) > MAX_LINE_BYTES // 4 and utf8_length(line) > MAX_LINE_BYTES:
                raise self.error(f"the line is longer than {MAX_LINE_BYTES} bytes", number)
            yield number, line


def _copy(value: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
    """A collection of a job's own; the entries of its files (dicts) copied too."""
    if isinstance(value, dict):
        return dict(value)
    return [dict(item) if isinstance(item, dict) else item for item in value]


def _good_command(command: str) -> bool:
    try:
        check_command(command)
    except ValueError:  # pydantic's own error; validating the spec says what is wrong
        return False
    return True


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))

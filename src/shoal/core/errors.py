"""shoal's error tree. Foreign exceptions are translated into these at the boundary."""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error shoal raises on purpose."""

    exit_code = 1


class InputError(ShoalError):
    """Bad usage or bad input (a file, a line, a field). Nothing was changed."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(f"{where}{message}")


class BatchInputError(InputError):
    """A job of a batch being added is refused: `index` (from 0) says which, so a caller that
    knows where each job came from (a file's line) can say so."""

    def __init__(self, index: int, reason: str, message: str | None = None):
        self.index = index
        self.reason = reason
        super().__init__(message or f"job {index + 1} of the batch: {reason}")


class IllegalTransition(ShoalError):
    """A state change the job state machine does not allow."""


class NotFound(ShoalError):
    """A job, worker or group that does not exist."""

    exit_code = 2


class Conflict(ShoalError):
    """The request is valid but does not fit the job's current state."""

    exit_code = 2


class NameTaken(Conflict):
    """A worker's name belongs to another process: one connected and answering (`held` False),
    or one whose running jobs still wait for it to come back (`held` True)."""

    def __init__(self, message: str, *, held: bool):
        super().__init__(message)
        self.held = held


class AuthError(ShoalError):
    """Missing, unknown or insufficient token."""

    exit_code = 2


class Forbidden(AuthError):
    """A valid token whose role may not do this."""


class ConnectError(ShoalError):
    """The server cannot be reached."""

    exit_code = 3


class ServerError(ShoalError):
    """The server answered with an error it could not attribute to the request."""

    exit_code = 1


class StoreUnavailable(ShoalError):
    """The database cannot be written (full disk, read-only file)."""

    exit_code = 1


class ProtocolError(ShoalError):
    """A peer sent a message that does not follow the worker protocol."""


def json_kind(value: object, inside: bool = False) -> str:
    """What a value read from JSON is, for a message that must not show it (a secret, or
    anything a user's file holds where a string belongs)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list):
        if inside:
            return "an array"
        odd = [item for item in value if not isinstance(item, str)]
        return f"an array holding {json_kind(odd[0], True)}" if odd else "an array"
    return {str: "a string", int: "a number", float: "a number", dict: "an object"}.get(
        type(value), "null")

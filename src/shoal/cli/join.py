"""Where `shoal worker` takes its server and token from, kept out of other users' sight.

A command line is shown to every user of the host (`ps`), so the safe forms come first:
`--join-file F` (a file only its owner can read), `SHOAL_JOIN` (a process's environment is
readable by its user only) and `--join -` (standard input). A token still given as an argument
is overwritten in the process's command line as soon as it is read, with a warning. The
variables are then removed from the environment, so the worker's jobs do not inherit its token.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shoal.cmdline import hide_arguments
from shoal.core.errors import InputError
from shoal.home import SCHEME, SERVER_VARIABLE, TOKEN_VARIABLE

log = logging.getLogger("shoal.worker")

JOIN_VARIABLE = "SHOAL_JOIN"
MAX_JOIN_BYTES = 64 * 1024  # a join string is a line; a file or pipe bigger than this is not one
_JOIN_RE = re.compile(SCHEME + r"[^\s'\"]+")


@dataclass(frozen=True)
class WorkerAddress:
    """What a worker dials: `server` (a URL or connection string; None: `$SHOAL_HOME`) and
    `token` (None: the one the string or the home carries); `warning`, if its token was
    given on the command line, to log once the worker has found its server."""

    server: str | None
    token: str | None
    warning: str | None = None
    # Where each came from, to name in an error: --server, SHOAL_JOIN, a file, ...
    server_origin: str = "the server address"
    token_origin: str = "the token"

    def __repr__(self) -> str:  # the token, and the one in a connection string, are secrets
        return "WorkerAddress(...)"


def worker_address(join: str | None, join_file: Path | None, server: str | None,
                   token: str | None) -> WorkerAddress:
    """The worker's server and token from its options, else the environment; the secrets met
    on the command line are hidden there, and those in the environment removed from it."""
    given = [name for name, value in (("--join", join), ("--join-file", join_file),
                                      ("--server", server)) if value is not None]
    if len(given) > 1:
        raise InputError(f"{given[1]}: give only one of --join, --join-file and --server")
    strings_given = [value for value in (join, server) if value and value.startswith(SCHEME)]
    tokens_given = [token] if token else []
    server_origin = "--server" if server is not None else SERVER_VARIABLE
    token_origin = "--token" if token is not None else TOKEN_VARIABLE
    if join == "-":
        join = read_join_text(_read_stdin(), "standard input")
        server_origin = "--join -"
    elif join is not None:
        join = _check_join(join, "--join")
        server_origin = "--join"
    elif join_file is not None:
        join = read_join_file(join_file)
        server_origin = str(join_file)
    elif server is None and os.environ.get(JOIN_VARIABLE):
        join = _check_join(os.environ[JOIN_VARIABLE], JOIN_VARIABLE)
        server_origin = JOIN_VARIABLE
    if server is None and join is None:
        server = os.environ.get(SERVER_VARIABLE) or None
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE) or None
    _forget_environment()
    warning = _hide(strings_given, tokens_given)
    return WorkerAddress(join or server, token, warning, server_origin, token_origin)


def read_join_file(path: Path) -> str:
    """The connection string in `path`: one line, or the `shoal worker --join ...` line the
    server writes to `$SHOAL_HOME/join`. Refused if others can read it or change it."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise InputError("not a regular file", source=str(path))
            if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
                who = "read" if mode & stat.S_IROTH else "change"
                raise InputError(f"other users can {who} it (mode {stat.S_IMODE(mode):04o}); "
                                 f"`chmod 600 {path}`, and as its token may have been seen, "
                                 "consider a new one (`shoal token create --role worker`)",
                                 source=str(path))
            if mode & stat.S_IRGRP:
                log.warning("%s: its group can read it, and so the worker token in it", path)
            content = handle.read(MAX_JOIN_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read it: {exc.strerror or exc}", source=str(path)) from None
    return read_join_text(content, str(path))


def read_join_text(content: bytes, where: str) -> str:
    """The one connection string in `content` (a bare line, or a `shoal worker --join` line)."""
    if len(content) > MAX_JOIN_BYTES:
        raise InputError(f"more than {MAX_JOIN_BYTES} bytes: not a connection string",
                         source=where)
    found = set(_JOIN_RE.findall(content.decode("utf-8", errors="replace")))
    if not found:
        raise InputError(f"no {SCHEME}... connection string in it (the line `shoal server` "
                         "printed, or its $SHOAL_HOME/join file)", source=where)
    if len(found) > 1:
        raise InputError("more than one connection string in it", source=where)
    return found.pop()


def _check_join(text: str, where: str) -> str:
    if not text.startswith(SCHEME):
        raise InputError(f"{where}: expected the {SCHEME}... string `shoal server` printed")
    return text


def _read_stdin() -> bytes:
    if sys.stdin is None:
        raise InputError("--join -: there is no standard input to read the string from")
    if sys.stdin.isatty():  # typed or pasted: do not echo it
        return getpass.getpass("connection string: ").encode()
    return sys.stdin.buffer.read(MAX_JOIN_BYTES + 1)


def _forget_environment() -> None:
    """The worker's jobs inherit its environment: keep its token out of it."""
    os.environ.pop(JOIN_VARIABLE, None)
    os.environ.pop(TOKEN_VARIABLE, None)
    if os.environ.get(SERVER_VARIABLE, "").startswith(SCHEME):  # a string carries a token
        os.environ.pop(SERVER_VARIABLE)


def _hide(connection_strings: list[str], tokens: list[str]) -> str | None:
    """Overwrite the tokens given as arguments (alone, or inside connection strings); say
    what others could see."""
    secrets = set(tokens)
    for text in connection_strings:
        try:
            userinfo = urlsplit(text).netloc.rpartition("@")[0]
        except ValueError:  # not a connection string after all: refused once it is read
            userinfo = text.removeprefix(SCHEME).partition("@")[0] if "@" in text else ""
        secrets.update(part for part in (userinfo, unquote(userinfo)) if part)
    if not secrets:
        return None
    seen = ("could read it until now" if hide_arguments(secrets)
            else "can read it (`ps`)")
    return (f"the worker token was given on the command line, where every user of this host "
            f"{seen}; give it with --join-file FILE, SHOAL_JOIN or --join - instead")

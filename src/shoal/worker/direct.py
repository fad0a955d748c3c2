"""Commands that need no shell: a program and its arguments, started as bash would start them.

`bash -c 'prog arg'` parses the line, finds `prog` on the PATH and execs it in its own
process (bash's last command replaces it). Its start-up is the cost: about a millisecond of
CPU, as much as a short job's own work. A command that is only words (plain characters,
'single quotes', "double quotes" without `$`, backquote, backslash or `!`), whose first
word is no builtin or keyword of bash, assignment or path expansion, means exactly its words
as argv: such a command is started directly, with the environment bash would give it (PWD,
SHLVL, OLDPWD and `_` as bash sets them). Anything else, and any command whose start
fails, goes through `bash -c` as always, which also gives the usual messages and exit codes.
An environment that can change how bash reads or runs a line (BASH_ENV, exported functions,
shell options) sends every command through bash.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# `compgen -b` and `compgen -k` of bash 5: a first word that bash runs itself.
_BASH_OWN = frozenset(re.split(r"\s+", """
. : [ alias bg bind break builtin caller cd command compgen complete compopt continue declare
dirs disown echo enable eval exec exit export false fc fg getopts hash help history jobs kill
let local logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt
source suspend test times trap true type typeset ulimit umask unalias unset wait
if then else elif fi case esac for select while until do done in function time { } ! [[ ]]
coproc
""".strip()))
_PLAIN = r"[A-Za-z0-9_./:@%+,=-]"
# One character or one quoted part at a time: `(?:x+)+` would backtrack exponentially on a
# long word that ends in something else (`a/long/path;`).
_WORD = rf"(?:{_PLAIN}|'[^']*'|\"[^\"$`\\!]*\")+"
# The first word unquoted and no assignment (no '='); words one space apart.
_LINE = re.compile(rf"([A-Za-z0-9_./:@%+,-]+)((?: {_WORD})*)")
_WORDS = re.compile(_WORD)
_SEGMENTS = re.compile(rf"({_PLAIN}+)|'([^']*)'|\"([^\"]*)\"")
# Variables that change how bash reads or runs a line, or what it puts in the environment.
_SHELL_SETTINGS = (b"BASH_ENV", b"ENV", b"SHELLOPTS", b"BASHOPTS", b"IFS", b"GLOBIGNORE",
                   b"POSIXLY_CORRECT")


def direct_argv(command: str) -> list[str] | None:
    """The argv `bash -c command` would exec, if the command is only words; else None."""
    line = _LINE.fullmatch(command)
    if line is None or line.group(1) in _BASH_OWN:
        return None
    rest = line.group(2)
    if "'" not in rest and '"' not in rest:  # plain words, one space apart (most commands)
        return [line.group(1), *rest.split(" ")[1:]]
    return [line.group(1)] + [_unquoted(word.group(0)) for word in _WORDS.finditer(rest)]


def _unquoted(word: str) -> str:
    if "'" not in word and '"' not in word:
        return word
    return "".join(next(part for part in segment.groups() if part is not None)
                   for segment in _SEGMENTS.finditer(word))


def direct_start(command: str, env: dict[bytes, bytes], cwd: str
                 ) -> tuple[bytes, list[bytes], dict[bytes, bytes]] | None:
    """(program, argv, environment) to exec for `command` run in `cwd` with `env`, when it
    needs no shell and its program is found; else None (run it through bash)."""
    prepared = direct_environment(env, cwd)
    if prepared is None:
        return None
    started, directories = prepared
    found = direct_program(command, directories)
    if found is None:
        return None
    program, argv = found
    started[b"_"] = program
    return program, argv, started


def direct_environment(env: dict[bytes, bytes], cwd: str
                       ) -> tuple[dict[bytes, bytes], tuple[bytes, ...] | None] | None:
    """The environment bash would give a program it starts in `cwd` with `env`, but for `_`
    (the program's path), and the PATH directories it would search (None: names without a
    "/" go through bash); None if with this environment every command goes through bash."""
    if not env.keys().isdisjoint(_SHELL_SETTINGS) or \
            b"\0BASH_FUNC_" in b"\0" + b"\0".join(env):  # names hold no NUL
        return None
    level = env.get(b"SHLVL", b"0")
    if not level.isdigit() or (level.startswith(b"0") and level != b"0"):
        return None  # bash would rewrite it: let it
    started = dict(env)
    if b"OLDPWD" in env and not os.path.isdir(os.path.join(os.fsencode(cwd), env[b"OLDPWD"])):
        del started[b"OLDPWD"]  # bash keeps it only if it names a directory
    started[b"PWD"] = _pwd(env.get(b"PWD"), cwd)
    started[b"SHLVL"] = level
    return started, _search_path(env.get(b"PATH"))


def direct_program(command: str, directories: tuple[bytes, ...] | None
                   ) -> tuple[bytes, list[bytes]] | None:
    """(program, argv) of `command` if it needs no shell and its program is found, searching
    `directories` for a name without a "/" (see `direct_environment`)."""
    argv = direct_argv(command)
    if argv is None:
        return None
    program = os.fsencode(argv[0])
    if b"/" not in program:
        if directories is None:
            return None  # bash's default path, or entries relative to the job's directory
        found = _found_lately(program, directories)
        if found is None:
            return None  # bash says why, and exits 127
        program = found
    return program, [os.fsencode(arg) for arg in argv]


@functools.lru_cache(maxsize=64)
def _search_path(path: bytes | None) -> tuple[bytes, ...] | None:
    """PATH's directories, each ending in "/", first occurrences only; None unless every
    entry is absolute."""
    if not path:
        return None
    entries = path.split(b":")
    if not all(entry.startswith(b"/") for entry in entries):
        return None
    return tuple(dict.fromkeys(entry if entry.endswith(b"/") else entry + b"/"
                               for entry in entries))


class Recent(Generic[K, V]):
    """Answers kept for `seconds` (what they were made from is on the file system, which may
    change), at most `kept` of them: a job a millisecond long cannot pay for them each."""

    def __init__(self, seconds: float, kept: int) -> None:
        self.seconds, self.kept = seconds, kept
        self._answers: dict[K, tuple[V, float]] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        now = time.monotonic()
        answer = self._answers.get(key)
        if answer is not None and now - answer[1] < self.seconds:
            return answer[0]
        value = make()
        if len(self._answers) >= self.kept:
            self._answers.clear()
        self._answers[key] = (value, now)
        return value


# A program's place on PATH, kept a second (as bash's own table of commands keeps it for the
# shell's life): otherwise a failed `access` per directory before it, every job. A program
# gone since fails its exec, and the command then goes through bash, which searches again.
_FOUND: Recent[tuple[bytes, tuple[bytes, ...]], bytes | None] = Recent(1.0, 256)


def _found_lately(name: bytes, directories: tuple[bytes, ...]) -> bytes | None:
    return _FOUND.get((name, directories), lambda: find_program(name, directories))


def find_program(name: bytes, directories: tuple[bytes, ...]) -> bytes | None:
    """The first executable non-directory `name` in these directories, as bash's search (and
    `shutil.which`) finds it, at a failed `access` per directory before it (a failed stat
    raises in Python, twice the cost with a long PATH)."""
    for directory in directories:
        candidate = directory + name
        if not os.access(candidate, os.X_OK):
            continue
        try:
            if not stat.S_ISDIR(os.stat(candidate).st_mode):
                return candidate
        except OSError:
            continue
    return None


def _pwd(inherited: bytes | None, cwd: str) -> bytes:
    """What bash sets PWD to: the inherited value if it names the directory, else the path."""
    if inherited and inherited.startswith(b"/"):
        try:
            if os.path.samefile(inherited, cwd):
                return inherited
        except OSError:
            pass
    return os.fsencode(cwd)

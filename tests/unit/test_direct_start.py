"""A command that needs no shell is started as `bash -c` would start it: the same argv, the
same environment. Checked against bash itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.worker.direct import direct_argv, direct_start, find_program

PRINTER = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n"


@pytest.mark.parametrize(("command", "argv"), [
    ("bash -c 'true 1'", ["bash", "-c", "true 1"]),
    ("gzip -9 data/a.csv", ["gzip", "-9", "data/a.csv"]),
    ("python3 run.py --out=\"a b\" '' \"\"", ["python3", "run.py", "--out=a b", "", ""]),
    ("./sim --seed=4 x@y:z,w+%", ["./sim", "--seed=4", "x@y:z,w+%"]),
    ("prog 'it''s'", ["prog", "its"]),
    # Shell syntax, builtins, keywords, assignments, expansions: left to bash.
    ("echo hi", None), ("true", None), (". script", None), ("cd /tmp", None),
    ("if true", None), ("A=1 prog", None), ("prog $HOME", None), ("prog \"$HOME\"", None),
    ("prog *.c", None), ("prog ~/x", None), ("prog a;b", None), ("prog a|b", None),
    ("prog a>b", None), ("prog a  b", None), (" prog", None), ("prog ", None),
    ("prog\tx", None), ("prog {a,b}", None), ("prog \\x", None), ("prog `x`", None),
    ("prog \"a\\b\"", None), ("prog #x", None), ("prog a&", None), ("prog (x)", None),
    ("'prog' x", None), ("", None),
    ("touch " + "a/" * 40 + "started; echo a", None),  # once exponential: no backtracking
])
def test_what_is_started_directly(command: str, argv: list[str] | None) -> None:
    assert direct_argv(command) == argv


@pytest.fixture(scope="module")
def printer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("direct") / "argv"
    path.write_text(PRINTER)
    path.chmod(0o755)
    return path


def bash_argv(command: str) -> list[str]:
    out = subprocess.run(["bash", "-c", command], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


_CHARS = st.sampled_from(list("ab=-./:@%+,_ '\"$`\\!*?[]{}~#;&|<>()\t\n"))


@settings(max_examples=300, deadline=None)
@given(st.text(_CHARS, max_size=12))
def test_a_command_started_directly_gets_the_argv_bash_would_give(
        printer: Path, rest: str) -> None:
    command = f"{printer} {rest}"
    argv = direct_argv(command)
    if argv is not None:
        assert argv[1:] == bash_argv(command)


_INSIDE = st.text(st.sampled_from(list("ab =-.*?[]{}~#;&|<>()\t\n\"$`\\!")), max_size=6)
_SEGMENT = st.one_of(
    st.text(st.sampled_from(list("ab=-./:@%+,_")), min_size=1, max_size=4),
    _INSIDE.map(lambda text: "'" + text.replace("'", "") + "'"),
    _INSIDE.map(lambda text: '"' + "".join(c for c in text if c not in '"$`\\!') + '"'),
)
_WORDS = st.lists(st.lists(_SEGMENT, min_size=1, max_size=3).map("".join), max_size=4)


@settings(max_examples=150, deadline=None)
@given(_WORDS)
def test_words_of_any_quoting_reach_the_program_as_bash_passes_them(
        printer: Path, words: list[str]) -> None:
    command = " ".join([str(printer), *words])
    argv = direct_argv(command)
    assert argv is not None
    assert argv[1:] == bash_argv(command)


def test_the_environment_is_what_bash_gives(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    base = {b"PATH": os.environb[b"PATH"], b"HOME": b"/nowhere", b"OLDPWD": b"/tmp",
            b"A-B": b"kept"}
    cases = [
        ({}, tmp_path / "real"),
        ({b"SHLVL": b"3", b"PWD": os.fsencode(tmp_path / "link")}, tmp_path / "real"),
        ({b"PWD": b"/somewhere/else", b"OLDPWD": b"/no/such/dir"}, tmp_path / "real"),
        ({b"OLDPWD": b"real"}, tmp_path),
    ]
    for extra, cwd in cases:
        env = {**base, **extra}
        started = direct_start("env -0", env, str(cwd))
        assert started is not None
        program, argv, direct_env = started
        direct = subprocess.run(argv, executable=program, env=direct_env, cwd=cwd,
                                capture_output=True, check=True).stdout
        through_bash = subprocess.run(["bash", "-c", "env -0"], env=env, cwd=cwd,
                                      capture_output=True, check=True).stdout
        assert sorted(direct.split(b"\0")) == sorted(through_bash.split(b"\0"))


@pytest.mark.parametrize("env", [
    {b"BASH_ENV": b"/tmp/rc"}, {b"BASH_FUNC_prog%%": b"() { :; }"}, {b"SHELLOPTS": b"x"},
    {b"SHLVL": b"007"}, {b"SHLVL": b"-1"}, {b"PATH": b"/nonexistent"},
    {b"PATH": b"bin:/usr/bin:/bin"}, {b"PATH": b":/usr/bin:/bin"}, {},
])
def test_environments_that_bash_would_read_differently_go_through_bash(
        env: dict[bytes, bytes]) -> None:
    full = {b"PATH": os.environb[b"PATH"], **env}
    if env == {}:
        full.pop(b"PATH")  # bash searches its own default path
    assert direct_start("gzip -9 x", full, "/") is None


def test_the_program_found_is_the_one_bash_and_which_find(tmp_path: Path) -> None:
    # Before the real one: a directory of that name, a file that is not executable, nothing.
    layout = {"a": "dir", "b": "plain", "c": None, "d": "exec", "e": "exec"}
    for name, kind in layout.items():
        (tmp_path / name).mkdir()
        target = tmp_path / name / "prog"
        if kind == "dir":
            target.mkdir()
        elif kind is not None:
            target.write_text("#!/bin/sh\necho found\n")
            target.chmod(0o755 if kind == "exec" else 0o644)
    path = ":".join(str(tmp_path / name) for name in layout)
    directories = tuple(os.fsencode(f"{tmp_path / name}/") for name in layout)
    expected = shutil.which("prog", path=path)
    assert expected == str(tmp_path / "d" / "prog")
    assert find_program(b"prog", directories) == os.fsencode(expected)
    assert find_program(b"missing", directories) is None


def test_recent_answers_are_kept_for_their_time_and_at_most_so_many() -> None:
    from shoal.worker.direct import Recent

    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    kept: Recent[str, str] = Recent(3600.0, 2)
    assert [kept.get(k, lambda k=k: make(k)) for k in "aab"] == ["A", "A", "B"]
    assert made == ["a", "b"]  # "a" made once
    kept.get("c", lambda: make("c"))  # a third: the two kept go
    kept.get("a", lambda: make("a"))
    assert made == ["a", "b", "c", "a"]
    stale: Recent[str, str] = Recent(0.0, 10)  # nothing kept past its time
    stale.get("x", lambda: make("x"))
    stale.get("x", lambda: make("x"))
    assert made[-2:] == ["x", "x"]

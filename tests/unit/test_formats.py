"""Input formats: lines, wr, runmaker, detection, and rewriting runmaker states in place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.formats import (
    FORMATS,
    FileCheck,
    ParsedJob,
    RunmakerFile,
    check_file,
    detect_format,
    parse_file,
    parse_text,
    read_text,
)
from shoal.formats.lines import count_lines
from shoal.formats.runmaker import READABLE_STATES
from shoal.formats.wr_options import OPTIONS

GiB = 1024**3
MiB = 1024**2


def fields(job: ParsedJob) -> dict[str, Any]:
    """The fields a test cares about: everything that differs from JobSpec's defaults."""
    return job.spec.model_dump(exclude_defaults=True)


# --- good inputs -------------------------------------------------------------------------

GOOD = [
    # lines
    ("lines", "echo a\n", [(1, {"cmd": "echo a"})]),
    (
        "lines",
        "  echo a  \r\n\n# note\n   # indented note\necho b",
        [
            (1, {"cmd": "echo a"}),
            (5, {"cmd": "echo b"}),
        ],
    ),
    ("lines", "echo one \\\necho two\n", [(1, {"cmd": "echo one \\"}), (2, {"cmd": "echo two"})]),
    ("lines", "printf 'a\\fb'\x0c\n", [(1, {"cmd": "printf 'a\\fb'"})]),
    ("lines", "echo a\u2028b\n", [(1, {"cmd": "echo a\u2028b"})]),
    ("lines", "# only comments\n\n", []),
    ("lines", "", []),
    # wr: plain commands and the mapped options
    ("wr", "echo a\n", [(1, {"cmd": "echo a"})]),
    (
        "wr",
        'echo a\t{"memory": "1G", "time": "1h30m", "cpus": 1.5}\n',
        [
            (1, {"cmd": "echo a", "memory_bytes": GiB, "time_seconds": 5400.0, "cores": 2}),
        ],
    ),
    ("wr", 'x\t{"memory": 512}', [(1, {"cmd": "x", "memory_bytes": 512 * MiB})]),
    (
        "wr",
        'x\t{"memory": "100M", "time": "90s"}',
        [
            (1, {"cmd": "x", "memory_bytes": 100 * MiB, "time_seconds": 90.0}),
        ],
    ),
    ("wr", 'x\t{"time": 120}', [(1, {"cmd": "x", "time_seconds": 120.0})]),
    ("wr", 'x\t{"time": "0s"}', [(1, {"cmd": "x"})]),
    ("wr", 'x\t{"cpus": 0}', [(1, {"cmd": "x"})]),
    ("wr", 'x\t{"cpus": 4}', [(1, {"cmd": "x", "cores": 4})]),
    (
        "wr",
        'x\t{"priority": 200, "retries": 3}',
        [
            (1, {"cmd": "x", "priority": 200, "retries": 3}),
        ],
    ),
    (
        "wr",
        'x\t{"cwd": "/data/run1", "req_grp": "bwa.1G"}',
        [
            (1, {"cmd": "x", "cwd": "/data/run1", "req_group": "bwa.1G"}),
        ],
    ),
    ("wr", 'x\t{"rep_grp": "align"}', [(1, {"cmd": "x", "group": "align"})]),
    ("wr", 'x\t{"dep_grps": ["align"]}', [(1, {"cmd": "x", "group": "align"})]),
    ("wr", 'x\t{"dep_grps": ["align"], "rep_grp": "align"}', [(1, {"cmd": "x", "group": "align"})]),
    (
        "wr",
        'x\t{"deps": ["align", "index"]}',
        [
            (1, {"cmd": "x", "after": ["group:align", "group:index"]}),
        ],
    ),
    (
        "wr",
        'x\t{"limit_grps": ["irods", "db:5"]}',
        [(1, {"cmd": "x", "limits": ["irods", "db:5"]})],
    ),
    (
        "wr",
        'x\t{"env": ["A=1", "B=x=y", "C="]}',
        [
            (1, {"cmd": "x", "env": {"A": "1", "B": "x=y", "C": ""}}),
        ],
    ),
    # wr: null, "" and [] mean "not given", as in wr
    ("wr", 'x\t{"memory": null, "rep_grp": "", "deps": [], "modules": []}', [(1, {"cmd": "x"})]),
    # wr: options shoal accepts and ignores
    (
        "wr",
        'x\t{"cwd_matters": true, "change_home": false, "on_exit": [{"cleanup": true}],'
        ' "mounts": [{"Targets": []}], "override": 2, "disk": 10, "queue": "normal",'
        ' "misc": "-R avx", "cloud_os": "Ubuntu", "cloud_ram": 2048, "cloud_shared": true,'
        ' "bsub_mode": true, "monitor_docker": "?", "group": "staff",'
        ' "no_retry_over_walltime": "1h", "reserve_timeout": 5}',
        [(1, {"cmd": "x"})],
    ),
    # wr: a JSON object alone, and the command column winning over "cmd", as in wr
    ("wr", '{"cmd": "make all", "priority": 5}\n', [(1, {"cmd": "make all", "priority": 5})]),
    ("wr", 'make all\t{"cmd": "make nothing"}', [(1, {"cmd": "make all"})]),
    ("wr", '\t{"cmd": "make all"}', [(1, {"cmd": "make all"})]),
    # wr: a shell group command is a command, not JSON; a trailing TAB adds no options
    ("wr", "{ make; make install; }\n", [(1, {"cmd": "{ make; make install; }"})]),
    ("wr", "make\t\n", [(1, {"cmd": "make"})]),
    (
        "wr",
        '# comment\t{"x": 1}\n\nmake\t {"priority": 1} \r\n',
        [(3, {"cmd": "make", "priority": 1})],
    ),
    # runmaker
    (
        "runmaker",
        ". echo a\nr echo b\nd echo c\n! echo d\ne echo e\n",
        [
            (1, {"cmd": "echo a"}),
            (2, {"cmd": "echo b"}),
            (3, {"cmd": "echo c"}),
            (4, {"cmd": "echo d"}),
            (5, {"cmd": "echo e"}),
        ],
    ),
    ("runmaker", "# title\n// note\n/ note\n\n.\techo tab  \r\n", [(5, {"cmd": "echo tab"})]),
]


@pytest.mark.parametrize(("fmt", "text", "expected"), GOOD)
def test_good_input(fmt: str, text: str, expected: list[tuple[int, dict[str, Any]]]) -> None:
    jobs = parse_text(text, fmt, source="jobs")
    assert [(job.line, fields(job)) for job in jobs] == expected


def test_runmaker_records_state_characters() -> None:
    jobs = parse_text(". a\nd b\n! c\n", "runmaker")
    assert [(job.state_char, job.state_offset) for job in jobs] == [(".", 0), ("d", 4), ("!", 8)]


def test_other_formats_have_no_state() -> None:
    for fmt in ("lines", "wr"):
        (job,) = parse_text("echo a\n", fmt)
        assert job.state_offset is None
        assert job.state_char is None


# --- bad inputs: the exact message, with file and line ------------------------------------

BAD = [
    ("lines", "echo a\n \x00\nx\n", 'jobs.txt:2: field "cmd": command contains a NUL byte'),
    (
        "lines",
        "ok\n" + "x" * (64 * 1024 + 1),
        'jobs.txt:2: field "cmd": command is longer than 65536 bytes',
    ),
    (
        "wr",
        'a\nb\t{"memroy": "1G"}\n',
        'jobs.txt:2: option "memroy" is not known (did you mean "memory"? known: '
        + ", ".join(OPTIONS)
        + ")",
    ),
    (
        "wr",
        'a\t{"memory": "1G" "cpus": 1}',
        "jobs.txt:1: bad JSON after the tab: Expecting ',' delimiter (column 19)",
    ),
    (
        "wr",
        "a\t{",
        "jobs.txt:1: bad JSON after the tab: "
        "Expecting property name enclosed in double quotes (column 4)",
    ),
    ("wr", 'a\t{"cpus": NaN}', "jobs.txt:1: bad JSON after the tab: NaN is not a JSON number"),
    (
        "wr",
        "a\t[1, 2]",
        'jobs.txt:1: the JSON after the tab is not an object; options look like {"memory": "1G"}',
    ),
    (
        "wr",
        "a\t{}\tb",
        "jobs.txt:1: more than one TAB; a wr line is a command, a TAB and a JSON object of options",
    ),
    ("wr", '  {"cmd" "a"}', "jobs.txt:1: bad JSON: Expecting ':' delimiter (column 10)"),
    (
        "wr",
        '{"priority": 1}',
        'jobs.txt:1: no command: write one before the TAB, or give a "cmd" option',
    ),
    (
        "wr",
        'a\t{"priority": "high"}',
        'jobs.txt:1: option "priority" should be an integer, not "high"',
    ),
    ("wr", 'a\t{"priority": 1.5}', 'jobs.txt:1: option "priority" should be an integer, not 1.5'),
    ("wr", 'a\t{"retries": true}', 'jobs.txt:1: option "retries" should be an integer, not true'),
    (
        "wr",
        'a\t{"retries": -1}',
        'jobs.txt:1: option "retries": Input should be greater than or equal to 0',
    ),
    (
        "wr",
        'a\t{"priority": 2000000}',
        'jobs.txt:1: option "priority": Input should be less than or equal to 1000000',
    ),
    ("wr", 'a\t{"cpus": "2"}', 'jobs.txt:1: option "cpus" should be a number, not "2"'),
    ("wr", 'a\t{"cpus": -1}', 'jobs.txt:1: option "cpus" must not be negative'),
    (
        "wr",
        'a\t{"memory": "lots"}',
        "jobs.txt:1: option \"memory\": not a memory size: 'lots' (examples: 512M, 8G)",
    ),
    ("wr", 'a\t{"memory": -5}', 'jobs.txt:1: option "memory": must not be negative'),
    ("wr", 'a\t{"memory": 1e300}', 'jobs.txt:1: option "memory": 1e+300 is too large'),
    (
        "wr",
        'a\t{"memory": "' + "9" * 400 + 'G"}',
        "jobs.txt:1: option \"memory\": memory size '" + "9" * 40 + "'... is too large",
    ),
    (
        "wr",
        'a\t{"time": "soon"}',
        "jobs.txt:1: option \"time\": not a duration: 'soon' (examples: 90s, 30m, 1h30m)",
    ),
    ("wr", 'a\t{"time": -5}', 'jobs.txt:1: option "time" must not be negative, not -5'),
    (
        "wr",
        'a\t{"time": "' + "9" * 400 + 'h"}',
        'jobs.txt:1: option "time": "' + "9" * 36 + "... is too large",
    ),
    (
        "wr",
        'a\t{"priority": ' + "9" * 5000 + "}",
        "jobs.txt:1: bad JSON after the tab: Exceeds the limit (4300 digits) for integer string "
        "conversion",
    ),
    ("wr", 'a\t{"cwd": 5}', 'jobs.txt:1: option "cwd" should be a string, not 5'),
    (
        "wr",
        'a\t{"env": "A=1"}',
        'jobs.txt:1: option "env" should be an array of strings, not a string',
    ),
    ("wr", 'a\t{"env": ["A"]}', 'jobs.txt:1: option "env": item 1 is not of the form "KEY=VALUE"'),
    ("wr", 'a\t{"env": ["=1"]}', 'jobs.txt:1: option "env": item 1 is not of the form "KEY=VALUE"'),
    (
        "wr",
        'a\t{"rep_grp": "a b"}',
        'jobs.txt:1: option "rep_grp": group names are 1-128 characters of letters, '
        "digits and _.:@+-",
    ),
    (
        "wr",
        'a\t{"deps": ["a b"]}',
        'jobs.txt:1: option "deps": "a b" is not a usable group name: group names are '
        "1-128 characters of letters, digits and _.:@+-",
    ),
    (
        "wr",
        'a\t{"dep_grps": ["x", "y"]}',
        'jobs.txt:1: option "dep_grps" names 2 groups; a shoal job belongs to exactly one group',
    ),
    (
        "wr",
        'a\t{"rep_grp": "r", "dep_grps": ["d"]}',
        'jobs.txt:1: options "rep_grp" ("r") and "dep_grps" ("d") '
        "differ; a shoal job has one group, used for reports and dependencies alike",
    ),
    (
        "wr",
        'a\t{"limit_grps": ["17:00:00 < time < 20:00:00"]}',
        'jobs.txt:1: option "limit_grps": time-window limit '
        'groups such as "17:00:00 < time < 20:00:00" are not supported',
    ),
    (
        "wr",
        'a\t{"cmd_deps": [{"cmd": "b", "cwd": ""}]}',
        'jobs.txt:1: option "cmd_deps" is not supported; use '
        "dep_grps on the jobs depended on and deps here",
    ),
    (
        "wr",
        'a\t{"modules": ["samtools"]}',
        'jobs.txt:1: option "modules" is not supported; put "module load NAME '
        '&& " in front of the command',
    ),
    (
        "wr",
        'a\t{"with_docker": "ubuntu"}',
        'jobs.txt:1: option "with_docker" is not supported; write the "docker '
        'run ..." command yourself',
    ),
    (
        "wr",
        'a\t{"cwd_matters": "yes"}',
        'jobs.txt:1: option "cwd_matters" should be true or false, not "yes"',
    ),
    (
        "wr",
        'a\t{"on_exit": {"cleanup": true}}',
        'jobs.txt:1: option "on_exit" should be an array of objects, not {"cleanup": true}',
    ),
    (
        "wr",
        'a\t{"misc": "' + "x" * 50 + '", "queue": 1}',
        'jobs.txt:1: option "queue" should be a string, not 1',
    ),
    (
        "wr",
        'a\t{"cloud_os": ["' + "x" * 50 + '"]}',
        'jobs.txt:1: option "cloud_os" should be a string, not ["' + "x" * 35 + "...",
    ),
    (
        "runmaker",
        ". a\n.b\n",
        'jobs.txt:2: expected a state character, a space and a command, as in ". make all"',
    ),
    (
        "runmaker",
        "  . a\n",
        'jobs.txt:1: the state character must start the line, as in ". make all"',
    ),
    (
        "runmaker",
        "x a\n",
        'jobs.txt:1: state "x" is not known (known: "." new, "r" running, "d" done, "!" failed, '
        '"e" error, "?" being claimed by runmaker4)',
    ),
    (
        "wr",
        'a\t{"x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "jobs.txt:1: bad JSON after the tab: nested too deeply",
    ),
    ("runmaker", ".  \n", 'jobs.txt:1: no command after the state character "."'),
    ("lines", "a\n\ud800\n", "jobs.txt:2: text is not valid Unicode (a lone surrogate)"),
    ("nope", "a", 'jobs.txt: format "nope" is not known (known: auto, lines, wr, runmaker)'),
]


@pytest.mark.parametrize(("fmt", "text", "message"), BAD)
def test_bad_input(fmt: str, text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_text(text, fmt, source="jobs.txt")
    assert str(caught.value) == message
    assert caught.value.source == "jobs.txt"


def test_error_carries_line_number() -> None:
    with pytest.raises(InputError) as caught:
        parse_text("a\nb\n\n\t{}\n", "wr", source="jobs.wr")
    assert caught.value.line == 4


def test_bad_json_column_counts_characters_of_the_line() -> None:
    # The column is where the parser stopped, counted in characters from the line's start.
    line = 'héllo\t  {"a" 1}'
    with pytest.raises(InputError) as caught:
        parse_text(line, "wr", source="x")
    assert str(caught.value) == "x:1: bad JSON after the tab: Expecting ':' delimiter (column 14)"
    assert line[13] == "1"


# --- defaults ----------------------------------------------------------------------------


def test_defaults_apply_and_line_options_win() -> None:
    defaults = {"group": "batch", "cwd": "/abs", "retries": 2, "env": {"A": "1"}, "priority": 7}
    jobs = parse_text(
        'one\ntwo\t{"retries": 0, "env": ["B=2"], "rep_grp": "mine"}\n', "wr", defaults=defaults
    )
    assert fields(jobs[0]) == {
        "cmd": "one",
        "group": "batch",
        "cwd": "/abs",
        "retries": 2,
        "env": {"A": "1"},
        "priority": 7,
    }
    # A field the line sets replaces the default whole, env included, as wr does.
    assert fields(jobs[1]) == {
        "cmd": "two",
        "group": "mine",
        "cwd": "/abs",
        "env": {"B": "2"},
        "priority": 7,
    }


def test_defaults_are_not_shared_between_jobs() -> None:
    jobs = parse_text("a\nb\n", "lines", defaults={"env": {"A": "1"}, "limits": ["x"]})
    jobs[0].spec.env["A"] = "changed"
    jobs[0].spec.limits.append("y")
    assert jobs[1].spec.env == {"A": "1"}
    assert jobs[1].spec.limits == ["x"]


def test_an_empty_default_is_shared_and_refuses_a_change() -> None:
    """What is not copied for each job cannot be changed through one of them."""
    jobs = parse_text("a\nb\n", "lines", defaults={"env": {"A": "1"}})
    with pytest.raises(TypeError, match="never changed in place"):
        jobs[0].spec.limits.append("y")
    assert jobs[1].spec.limits == [] and jobs[0].spec.env is not jobs[1].spec.env


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        (
            {"priority": "x"},
            'jobs.txt: bad default: field "priority": Input should be a valid integer, '
            "unable to parse string as an integer",
        ),
        ({"colour": "red"}, 'jobs.txt: bad default: field "colour": is not a job field'),
        (
            {"group": "a b", "retries": -1},
            'jobs.txt: bad default: field "group": group names are 1-128 '
            "characters of letters, digits and _.:@+- (and 1 more)",
        ),
    ],
)
def test_bad_defaults(defaults: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_text("a\n", "lines", source="jobs.txt", defaults=defaults)
    assert str(caught.value) == message
    assert caught.value.line is None


def test_default_group_does_not_beat_a_line_dep_group() -> None:
    (job,) = parse_text('a\t{"dep_grps": ["step1"]}', "wr", defaults={"group": "batch"})
    assert job.spec.group == "step1"


# --- detection ---------------------------------------------------------------------------

DETECT = [
    ("", "lines"),
    ("# only a comment\n", "lines"),
    ("echo a\necho b\n", "lines"),
    (". a\n# note\n\nd b\n! c\ne d\nr e\n", "runmaker"),
    (".\ta\n// note\n", "runmaker"),
    (". a\necho b\n", "runmaker"),  # then line 2 is an error: state characters never run
    (". a\n/ note\n", "runmaker"),
    ("echo a\n. b\necho c\n", "lines"),  # a `source` among commands
    ("? a\n. b\n", "runmaker"),  # runmaker4 was claiming line 1 when it was read
    (". a\n.typo\n. b\n", "runmaker"),
    ("echo a\necho b\t{}\n", "wr"),
    ('echo a\necho b\t{"memory": "1G" oops\n', "wr"),  # then reported as bad JSON
    ('{"cmd": "a"}\n', "wr"),
    ("{ a; b; }\n", "lines"),
    ("printf 'a\\tb'\techo\n", "lines"),
    (". a\t{}\n", "runmaker"),
]


@pytest.mark.parametrize(("text", "expected"), DETECT)
def test_detect_format(text: str, expected: str) -> None:
    assert detect_format(text) == expected


def test_runmaker_claiming_state_is_read() -> None:
    jobs = parse_text("? a\n. b\n")
    assert [(job.state_char, job.spec.cmd) for job in jobs] == [("?", "a"), (".", "b")]


@pytest.mark.parametrize(("text", "line"), [(". echo 1\n.typo\n. echo 2\n", 2),
                                            (". a\necho b\n", 2), ("d a\nmake\n! b\n", 2)])
def test_a_runmaker_looking_file_with_a_stray_line_is_refused(text: str, line: int) -> None:
    with pytest.raises(InputError) as caught:
        parse_text(text, source="runs.txt")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"runs.txt:{line}: expected a state character")
    assert "--format lines" in str(caught.value)


def test_auto_uses_detection() -> None:
    assert parse_text(". a\n")[0].state_char == "."
    assert parse_text('a\t{"priority": 3}\n')[0].spec.priority == 3
    assert parse_text("a\t{oops\n", "lines")[0].spec.cmd == "a\t{oops"
    with pytest.raises(InputError, match="bad JSON"):
        parse_text("a\t{oops\n")


def test_formats_listed() -> None:
    assert FORMATS == ("auto", "lines", "wr", "runmaker")


# --- files -------------------------------------------------------------------------------


def test_parse_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.wr"
    path.write_text('ok\nbad\t{"cpus": "x"}\n')
    with pytest.raises(InputError) as caught:
        parse_file(path)
    assert str(caught.value) == f'{path}:2: option "cpus" should be a number, not "x"'


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(InputError) as caught:
        parse_file(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the file: Is a directory"):
        parse_file(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"echo ok\necho caf\xe9\n")
    with pytest.raises(InputError) as caught:
        parse_file(path)
    assert str(caught.value) == f"{path}:2: not UTF-8 text: byte 0xe9 at byte column 9"
    assert caught.value.line == 2


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# nothing yet\n")
    assert parse_file(path) == []


def test_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf. echo a\n. echo b\n")
    jobs = parse_file(path)
    assert [job.spec.cmd for job in jobs] == ["echo a", "echo b"]
    data = path.read_bytes()
    assert [
        data[job.state_offset : job.state_offset + 1]
        for job in jobs
        if job.state_offset is not None
    ] == [
        b".",
        b".",
    ]


# --- runmaker offsets and rewriting in place ---------------------------------------------

MULTIBYTE = (
    "# Läufe für café ☕\n"
    ". echo 'naïve 😀'\n"
    "d echo 日本語\r\n"
    "\n"
    "! echo ok\n"
    "e echo ünïcödé 🎉🎉\n"
    ". echo last"
)


def test_runmaker_offsets_are_byte_offsets(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_bytes(MULTIBYTE.encode())
    jobs = parse_file(path)
    data = path.read_bytes()
    assert [job.state_char for job in jobs] == [".", "d", "!", "e", "."]
    for job in jobs:
        assert job.state_offset is not None
        assert data[job.state_offset : job.state_offset + 2].decode() == f"{job.state_char} "
    assert jobs[1].state_offset == len("# Läufe für café ☕\n. echo 'naïve 😀'\n".encode())


def test_states_are_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_bytes(MULTIBYTE.encode())
    inode = path.stat().st_ino
    jobs = parse_file(path)
    with RunmakerFile(path) as runmaker:
        for job, state in zip(jobs, "rd.!e", strict=True):
            assert job.state_offset is not None
            assert runmaker.compare_and_set(job.state_offset, job.state_char, state) == \
                job.state_char
    expected = (
        MULTIBYTE.replace(". echo 'naïve", "r echo 'naïve")
        .replace("d echo 日本語", "d echo 日本語")
        .replace("! echo ok", ". echo ok")
        .replace("e echo ünïcödé", "! echo ünïcödé")
        .replace(". echo last", "e echo last")
    )
    assert path.read_bytes() == expected.encode()
    assert path.stat().st_ino == inode
    assert [job.state_char for job in parse_file(path)] == ["r", "d", ".", "!", "e"]


@pytest.mark.parametrize("offset", [3, 100], ids=["inside a command", "past the end"])
def test_a_byte_that_is_not_a_state_is_left_alone(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(". echo a\n")
    with RunmakerFile(path) as runmaker:
        assert runmaker.compare_and_set(offset, READABLE_STATES, "d") is None
    assert path.read_text() == ". echo a\n"


def test_compare_and_set_checks_its_arguments(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(". a\n")
    runmaker = RunmakerFile(path)
    for new in ("x", "rd"):
        with pytest.raises(ValueError, match="must be one of"):
            runmaker.compare_and_set(0, ".", new)
    runmaker.close()
    runmaker.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        runmaker.compare_and_set(0, ".", "d")
    assert path.read_text() == ". a\n"


def test_runmaker_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(InputError) as caught:
        RunmakerFile(path)
    assert str(caught.value) == f"{path}: cannot open for writing: No such file or directory"


def test_runmaker_file_unwritable(tmp_path: Path) -> None:
    # A directory cannot be opened for writing, even by root (a read-only file can be).
    with pytest.raises(InputError, match="cannot open for writing: Is a directory"):
        RunmakerFile(tmp_path)


# --- properties --------------------------------------------------------------------------

# Characters that matter to the parsers, mixed with anything at all.
SHAPED_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            [
                ".",
                " ",
                "\t",
                "\n",
                "\r",
                "#",
                "/",
                "{",
                "}",
                '"',
                ":",
                ",",
                "[",
                "]",
                "r",
                "d",
                "!",
                "e",
                "?",
                "\x00",
                "\ufeff",
                "\ud800",
                "é",
                "😀",
                '{"cmd": "x"}',
                '"memory": "1G"',
                '"cpus": 1.5',
                '"priority": ',
                "1e999",
                "NaN",
                '"deps": ["a"]',
                '"env": ["A=1"]',
            ]
        ),
        st.text(max_size=5),
    ),
    max_size=40,
).map("".join)

ANY_TEXT = st.one_of(st.text(max_size=200), SHAPED_TEXT)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=ANY_TEXT, fmt=st.sampled_from(FORMATS))
def test_parse_raises_only_input_errors(text: str, fmt: str) -> None:
    try:
        jobs = parse_text(text, fmt, source="f")
    except InputError as error:
        assert str(error).startswith("f:")
        assert "\n" not in str(error)
        return
    for job in jobs:
        assert job.line >= 1
        assert job.spec.cmd.strip()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
OPTION_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["1G", "100M", "0", "1h30m", "-1", "", "a b", "x:3", "A=1", "17:00:00 < time"]),
    st.lists(st.sampled_from(["a", "b:2", "A=1", "=", "", "x y", "<"]), max_size=3),
)


@settings(max_examples=300)
@given(
    options=st.dictionaries(
        st.one_of(st.sampled_from(sorted(OPTIONS)), st.text(max_size=6)), OPTION_VALUES, max_size=5
    ),
    command=st.sampled_from(["", "echo a", " "]),
)
def test_wr_options_raise_only_input_errors(options: dict[str, Any], command: str) -> None:
    line = command + "\t" + json.dumps(options)
    try:
        jobs = parse_text(line, "wr", source="f")
    except InputError as error:
        assert str(error).startswith("f:1: ")
        return
    assert len(jobs) == 1


@settings(max_examples=200)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([".", "r", "d", "!", "e", "#", ""]),
            st.text(
                alphabet=st.characters(
                    blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"
                ),
                min_size=1,
                max_size=12,
            ).filter(str.strip),
        ),
        max_size=12,
    )
)
def test_runmaker_offsets_point_at_the_state(rows: list[tuple[str, str]]) -> None:
    lines = [f"{state} {command}" if state else "" for state, command in rows]
    data = "\n".join(lines).encode()
    jobs = parse_text(data.decode(), "runmaker")
    expected = [state for state, _ in rows if state and state in ".rd!e"]
    assert [job.state_char for job in jobs] == expected
    for job in jobs:
        assert job.state_offset is not None
        assert data[job.state_offset : job.state_offset + 1] == (job.state_char or "").encode()


@settings(max_examples=100)
@given(data=st.binary(max_size=120))
def test_parse_file_raises_only_input_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "jobs"
    path.write_bytes(data)
    try:
        parse_file(path)
    except InputError as error:
        assert str(error).startswith(f"{path}")


_SHAPES = st.text(alphabet=st.sampled_from(list(".rde!?#/{}\"\t \r\n\x0b\u00a0ax:1")), max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_SHAPES)
def test_detection_without_a_look_at_each_line_agrees_with_the_rules(text: str) -> None:
    """A text with no line that rule 1 or 2 could match is `lines` at once; that shortcut
    decides as reading every line does."""
    from shoal.formats import detect

    everything = re.compile("")
    slow = pytest.MonkeyPatch()
    slow.setattr(detect, "_MAYBE_RUNMAKER", everything)
    slow.setattr(detect, "_MAYBE_WR", everything)
    try:
        by_each_line = detect.detect_format(text)
    finally:
        slow.undo()
    assert detect.detect_format(text) == by_each_line


def test_a_command_only_line_is_made_into_its_spec_once_when_asked() -> None:
    [job] = parse_text("echo hi\n", "lines", defaults={"cwd": "/tmp", "env": {"A": "1"}})
    assert job.command == "echo hi" and job.base.cmd != "echo hi"
    assert job.spec is job.spec
    assert (job.spec.cmd, job.spec.cwd, job.spec.env) == ("echo hi", "/tmp", {"A": "1"})
    assert job.spec.env is not job.base.env


_PLAIN_LINES = st.lists(
    st.one_of(
        st.sampled_from(["", " ", "\t", "# c", "  #x", "echo a", " \u00a0", "\u2028#", "a\x00b",
                         "x" * 16384, "é" * 16384, "y" * 65537]),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                max_size=8),
    ),
    max_size=8,
).map("\n".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_PLAIN_LINES, newline=st.booleans())
def test_counting_plain_lines_agrees_with_parsing_them(text: str, newline: bool) -> None:
    """count_lines, which makes no job, counts what parse_lines makes, or leaves it to
    parse_lines (None) whenever a line might be refused."""
    text += "\n" if newline else ""
    counted = count_lines(text)
    try:
        jobs = parse_text(text, "lines")
    except InputError:
        assert counted is None
        return
    if counted is not None:
        assert counted == (len(jobs), jobs[0].line if jobs else 0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_PLAIN_LINES, newline=st.booleans())
def test_plain_commands_are_the_commands_of_the_parsed_jobs(text: str, newline: bool) -> None:
    """plain_commands, which makes no job, gives the command of each job parse_lines makes
    (whose spec is the defaults' with that command), or leaves it to parse_lines (None)
    whenever a line might be refused."""
    text += "\n" if newline else ""
    commands = read_text(text, "lines", defaults={"cwd": "/w"}).plain_commands()
    try:
        jobs = parse_text(text, "lines", defaults={"cwd": "/w"})
    except InputError:
        assert commands is None
        return
    if commands is not None:
        assert list(commands) == [job.command for job in jobs]
        assert all(job.spec.cwd == "/w" and job.spec.cmd == job.command for job in jobs)


def test_only_a_lines_text_gives_plain_commands() -> None:
    assert list(read_text("echo a\n\n# c\n  echo b \n").plain_commands() or []) == [
        "echo a", "echo b"]
    assert read_text("a\x00b\n", "lines").plain_commands() is None  # parse_lines names it
    assert read_text("echo a\n", "wr").plain_commands() is None
    assert read_text('{"cmd": "echo a"}\n').plain_commands() is None  # wr, detected


def test_plain_lines_are_counted_without_parsing_when_none_can_be_refused() -> None:
    assert count_lines("\n# c\n  echo a\n\t\necho b\n") == (2, 3)
    assert count_lines("# only\n\n") == (0, 0)
    assert count_lines("a\x00b\n") is None  # parse_lines names the line
    assert count_lines("é" * 16385) is None  # it might be more than 64 KiB of UTF-8


def test_a_file_is_checked_whole_and_counted(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("# header\necho a\necho b\n")
    assert check_file(plain, defaults={"cores": 2}) == FileCheck(2, "lines", 2, 2)
    options = tmp_path / "jobs.wr"
    options.write_text('echo a\t{"cpus": 1}\necho b\t{"cpus": 3}\necho c\t{"cpus": 3}\n')
    assert check_file(options) == FileCheck(3, "wr", 3, 2)
    waits = tmp_path / "waits.wr"
    waits.write_text('a\t{"deps": ["g"], "memory": "1G"}\nb\t{"cwd": "rel"}\n'
                     'c\t{"dep_grps": ["g"], "memory": "2G"}\nd\t{"deps": ["g", "none"]}\n'
                     'e\t{"deps": ["none2"]}\n')
    found = check_file(waits)
    assert (found.most_memory, found.most_memory_line) == (2 << 30, 3)
    assert found.relative_cwd_line == 2
    assert found.missing_group == ("none", 4)  # the first line waiting for a group not here
    assert found.forward_spans == ((1, 3),)  # job 1 waits for group g, whose first job is 3
    bad = tmp_path / "bad.txt"
    bad.write_text("echo a\n" + "x" * 70_000 + "\n")
    with pytest.raises(InputError, match=r"bad.txt:2: .*longer than"):
        check_file(bad)

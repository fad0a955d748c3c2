"""Job arrays: --array specs and --each-line files into items, items into jobs, and `shoal add`
sending them all in one request."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from shoal.cli.main import main
from shoal.core.arrays import (
    MAX_ARRAY_ITEMS,
    MAX_ARRAY_TASKS,
    expand,
    items_from_lines,
    numbers_from,
    parse_array_spec,
    run_count,
    runs_of,
)

from .test_client_errors import FakeServer, fake_server, isolated_home

__all__ = ["fake_server", "isolated_home"]  # fixtures used here

EXAMPLES = "(examples: 1-100, 1-100:10, 1,5,9, 1-3,7)"


def run(server: FakeServer, *args: str) -> int:
    return main(["--server", server.url, "--token", "t", *args])


# ---- --array SPEC -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "numbers"),
    [
        ("7", [7]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("1-10:3", [1, 4, 7, 10]),
        ("1-10:4", [1, 5, 9]),  # the step need not land on the end
        ("1,5,9", [1, 5, 9]),
        ("1-3,7", [1, 2, 3, 7]),
        ("9,1,3-4,3", [1, 3, 4, 9]),  # ascending, each number once, as Slurm
        (" 1-2 , 5 ", [1, 2, 5]),
        ("007", [7]),
        ("5-5", [5]),
    ],
)
def test_array_specs(spec: str, numbers: list[int]) -> None:
    runs = parse_array_spec(spec)
    assert run_count(runs) == len(numbers)
    assert numbers_from(runs, 0, len(numbers)) == numbers
    assert numbers_from(runs, 1, 2) == numbers[1:3]


def test_a_hundred_million_tasks_are_one_run() -> None:
    assert parse_array_spec(f"1-{MAX_ARRAY_TASKS}") == [(1, MAX_ARRAY_TASKS, 1)]
    assert parse_array_spec("0-99:3,200-299") == [(0, 99, 3), (200, 299, 1)]
    assert numbers_from([(0, 99, 3), (200, 299, 1)], 33, 3) == [99, 200, 201]
    with pytest.raises(ValueError, match="makes more than 100,000,000 tasks"):
        parse_array_spec(f"0-{MAX_ARRAY_TASKS}")


def test_runs_of_numbers() -> None:
    assert runs_of([1, 2, 3, 7, 9, 11, 20]) == [(1, 3, 1), (7, 11, 2), (20, 20, 1)]
    assert runs_of([5]) == [(5, 5, 1)] and runs_of([]) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", f"no numbers given {EXAMPLES}"),
        ("  ", f"no numbers given {EXAMPLES}"),
        ("1-10%4", "'1-10%4': a % throttle is not supported; "
                   "use --limit NAME:4 to run at most 4 at once"),
        ("1-10%", "'1-10%': a % throttle is not supported; "
                  "use --limit NAME:N to run at most N at once"),
        ("a", f"'a' is not a number, a range A-B or A-B:STEP {EXAMPLES}"),
        ("-1", f"'-1' is not a number, a range A-B or A-B:STEP {EXAMPLES}"),
        ("3:2", f"'3:2' is not a number, a range A-B or A-B:STEP {EXAMPLES}"),
        ("1-5:", f"'1-5:' is not a number, a range A-B or A-B:STEP {EXAMPLES}"),
        ("1..5", f"'1..5' is not a number, a range A-B or A-B:STEP {EXAMPLES}"),
        ("1,,2", f"an empty entry between commas {EXAMPLES}"),
        ("1,", f"an empty entry between commas {EXAMPLES}"),
        ("10-1", "'10-1': the range ends before it starts"),
        ("1-10:0", "'1-10:0': the step must be at least 1"),
        ("1-99999999999999", "'1-99999999999999' makes more than 100,000,000 tasks"),
        ("1-600000,500001-1200000", "'1-600000,500001-1200000': overlapping ranges make more "
                                    "than 1,000,000 items; split them into several adds"),
    ],
)
def test_bad_array_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_array_spec(spec)
    assert str(caught.value) == message


def test_overlapping_ranges_count_each_number_once() -> None:
    assert parse_array_spec(f"1-{MAX_ARRAY_ITEMS - 10},1-10") == [(1, MAX_ARRAY_ITEMS - 10, 1)]
    assert parse_array_spec("1-10:2,2-10:2") == [(1, 10, 1)]


# ---- --each-line FILE -----------------------------------------------------------------------


def test_each_non_blank_line_is_an_item_indexed_from_0() -> None:
    text = "\ufeffa.fq\n\n   \nmy file.fq\r\n  spaced  \nlast"
    assert items_from_lines(text) == [(0, "a.fq"), (1, "my file.fq"), (2, "  spaced  "),
                                      (3, "last")]
    assert items_from_lines("") == []
    assert items_from_lines("# kept: not a comment\n") == [(0, "# kept: not a comment")]


def test_a_line_with_a_nul_is_refused_by_its_number() -> None:
    with pytest.raises(ValueError) as caught:
        items_from_lines("ok\n\nbad\x00\n")
    assert str(caught.value) == "line 3 contains a NUL byte"


def test_at_most_a_million_lines() -> None:
    assert len(items_from_lines("x\n" * MAX_ARRAY_ITEMS)) == MAX_ARRAY_ITEMS
    with pytest.raises(ValueError) as caught:
        items_from_lines("x\n" * (MAX_ARRAY_ITEMS + 1))
    assert str(caught.value) == "more than 1,000,000 items; split them into several adds"


# ---- items into jobs ------------------------------------------------------------------------


def test_every_placeholder_is_replaced_and_the_item_is_in_the_env() -> None:
    fields = {"cmd": "gzip {} && mv {}.gz out/", "cwd": "/w", "name": "zip-{}",
              "env": {"A": "1", "SHOAL_ARRAY_ITEM": "mine"}}
    assert expand(fields, [(0, "a.txt"), (1, "b {}")]) == [
        {"cmd": "gzip a.txt && mv a.txt.gz out/", "cwd": "/w", "name": "zip-a.txt",
         "env": {"A": "1", "SHOAL_ARRAY_ITEM": "a.txt", "SHOAL_ARRAY_INDEX": "0"}},
        # an item's own {} is left as it is
        {"cmd": "gzip b {} && mv b {}.gz out/", "cwd": "/w", "name": "zip-b {}",
         "env": {"A": "1", "SHOAL_ARRAY_ITEM": "b {}", "SHOAL_ARRAY_INDEX": "1"}},
    ]
    assert fields["cmd"] == "gzip {} && mv {}.gz out/"  # the input is not changed


def test_a_name_without_a_placeholder_is_shared() -> None:
    jobs = expand({"cmd": "run {}", "name": "sweep"}, [(1, "1"), (2, "2")])
    assert [job["name"] for job in jobs] == ["sweep", "sweep"]
    assert [job["env"] for job in jobs] == [
        {"SHOAL_ARRAY_INDEX": "1", "SHOAL_ARRAY_ITEM": "1"},
        {"SHOAL_ARRAY_INDEX": "2", "SHOAL_ARRAY_ITEM": "2"},
    ]


def test_a_command_without_a_placeholder_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        expand({"cmd": "echo hi"}, [(1, "1")])
    assert str(caught.value) == "the command has no {} to replace"


# ---- shoal add --array / --each-line ------------------------------------------------------


def test_add_array_sends_one_record(fake_server: FakeServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/arrays", 201, {"array": 4, "tasks": 3, "added": 3,
                                               "existed": 0, "ids": [1, 2, 3]})
    assert run(fake_server, "add", "--array", "1-5:2", "--cwd", "/w", "--group", "sweep",
               "--env", "MODE=fast", "simulate", "--seed", "{}", ">", "out/{}.txt") == 0
    assert capsys.readouterr().out == "added array 4: 3 tasks, 3 jobs now\n"
    (request,) = fake_server.requests
    assert request.body == {"array": "1-5:2", "job": {
        "cmd": "simulate --seed {} > out/{}.txt", "cwd": "/w", "group": "sweep",
        "env": {"MODE": "fast"}}}


def test_a_large_array_says_the_rest_follow(fake_server: FakeServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/arrays", 201, {"array": 1, "tasks": 10_000_000,
                                               "added": 10_000, "existed": 0, "ids": []})
    assert run(fake_server, "add", "--array", "1-10000000", "--cwd", "/w", "echo {}") == 0
    assert capsys.readouterr().out == (
        "added array 1: 10,000,000 tasks, 10,000 jobs now; the rest become jobs as workers "
        "take them (shoal arrays)\n")


def test_add_each_line_of_a_file(fake_server: FakeServer, tmp_path: Path) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 2, "existed": 0, "requeued": 0,
                                             "ids": [1, 2]})
    samples = tmp_path / "samples.txt"
    samples.write_text("s1\n\ns 2\n")
    assert run(fake_server, "add", "--each-line", str(samples), "--cwd", "/w", "--cores", "4",
               "align", '"$SHOAL_ARRAY_ITEM"', ">", "{}.bam") == 0
    assert fake_server.requests[0].body["jobs"] == [
        {"cmd": 'align "$SHOAL_ARRAY_ITEM" > s1.bam', "cwd": "/w", "cores": 4,
         "env": {"SHOAL_ARRAY_INDEX": "0", "SHOAL_ARRAY_ITEM": "s1"}},
        {"cmd": 'align "$SHOAL_ARRAY_ITEM" > s 2.bam', "cwd": "/w", "cores": 4,
         "env": {"SHOAL_ARRAY_INDEX": "1", "SHOAL_ARRAY_ITEM": "s 2"}},
    ]


def test_add_each_line_of_standard_input(fake_server: FakeServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 2, "existed": 0, "requeued": 0,
                                             "ids": [1, 2]})
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
    assert run(fake_server, "add", "--each-line", "-", "--cwd", "/w", "wc -l {}") == 0
    assert [job["cmd"] for job in fake_server.requests[0].body["jobs"]] == ["wc -l a",
                                                                            "wc -l b"]


def test_an_empty_list_adds_nothing(fake_server: FakeServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 0, "existed": 0, "requeued": 0,
                                             "ids": []})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert run(fake_server, "add", "--each-line", str(empty), "echo {}") == 0
    assert fake_server.requests[0].body["jobs"] == []
    assert capsys.readouterr().out == "added 0, 0 already existed\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--array", "1-3", "echo hi"], "shoal: --array: the command has no {} to replace"),
        (["--each-line", "-", "echo hi"], "shoal: --each-line: the command has no {} to replace"),
        (["--array", "1-3"], "shoal: --array: give the command to run for each item"),
        (["--array", "1-9%2", "echo {}"], "shoal: --array: '1-9%2': a % throttle is not "
                                          "supported; use --limit NAME:2 to run at most 2 at once"),
        (["--array", "2-1", "echo {}"], "shoal: --array: '2-1': the range ends before it starts"),
        (["--array", "1-3", "--each-line", "f", "echo {}"],
         "shoal: give only one of -f, --array and --each-line"),
        (["--each-line", "f", "-f", "jobs.txt"],
         "shoal: give only one of -f, --array and --each-line"),
        (["--each-line", "/no/such/file", "echo {}"],
         "shoal: --each-line: /no/such/file: cannot read the file: No such file or directory"),
        (["--array", "1-3", "--cores", "0", "echo {}"],
         "shoal: --cores: Input should be greater than or equal to 1"),
        (["--array", "1", "--format", "wr", "echo {}"], "shoal: --format applies to -f FILE only"),
        (["--group", "g", "echo {}", "--array", "1-3"],
         "shoal: --array: options go before the command, or they are part of it"),
        (["echo", "{}", "--each-line=f"],
         "shoal: --each-line: options go before the command, or they are part of it"),
    ],
)
def test_array_usage_errors_exit_2_with_one_line(args: list[str], message: str,
                                                 closed_port_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", closed_port_url, "add", *args]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_a_command_may_have_its_own_array_option(fake_server: FakeServer) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 1, "existed": 0, "requeued": 0,
                                             "ids": [1]})
    assert run(fake_server, "add", "--cwd", "/w", "sbatch", "--array", "1-9", "job.sh") == 0
    assert fake_server.requests[0].body["jobs"] == [
        {"cmd": "sbatch --array 1-9 job.sh", "cwd": "/w"}]


def test_bad_lines_are_named(tmp_path: Path, closed_port_url: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"ok\ncaf\xe9\n")
    assert main(["--server", closed_port_url, "add", "--each-line", str(latin1), "cat {}"]) == 2
    assert capsys.readouterr().err == (
        f"shoal: --each-line: {latin1}: line 2 is not UTF-8 text\n")
    too_long = tmp_path / "long.txt"
    too_long.write_text("short\n" + "x" * 200_000 + "\n")
    assert main(["--server", closed_port_url, "add", "--each-line", str(too_long),
                 "cat {}"]) == 2
    assert capsys.readouterr().err == (
        f"shoal: --each-line: {too_long}: line 2 is longer than 65536 bytes\n")

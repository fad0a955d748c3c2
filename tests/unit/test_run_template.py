"""shoal run's pure parts: GNU parallel's placeholders and sources, --halt, the joblog's
signal field, and the wr option `timeout`."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.formats import parse_text
from shoal.run.driver import Halt, parse_halt
from shoal.run.pipe import cut, parse_block
from shoal.run.template import (
    Sources,
    by_position,
    chunked,
    fill,
    packed,
    parse_colsep,
    parse_delimiter,
    split_columns,
    split_items,
    split_sources,
    with_replace_string,
)


@pytest.mark.parametrize(("template", "expected"), [
    ("x {}", "x dir/sub/file.tar.gz"),
    ("x {.}", "x dir/sub/file.tar"),
    ("x {/}", "x file.tar.gz"),
    ("x {//}", "x dir/sub"),
    ("x {/.}", "x file.tar"),
    ("x {#}", "x 7"),
    ("x {%} {#}", "x $SHOAL_SLOT 7"),
    ("x", "x dir/sub/file.tar.gz"),
])
def test_placeholders(template: str, expected: str) -> None:
    assert fill(template, ["dir/sub/file.tar.gz"], 7) == expected


@given(st.lists(st.text(max_size=12), max_size=60), st.integers(1, 8), st.integers(0, 20),
       st.integers(30, 80))
def test_packed_keeps_every_argument_once_in_order_within_the_limit(
        args: list[str], slots: int, base: int, limit: int) -> None:
    jobs = packed(args, slots, base, lambda arg: len(arg) + 1, limit)
    assert [arg for job in jobs for arg in job] == args
    per_job = max(1, -(-len(args) // slots))
    for job in jobs:
        assert 1 <= len(job) <= per_job
        # within the limit, unless one argument is too long for a command alone
        assert base + sum(len(arg) + 1 for arg in job) <= limit or len(job) == 1
    if base + sum(len(arg) + 1 for arg in args) <= limit:  # all fit in one command:
        assert len(jobs) == -(-len(args) // per_job)  # spread evenly, as parallel


@given(st.lists(st.text("ab\n", max_size=9), max_size=30).map("".join), st.integers(1, 12),
       st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_pipe_blocks_are_whole_lines_within_their_size(text: str, block: int,
                                                        reads: list[int]) -> None:
    """However the input arrives, blocks are cut at the same places: whole lines, as many as
    fit in `block` bytes (a longer line alone), the last one maybe unended."""
    data, buffer, blocks = text.encode(), bytearray(), []
    taken, final = 0, False
    while not final:
        size = reads[len(blocks) % len(reads)]
        buffer += data[taken:taken + size]
        taken += size
        final = taken >= len(data)
        while length := cut(buffer, block, final):
            blocks.append(bytes(buffer[:length]))
            del buffer[:length]
    assert b"".join(blocks) == data and not buffer
    for index, piece in enumerate(blocks):
        assert piece.endswith(b"\n") or index == len(blocks) - 1
        assert len(piece) <= block or piece.count(b"\n") <= 1
        if index + 1 < len(blocks):  # the next line did not fit
            following = blocks[index + 1].split(b"\n")[0] + b"\n"
            assert len(piece) + len(following) > block or len(piece) > block


@pytest.mark.parametrize(("text", "size"), [
    ("100", 100), ("1k", 1000), ("1K", 1024), ("2M", 2 * 1024**2), ("1m", 10**6),
    ("1.5K", 1536), (" 3g ", 3 * 10**9),
])
def test_block_sizes_as_gnu_parallel(text: str, size: int) -> None:
    assert parse_block(text) == size


def test_the_number_of_jobs_is_filled_only_where_it_is_known() -> None:
    assert fill("x {#}/{##} {}", ["a"], 2, total=5) == "x 2/5 a"
    assert fill("{##}{#}", ["a"], 3, total=40, quote=False) == "403"
    with pytest.raises(InputError, match=r"\{##\}: the number of jobs is known only"):
        fill("x {##}", ["a"], 1)


def test_arguments_are_quoted_and_numbered() -> None:
    assert fill("echo {}", ["a b", "$HOME"], 1) == "echo 'a b' '$HOME'"
    assert fill("cp {1} {2/}", ["x/y", "p/q.txt"], 1) == "cp x/y q.txt"
    assert fill("echo {//} {.}", ["plain", ".hidden"], 1) == "echo . . plain .hidden"
    with pytest.raises(InputError):
        fill("echo {3}", ["a"], 1)


def test_sources() -> None:
    head, sources = split_sources(["gzip", "-9", ":::", "a", "b", ":::", "c"])
    assert head == ["gzip", "-9"] and sources.lists == (("a", "b"), ("c",))
    assert list(sources.combinations()) == [("a", "c"), ("b", "c")]
    # An empty source is no job, crossed or linked with others (and no division by zero).
    for words, link_all in (([":::"], False), ([":::", "a", ":::"], False),
                            ([":::", "a", "b", ":::+"], False), ([":::", "a", ":::"], True)):
        _, empty = split_sources(["echo", *words], link_all=link_all)
        assert empty.count() == 0 and list(empty.combinations()) == [], words


@pytest.mark.parametrize(("words", "link_all", "expected"), [
    ([":::", "a", "b", "c", ":::+", "1", "2"], False, ["a1", "b2"]),
    ([":::", "a", "b", ":::+", "1", "2", "3"], False, ["a1", "b2"]),
    ([":::", "a", "b", ":::", "1", "2", ":::+", "x", "y"], False, ["a1x", "a2y", "b1x", "b2y"]),
    ([":::", "a", "b", "c", ":::", "1", "2", ":::", "x"], True, ["a1x", "b2x", "c1x"]),
    ([":::+", "a", "b", ":::+", "1", "2"], False, ["a1", "b2"]),  # the first links to none
])
def test_linked_sources(words: list[str], link_all: bool, expected: list[str]) -> None:
    _, sources = split_sources(["echo", *words], link_all=link_all)
    combinations = ["".join(args) for args in sources.combinations()]
    assert combinations == expected and sources.count() == len(expected)


@given(st.lists(st.lists(st.text("ab", min_size=1), min_size=1, max_size=4), min_size=1,
                max_size=4),
       st.lists(st.booleans(), min_size=4, max_size=4), st.booleans())
def test_sources_count_what_they_give(lists: list[list[str]], linked: list[bool],
                                      link_all: bool) -> None:
    """Every source's values are used in their order, one argument per source a job, and
    `count` (the run's total) is the number of combinations."""
    sources = Sources(tuple(tuple(values) for values in lists),
                      (False, *linked[1:len(lists)]), link_all)
    combinations = list(sources.combinations())
    assert len(combinations) == sources.count()
    assert all(len(args) == len(lists) for args in combinations)
    if not link_all and not any(sources.linked):
        assert combinations == list(itertools.product(*lists))
    if link_all:
        assert len(combinations) == max(len(values) for values in lists)
        assert [args[0] for args in combinations][:len(lists[0])] == lists[0]


def test_tagstring_fills_without_quoting() -> None:
    assert fill("T{2}#{#}", ["a b", "$c"], 4, quote=False) == "T$c#4"
    assert fill("tag", ["a b"], 1, quote=False) == "tag"  # no placeholder: nothing appended


@pytest.mark.parametrize(("text", "halt"), [
    ("now,fail=1", Halt("now", "fail", 1)),
    ("soon,fail=10%", Halt("soon", "fail", None, 10.0)),
    ("now,success=1", Halt("now", "success", 1)),
    ("2", Halt("now", "fail", 1)),
    ("-1", Halt("soon", "success", 1)),
    ("20%", Halt("soon", "fail", None, 20.0)),
    ("never", None),
])
def test_halt_forms(text: str, halt: Halt | None) -> None:
    assert parse_halt(text) == halt


@pytest.mark.parametrize("text", ["later,fail=1", "now,fail=0", "now,oops=1", "now,fail=x%"])
def test_bad_halt(text: str) -> None:
    with pytest.raises(InputError, match="--halt"):
        parse_halt(text)


def test_halt_counts_and_percentages() -> None:
    assert Halt("now", "fail", 2).reached(done=5, failed=2, total=10)
    assert not Halt("now", "fail", None, 30.0).reached(done=5, failed=2, total=10)
    assert Halt("soon", "done", None, 50.0).reached(done=3, failed=2, total=10)


def test_wr_timeout_option() -> None:
    [job] = parse_text('sleep 9\t{"timeout": "2m"}\n', "wr", defaults={"cwd": "/tmp"})
    assert job.spec.time_limit_seconds == 120
    with pytest.raises(InputError, match="timeout"):
        parse_text('sleep 9\t{"timeout": "0s"}\n', "wr", defaults={"cwd": "/tmp"})


def test_colsep_numbers_columns_across_sources_and_missing_ones_are_empty() -> None:
    comma = parse_colsep(",")
    columns = split_columns(["a,b", "x"], comma)
    assert columns == ["a", "b", "x"]
    assert fill("echo {3}{1} [{4}]", columns, 1, padded=True) == "echo xa ['']"
    assert fill("echo {}", split_columns(["p q,r"], comma), 1, padded=True) == "echo 'p q' r"
    with pytest.raises(InputError, match="no argument number 4"):
        fill("echo {4}", columns, 1)  # without --colsep a missing source is an error


@pytest.mark.parametrize("text", ["(", "", "x*", "[a-"])
def test_bad_colsep_is_refused(text: str) -> None:
    with pytest.raises(InputError, match=r"^--colsep"):
        parse_colsep(text)


@pytest.mark.parametrize(("data", "delimiter", "items"), [
    (b"a\r\nb\n", None, ["a", "b"]),  # lines lose their CR
    (b"a\n\nb", None, ["a", "", "b"]),  # a last item needs no ending
    (b"a:b:c\n", b":", ["a", "b", "c\n"]),  # another delimiter: items as they are
    (b"p q\0r\0", b"\0", ["p q", "r"]),
    (b"a::b", b"::", ["a", "b"]),
])
def test_split_items(data: bytes, delimiter: bytes | None, items: list[str]) -> None:
    assert split_items(data, delimiter, "args") == items


@pytest.mark.parametrize(("data", "delimiter", "where"), [
    (b"a\nb\n\xffc\n", None, "args:3:"), (b"a\0b\xfe\0", b"\0", "args:2:")])
def test_items_that_are_not_utf8_are_refused_by_their_number(
        data: bytes, delimiter: bytes | None, where: str) -> None:
    with pytest.raises(InputError, match=f"^{where} not UTF-8 text"):
        split_items(data, delimiter, "args")


@pytest.mark.parametrize(("text", "delimiter"), [
    ("\\t", b"\t"), ("\\0", b"\0"), ("\\x1f", b"\x1f"), ("\\012", b"\n"), (":", b":"),
    ("::", b"::")])
def test_delimiters_take_c_escapes(text: str, delimiter: bytes) -> None:
    assert parse_delimiter(text) == delimiter


def test_max_args_and_replace_string() -> None:
    assert list(chunked(iter([("1",), ("2",), ("3",)]), 2)) == [("1", "2"), ("3",)]
    assert list(chunked(iter([("1",), ("2",)]), 0)) == [(), ()]
    assert with_replace_string("mv % %.bak", "%") == "mv {} {}.bak"
    for bad in (lambda: parse_delimiter(""), lambda: with_replace_string("x", "")):
        with pytest.raises(InputError):
            bad()


def test_a_delimiter_that_is_not_utf8_is_refused() -> None:
    """It could only split the input's characters (which must be UTF-8) in two."""
    with pytest.raises(InputError, match=r"^-d: \\x80 is not UTF-8 text"):
        parse_delimiter("\\x80")
    assert split_items("aĀ:b".encode(), b":", "args") == ["aĀ", "b"]


def test_header_names_become_positions_and_other_braces_stay() -> None:
    names = ["size", "threads", "size"]
    assert by_position("run {size} {threads/} {size.} {print} {1} {#} {}", names) == \
        "run {1} {2/} {1.} {print} {1} {#} {}"
    _, sources = split_sources(["echo", ":::", "x", "a", ":::", "y", "b", "c"])
    named, values = sources.without_headers()
    assert named == ["x", "y"] and list(values.combinations()) == [("a", "b"), ("a", "c")]


def test_max_args_repeat_a_word_holding_an_arguments_placeholder() -> None:
    """parallel's context replace under -N: the word is repeated for each argument; a word
    with only `{N}` or none is not."""
    assert fill("mv {} {.}.bak {1}x", ["a.c", "b"], 1, per_word=True, padded=True) == \
        "mv a.c b a.bak b.bak a.cx"
    assert fill("echo {}", [], 1, per_word=True, padded=True) == "echo "

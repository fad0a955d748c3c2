"""Claiming runmaker lines: compare-and-set of the state byte, and judging lines left running."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.formats import RunmakerFile
from shoal.formats.runmaker import claim_lock_range
from shoal.runfile.claims import ClaimBook, check_claims, claims_path
from shoal.runfile.lines import read_lines

TEXT = "# runs\n. echo a\nr echo b\nr echo c\n? echo d\nd echo e\n"


def offsets(path: Path) -> dict[str, int]:
    with RunmakerFile(path, writable=False) as runmaker:
        _, lines = read_lines(runmaker)
    return {line.parsed.spec.cmd: line.offset for line in lines}


def test_lock_range_holds_the_state_byte_and_byte_one() -> None:
    # runmaker4 locks `offset` bytes from byte 1 (its lockf arguments are len, start): every
    # such range holds byte 1, and a line's state byte when its offset is 1 or more.
    for offset in (0, 1, 2, 57):
        start, length = claim_lock_range(offset)
        assert start <= offset < start + length
        assert start <= 1 < start + length


def test_compare_and_set(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(TEXT)
    at = offsets(path)
    with RunmakerFile(path) as runmaker:
        assert runmaker.compare_and_set(at["echo a"], ".", "r") == "."
        assert runmaker.compare_and_set(at["echo a"], ".", "r") is None  # taken already
        assert runmaker.compare_and_set(at["echo e"], ".!e", "r") is None
        # The line must still read as it did: an edited file is left alone.
        assert runmaker.compare_and_set(at["echo e"], "d", ".", b" echo X") is None
        assert runmaker.compare_and_set(at["echo e"], "d", ".", b" echo e") == "d"
        assert runmaker.states([at["echo a"], at["echo e"], 10_000]) == ["r", ".", ""]
    assert path.read_text() == TEXT.replace(". echo a", "r echo a").replace("d echo e",
                                                                            ". echo e")


def test_claims_are_seen_by_another_description_in_the_same_process(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(TEXT)
    with ClaimBook(path) as mine, ClaimBook(path) as theirs:
        assert mine.try_hold(7)
        assert not theirs.try_hold(7)
        assert theirs.try_hold(8)
        mine.release(7)
        assert theirs.try_hold(7)
    assert claims_path(path) == tmp_path / ".shoal" / "runmaker" / "runs.txt.claims"


def test_check_tells_live_dead_and_unjudgeable_lines(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(TEXT)
    at = offsets(path)
    dead, live = at["echo b"], at["echo c"]
    with ClaimBook(path) as gone:  # a runner that claimed "echo b", then died
        assert gone.try_hold(dead)
        gone.mark(dead)
    with ClaimBook(path) as runner, RunmakerFile(path) as runmaker:
        assert runner.try_hold(live)
        runner.mark(live)
        data, lines = read_lines(runmaker)
        parsed = [line.parsed for line in lines]

        looked = check_claims(runmaker, data, parsed, path, recover=False)
        assert [ref.line for ref in looked.dead] == [3]
        assert [ref.line for ref in looked.live] == [4]
        assert [ref.line for ref in looked.unjudgeable] == [5]  # "?": runmaker4 claiming
        assert path.read_text() == TEXT

        done = check_claims(runmaker, data, parsed, path, recover=True)
        assert [ref.line for ref in done.recovered] == [3]
        assert [ref.line for ref in done.live] == [4]
    assert path.read_text() == TEXT.replace("r echo b", ". echo b")
    with ClaimBook(path) as book:
        assert book.marks() == {live}  # the dead runner's mark is gone; the live one stays


def test_a_line_runmaker4_set_running_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(". a\nr b\n")
    with RunmakerFile(path) as runmaker:
        data, lines = read_lines(runmaker)
        found = check_claims(runmaker, data, [line.parsed for line in lines], path,
                             recover=True)
    assert [ref.cmd for ref in found.unjudgeable] == ["b"]
    assert not found.recovered
    assert path.read_text() == ". a\nr b\n"


def test_a_line_a_live_runner_ended_and_runmaker4_retook_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marks read before the lines' locks are stale: between the two, a live shoal runner
    ended "echo b" (its mark cleared) and runmaker4 set it running again. Judged under the
    lock, it is runmaker4's: left alone."""
    path = tmp_path / "runs.txt"
    path.write_text(TEXT)
    at = offsets(path)
    stale = {at["echo b"]}
    monkeypatch.setattr(ClaimBook, "marks", lambda self: stale)
    with RunmakerFile(path) as runmaker:
        data, lines = read_lines(runmaker)
        found = check_claims(runmaker, data, [line.parsed for line in lines], path,
                             recover=True)
    assert not found.recovered and not found.dead
    assert "echo b" in [ref.cmd for ref in found.unjudgeable]
    assert path.read_text() == TEXT


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text(". a\nx b\n")
    with RunmakerFile(path) as runmaker, pytest.raises(Exception, match=r"runs.txt:2: state"):
        read_lines(runmaker)

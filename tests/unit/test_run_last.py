"""`<base>/last` names the newest run; a run refused before it took a job gives the name
back, but never over a run that named itself there since."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.run import state


@pytest.mark.parametrize("before, other_came, left", [
    (None, False, None),  # the first run of the directory, refused: no `last` at all
    (b"runs/older\n", False, b"runs/older\n"),  # back to the run before
    (b"runs/older\n", True, b"runs/other\n"),  # another run took `last` meanwhile: its own
    (None, True, b"runs/other\n"),
])
def test_a_refused_run_gives_last_back_only_if_it_still_holds_it(
        tmp_path: Path, before: bytes | None, other_came: bool, left: bytes | None) -> None:
    if before is not None:
        (tmp_path / state.LAST).write_bytes(before)
    refused = state.run_dir(tmp_path, "refused")
    assert state.remember_last(tmp_path, refused) == before
    assert state.read_last(tmp_path) == b"runs/refused\n"
    if other_came:
        state.remember_last(tmp_path, state.run_dir(tmp_path, "other"))
    state.forget_last(tmp_path, refused, before)
    assert state.read_last(tmp_path) == left
    assert [path.name for path in tmp_path.iterdir() if path.name != state.LAST] == []

"""`shoal run -j` in GNU parallel's forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.run.slots import jobs_at_once


@pytest.mark.parametrize(("text", "cores", "slots"), [
    ("1", 8, 1), ("12", 2, 12), (" 3 ", 8, 3), ("0", 8, 8), ("00", 3, 3),
    ("50%", 8, 4), ("50%", 3, 1), ("1%", 8, 1), ("200%", 2, 4), ("12.5%", 16, 2),
    ("+0", 8, 8), ("+2", 8, 10), ("-1", 8, 7), ("-8", 8, 1), ("-100", 2, 1),
])
def test_forms(text: str, cores: int, slots: int) -> None:
    assert jobs_at_once(text, cores) == slots


@pytest.mark.parametrize("text", ["", "x", "٣", "2.5", "+1.5", "+50%", "-1%", "%",
                                  "1e3", "--1", "½"])
def test_refused_with_the_option_named(text: str) -> None:
    with pytest.raises(InputError, match=r"^-j"):
        jobs_at_once(text, 8)


@given(st.integers(min_value=1, max_value=512), st.integers(min_value=0, max_value=1000),
       st.sampled_from(["", "%", "+", "-"]))
def test_always_at_least_one(cores: int, number: int, form: str) -> None:
    text = f"{form}{number}" if form in ("+", "-") else f"{number}{form}"
    assert jobs_at_once(text, cores) >= 1

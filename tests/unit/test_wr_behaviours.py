"""wr's on_failure/on_success/on_exit behaviours: accepted only where ignoring them changes
nothing shoal does; refused, with the line and a way to do it, where it would."""

from __future__ import annotations

import pytest

from shoal.core.errors import InputError
from shoal.formats import parse_text

BEHAVIOURS = [
    ('{"on_exit": [{"cleanup": true}]}', None),
    ('{"on_failure": [{"cleanup_all": true}], "on_success": [{"nothing": true}]}', None),
    ('{"on_failure": [{"run": "notify.sh"}]}', "the 'run' behaviour is not supported"),
    ('{"on_success": [{"cleanup": true}, {"remove": true}]}',
     "the 'remove' behaviour is not supported"),
    ('{"on_exit": [{"explode": true}]}', "the 'explode' behaviour is not supported"),
]


@pytest.mark.parametrize(("options", "refusal"), BEHAVIOURS)
def test_behaviours_are_kept_or_refused_never_ignored(options: str, refusal: str | None) -> None:
    text = f"echo hi\t{options}\n"
    if refusal is None:
        [job] = parse_text(text, "wr", source="jobs.wr", defaults={"cwd": "/tmp"})
        assert job.spec.cmd == "echo hi"
    else:
        with pytest.raises(InputError, match=rf"jobs\.wr:1: .*{refusal}"):
            parse_text(text, "wr", source="jobs.wr", defaults={"cwd": "/tmp"})

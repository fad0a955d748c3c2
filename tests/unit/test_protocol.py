"""Messages built from values checked already (`trusted`) are the messages validation makes."""

from __future__ import annotations

import pytest

from shoal.core.protocol import Assign, Assignment, FileEntry, decode_to_worker

FIELDS = dict(job_id=7, lease_id=(3 << 20) | 12345, cmd="echo 'é' $HOME", cwd="/tmp",
              env={"TOKEN": "s3cret"}, cores=2, memory_bytes=1 << 30, gpus=["0"],
              time_limit_seconds=9.5, gate=True,
              files=[FileEntry(path="out/logs", kind="dir", mode=0o700)], always_copy=True)


def test_a_trusted_assignment_equals_the_validated_one() -> None:
    trusted, checked = Assignment.trusted(**FIELDS), Assignment(**FIELDS)
    assert trusted == checked
    assert trusted.model_dump() == checked.model_dump()
    assert trusted.model_dump_json() == checked.model_dump_json()
    assert trusted.model_fields_set == checked.model_fields_set
    assert repr(trusted) == repr(checked) and "s3cret" not in repr(trusted)
    with pytest.raises(Exception, match="frozen"):
        trusted.cores = 3  # type: ignore[misc]


def test_a_trusted_assignment_travels_as_the_validated_one() -> None:
    message = Assign(items=[Assignment.trusted(**FIELDS)])
    assert decode_to_worker(message.model_dump_json().encode()) == Assign(
        items=[Assignment(**FIELDS)])


@pytest.mark.parametrize("values", [
    {k: v for k, v in FIELDS.items() if k != "gate"},  # a default left out
    {**FIELDS, "colour": "red"},  # a field it does not have
])
def test_trusted_needs_exactly_the_fields(values: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="exactly its fields"):
        Assignment.trusted(**values)


def test_a_trusted_message_carries_its_own_type_tag() -> None:
    trusted = Assign.trusted(items=[Assignment.trusted(**FIELDS)])
    checked = Assign(items=[Assignment(**FIELDS)])
    assert trusted.type == "assign"
    assert trusted.model_dump_json() == checked.model_dump_json()
    assert decode_to_worker(trusted.model_dump_json().encode()) == checked

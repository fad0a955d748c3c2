"""Chunks of a large add, as kept between their arrival and the commit: read back as they
were staged; a chunk another version of shoal staged is checked again (it may no longer
fit)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.core.models import JobSpec
from shoal.server import adds
from shoal.store import key_hash, key_hashes


def staged(*specs: JobSpec, checked_by: str | None = adds._CHECKED_BY) -> str:
    jobs = [spec.model_dump(mode="json", exclude_defaults=True) for spec in specs]
    return json.dumps(jobs if checked_by is None else {"checked_by": checked_by, "jobs": jobs})


SPECS = [JobSpec(cmd="echo 1", cwd="/tmp"),
         JobSpec(cmd="env", cwd="/srv", env={"K": "v"}, limits=["db:2"], priority=5,
                 after=["group:prep"], time_seconds=1.5, memory_bytes=1 << 30,
                 files=[{"path": "in/a", "sha256": "0" * 64, "size": 3}])]


@pytest.mark.parametrize("checked_by", [adds._CHECKED_BY, "0.0.1:another", None])
def test_chunks_read_back_equal_to_what_was_staged(checked_by: str | None) -> None:
    assert list(adds._parse_each([staged(*SPECS[:1], checked_by=checked_by),
                                  staged(*SPECS[1:], checked_by=checked_by)])) == [
        SPECS[:1], SPECS[1:]]


def test_specs_of_a_chunk_this_shoal_checked_share_no_collection_that_can_change() -> None:
    [[plain]] = adds._parse_each([staged(SPECS[0])])
    with pytest.raises(TypeError, match="never changed in place"):
        plain.env["K"] = "v"


@pytest.mark.parametrize("checked_by", ["0.0.1:another", None])
def test_a_chunk_another_version_staged_that_no_longer_reads_as_jobs_is_refused(
        checked_by: str | None) -> None:
    chunk = [{"cmd": "", "cwd": "/tmp"}]
    text = json.dumps(chunk if checked_by is None else {"checked_by": checked_by,
                                                          "jobs": chunk})
    with pytest.raises(InputError, match="a staged chunk no longer reads as jobs"):
        list(adds._parse_each([text]))


@given(owner=st.text(max_size=8), cwd=st.text(max_size=8),
       cmds=st.lists(st.text(max_size=16), max_size=8))
def test_digests_made_in_bulk_are_those_made_one_at_a_time(owner: str, cwd: str,
                                                            cmds: list[str]) -> None:
    # A staged chunk's digests are made in bulk and a single job's one by one: a duplicate
    # is found only if the two agree.
    assert key_hashes(owner, cmds, cwd) == [key_hash(owner, cmd, cwd) for cmd in cmds]


@given(owner=st.text(max_size=8), cwd=st.text(max_size=8), cmd=st.text(max_size=16))
def test_the_digest_is_the_one_databases_already_hold(owner: str, cwd: str, cmd: str) -> None:
    # job_keys rows written by earlier versions are looked up by this digest: it stays the
    # signed big-endian 64-bit blake2b of "owner NUL cmd NUL cwd".
    digest = hashlib.blake2b(f"{owner}\0{cmd}\0{cwd}".encode(), digest_size=8).digest()
    assert key_hash(owner, cmd, cwd) == int.from_bytes(digest, "big", signed=True)


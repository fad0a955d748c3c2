"""Chunks of a large add, as kept between their arrival and the commit: read back as they
were staged, and checked again (a chunk from another version of shoal may no longer fit)."""

from __future__ import annotations

import json

import pytest

from shoal.core.errors import InputError
from shoal.core.models import JobSpec
from shoal.server import adds


def staged(*specs: JobSpec) -> str:
    return json.dumps([spec.model_dump(mode="json", exclude_defaults=True) for spec in specs])


def test_chunks_read_back_equal_to_what_was_staged() -> None:
    specs = [JobSpec(cmd="echo 1", cwd="/tmp"),
             JobSpec(cmd="env", cwd="/srv", env={"K": "v"}, limits=["db:2"], priority=5,
                     after=["group:prep"], time_seconds=1.5, memory_bytes=1 << 30)]
    assert list(adds._parse_each([staged(*specs[:1]), staged(*specs[1:])])) == [
        specs[:1], specs[1:]]


def test_a_chunk_that_no_longer_reads_as_jobs_is_refused() -> None:
    with pytest.raises(InputError, match="a staged chunk no longer reads as jobs"):
        list(adds._parse_each([json.dumps([{"cmd": "", "cwd": "/tmp"}])]))

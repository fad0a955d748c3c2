"""Assignments are split so that no message to a worker passes the protocol's size limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.core.errors import InputError
from shoal.core.models import MAX_ENV_VALUE_BYTES, JobSpec
from shoal.core.protocol import MAX_MESSAGE_BYTES, Assign, Assignment, encode
from shoal.server.effects import Effects
from shoal.server.service import Service
from shoal.store import Store


def big_assignment(job_id: int, env_bytes: int) -> Assignment:
    value = "\x01" * (MAX_ENV_VALUE_BYTES // 2)  # escapes to six bytes each in JSON
    env = {f"V{i}": value for i in range(env_bytes // len(value))}
    return Assignment(job_id=job_id, lease_id=job_id, cmd="true", cwd="/", env=env, cores=1,
                      memory_bytes=0)


def test_big_assignments_are_sent_in_several_messages_each_under_the_limit() -> None:
    effects = Effects()
    effects.assignments[1] = [big_assignment(i, 1 << 20) for i in range(1, 31)]
    messages = effects.messages()[1]
    assert len(messages) > 1
    assert all(isinstance(m, Assign) for m in messages)
    sent = [item.job_id for m in messages for item in m.items]  # type: ignore[union-attr]
    assert sent == list(range(1, 31))
    assert all(len(encode(m).encode()) < MAX_MESSAGE_BYTES for m in messages)


def test_small_assignments_go_in_one_message() -> None:
    effects = Effects()
    effects.assignments[1] = [big_assignment(i, 0) for i in range(1, 1001)]
    assert len(effects.messages()[1]) == 1


def test_a_job_too_large_for_any_message_is_refused_at_add(tmp_path: Path) -> None:
    service = Service(Store(tmp_path / "shoal.db"))
    files = [{"path": "d/" + "x" * 4000, "sha256": "0" * 64, "size": 1}] * 2000
    with pytest.raises(InputError, match=r"jobs\[1\]: command, environment and files together"):
        service.add([JobSpec(cmd="true", cwd="/"), JobSpec(cmd="x", cwd="/", files=files)])
    assert service.reactor.jobs == {}

"""A worker speaks only for the attempts it holds: reports about another worker's are not
passed on, to the orchestrator or to a reader of live output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shoal.core.models import JobSpec
from shoal.core.protocol import (
    Assign,
    OutputChunk,
    Ready,
    ReadyItem,
    Started,
    StartedItem,
    ToWorker,
)
from shoal.server.service import Service
from shoal.store import Store
from tests.unit.factories import register


class Link:
    def __init__(self) -> None:
        self.sent: list[ToWorker] = []

    def send(self, message: ToWorker) -> None:
        self.sent.append(message)

    def close(self, reason: str) -> None:
        pass


def two_workers_and_a_component(tmp_path: Path) -> tuple[Service, list[Any], int, int, int]:
    service = Service(Store(tmp_path / "shoal.db"))
    heard: list[Any] = []
    service.ensemble_messages = lambda worker_id, item: heard.append((worker_id, item))
    links = {name: Link() for name in ("w1", "w2")}
    ids = {name: service.join(register(name), link) for name, link in links.items()}
    service.add([JobSpec(cmd="serve", cwd="", gate=True, on_worker="w1")])
    [assign] = [m for m in links["w1"].sent if isinstance(m, Assign)]
    item = assign.items[0]
    return service, heard, ids["w2"], ids["w1"], item.lease_id


def test_ready_and_started_from_a_worker_that_does_not_hold_the_attempt_are_dropped(
        tmp_path: Path) -> None:
    service, heard, intruder, holder, lease = two_workers_and_a_component(tmp_path)
    ready = ReadyItem(job_id=1, lease_id=lease, pid=99, cwd="/tmp")
    started = StartedItem(job_id=1, lease_id=lease, pid=99, started_at=1.0)
    service.deliver(intruder, Ready(items=[ready]))
    service.deliver(intruder, Started(items=[started]))
    assert heard == []
    service.deliver(holder, Ready(items=[ready]))
    service.deliver(holder, Started(items=[started]))
    assert [worker for worker, _ in heard] == [holder, holder]


def test_live_output_is_taken_only_from_the_worker_asked(tmp_path: Path) -> None:
    service, _heard, intruder, holder, lease = two_workers_and_a_component(tmp_path)
    service.deliver(holder, Started(items=[StartedItem(job_id=1, lease_id=lease, pid=99,
                                                       started_at=1.0)]))

    async def peek() -> OutputChunk | None:
        asking = asyncio.ensure_future(service.peek(1, "stdout", 0))
        await asyncio.sleep(0)
        request_id = max(service._peeks)
        forged = OutputChunk(request_id=request_id, lease_id=lease, stream="stdout", offset=0,
                             data="forged", found=True, total_bytes=6)
        service.deliver(intruder, forged)
        service.deliver(holder, forged.model_copy(update={"data": "real"}))
        return await asking

    answer = asyncio.run(peek())
    assert answer is not None and answer.data == "real"


def test_a_finished_job_shows_its_output_before_the_store_has_it(tmp_path: Path) -> None:
    """The state is in memory at once, the output in the store only after the loop commits:
    a reader in between sees both, never 'done' with nothing captured."""
    from shoal.core.protocol import Captured, Finished
    from tests.unit.factories import result

    service = Service(Store(tmp_path / "shoal.db"))
    link = Link()
    worker = service.join(register("w1"), link)
    service.add([JobSpec(cmd="echo first", cwd="/")])
    [assign] = [m for m in link.sent if isinstance(m, Assign)]
    finished = result(1, assign.items[0].lease_id).model_copy(
        update={"stdout": Captured(head="first\n", tail="", total_bytes=6)})
    service.deliver(worker, Finished(items=[finished]))
    job = service.job(1)
    assert job["state"] == "done"
    assert job["stdout"]["head"] == "first\n"
    assert service.logs(1, "stdout")["head"] == "first\n"
    assert service.store.output(1, "stdout").head == "first\n"  # the read committed it first


def test_a_finished_jobs_attempt_history_agrees_with_its_state_before_the_commit(
        tmp_path: Path) -> None:
    from shoal.core.protocol import Finished
    from tests.unit.factories import result

    service = Service(Store(tmp_path / "shoal.db"))
    link = Link()
    worker = service.join(register("w1"), link)
    service.add([JobSpec(cmd="true", cwd="/")])
    [assign] = [m for m in link.sent if isinstance(m, Assign)]
    lease = assign.items[0].lease_id
    service.deliver(worker, Finished(items=[result(1, lease, exit_code=0)]))
    [attempt] = service.job(1)["attempt_history"]
    assert (attempt["lease_id"], attempt["outcome"], attempt["exit_code"]) == (lease, "exited", 0)
    assert attempt["worker"] == "w1"

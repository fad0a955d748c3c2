"""Gated attempts against real processes: staged, held at the start line, released at an instant.

Also the worker agent's side of it (Ready, Release, TimeProbe, Peek) and the HTTP blob fetcher.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from shoal.core.protocol import (
    Assign,
    Assignment,
    AttemptResult,
    FileEntry,
    FromWorker,
    OutputChunk,
    Peek,
    Ready,
    ReadyItem,
    Release,
    Resources,
    Started,
    StartedItem,
    TimeProbe,
    TimeReply,
)
from shoal.worker.agent import Agent
from shoal.worker.blobs import download_blob
from shoal.worker.runner import Runner
from shoal.worker.staging import StagingError

M = TypeVar("M")
# How far ahead a release is set in these tests: enough for the loop to be idle by then.
LEAD_SECONDS = 0.2


def gated(cmd: str, *, lease_id: int = 1, cwd: Path | str = "",
          files: list[FileEntry] | None = None, always_copy: bool = False,
          time_limit_seconds: float | None = None) -> Assignment:
    return Assignment(job_id=1000 + lease_id, lease_id=lease_id, cmd=cmd, cwd=str(cwd), env={},
                      cores=1, memory_bytes=0, time_limit_seconds=time_limit_seconds,
                      gate=True, files=files or [], always_copy=always_copy)


class Blobs:
    """fetch_blob serving content from memory; counts fetches, can be made slow or failing."""

    def __init__(self, *contents: bytes) -> None:
        self.by_sha = {hashlib.sha256(c).hexdigest(): c for c in contents}
        self.fetches = 0
        self.delay_seconds = 0.0
        self.failure: Exception | None = None

    async def __call__(self, sha256: str, destination: Path) -> None:
        self.fetches += 1
        await asyncio.sleep(self.delay_seconds)
        if self.failure is not None:
            raise self.failure
        destination.write_bytes(self.by_sha[sha256])


def file_entry(path: str, content: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(path=path, mode=mode, size=len(content),
                     sha256=hashlib.sha256(content).hexdigest())


@dataclass
class Events:
    """What the runner reported, in order."""

    ready: dict[int, ReadyItem] = field(default_factory=dict)
    started: dict[int, StartedItem] = field(default_factory=dict)
    finished: dict[int, AttemptResult] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)

    def on_ready(self, item: ReadyItem) -> None:
        self.ready[item.lease_id] = item
        self.order.append(("ready", item.lease_id))

    def on_started(self, item: StartedItem) -> None:
        self.started[item.lease_id] = item
        self.order.append(("started", item.lease_id))

    def on_finished(self, result: AttemptResult) -> None:
        self.finished[result.lease_id] = result
        self.order.append(("finished", result.lease_id))


async def eventually(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def gate_runner(tmp_path: Path, blobs: Blobs | None = None
                      ) -> AsyncIterator[tuple[Runner, Events]]:
    events = Events()
    runner = Runner(tmp_path / "spool", host="test-host", on_started=events.on_started,
                    on_finished=events.on_finished, on_ready=events.on_ready,
                    fetch_blob=blobs, workdir_base=tmp_path / "fresh")
    try:
        yield runner, events
    finally:
        await asyncio.wait_for(runner.shutdown(kill=True), timeout=10)


def test_a_gated_command_waits_for_its_release(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.start(gated(f"echo ran > {marker}", cwd=tmp_path))
            await eventually(lambda: 1 in events.ready)
            await asyncio.sleep(0.5)
            assert not marker.exists()  # spawned, but held at the line
            assert events.started == {} and events.finished == {}
            assert [a.lease_id for a in runner.running()] == [1]
            assert runner.held() == [events.ready[1]]

            at = time.time() + LEAD_SECONDS
            assert await runner.release([1], at) == 1
            await eventually(lambda: 1 in events.finished)
            assert marker.read_text() == "ran\n"
            assert events.order == [("ready", 1), ("started", 1), ("finished", 1)]
            assert runner.held() == []
            ready, started, result = events.ready[1], events.started[1], events.finished[1]
            assert ready.pid == started.pid == result.pid
            assert (result.outcome, result.exit_code) == ("exited", 0)
            assert result.started_at == started.started_at
            assert at <= started.started_at  # never before the line; precision is benched

    asyncio.run(main())


def test_gated_attempts_released_together_all_start_after_the_line(tmp_path: Path) -> None:
    """Each start is the process's own clock reading as it passed the line: none may be
    before the release instant, and each reports exactly once. How close together they
    start is a figure for bench/start_skew.py, not an assertion here (shared machines)."""
    count = 3

    async def main() -> tuple[float, list[float]]:
        async with gate_runner(tmp_path) as (runner, events):
            leases = list(range(10, 10 + count))
            for lease_id in leases:
                runner.start(gated("sleep 0.05", lease_id=lease_id, cwd=tmp_path))
            await eventually(lambda: all(lease_id in events.ready for lease_id in leases))
            at = time.time() + LEAD_SECONDS
            assert await runner.release(leases, at) == count
            await eventually(lambda: all(lease_id in events.finished for lease_id in leases))
            return at, [events.started[lease_id].started_at for lease_id in leases]

    at, starts = asyncio.run(main())
    assert len(starts) == count
    assert all(start >= at for start in starts), (at, starts)


def test_a_relative_directory_is_under_the_workers_working_directory(tmp_path: Path) -> None:
    """As a NetJobs agent runs its commands where it was started: `shoal worker --workdir`."""
    workdir = tmp_path / "agent-here"
    (workdir / "scripts").mkdir(parents=True)
    (workdir / "scripts" / "hello.sh").write_text("echo hello from $(pwd)\n")

    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.workdir = workdir
            runner.start(gated("bash scripts/hello.sh", lease_id=1, cwd="."))
            runner.start(gated("pwd", lease_id=2, cwd="sub/dir"))
            await eventually(lambda: 1 in events.ready and 2 in events.ready)
            assert events.ready[1].cwd == str(workdir)
            assert events.ready[2].cwd == str(workdir / "sub" / "dir")  # made if missing
            assert await runner.release([1, 2], time.time() + LEAD_SECONDS) == 2
            await eventually(lambda: 1 in events.finished and 2 in events.finished)
            assert events.finished[1].exit_code == 0

    asyncio.run(main())
    assert (workdir / "sub" / "dir").is_dir()


def test_files_are_staged_in_a_fresh_directory(tmp_path: Path) -> None:
    script = b"#!/bin/sh\ncat data.txt\n"
    blobs = Blobs(script, b"payload")
    files = [file_entry("run.sh", script, 0o755), file_entry("data.txt", b"payload"),
             FileEntry(path="out", kind="dir", mode=0o700)]

    async def main() -> None:
        async with gate_runner(tmp_path, blobs) as (runner, events):
            runner.start(gated("./run.sh; pwd; ls -ld out | cut -c1-10", files=files))
            await eventually(lambda: 1 in events.ready)
            ready = events.ready[1]
            assert (ready.copied_files, ready.copied_bytes, ready.skipped_files) == (
                2, len(script) + 7, 0)
            workdir = Path(ready.cwd)
            assert workdir.parent == tmp_path / "fresh"
            assert workdir.name.startswith("shoal-1001-")
            await runner.release([1], 0.0)  # an instant already past: at once
            await eventually(lambda: 1 in events.finished)
            assert events.finished[1].stdout.head == f"payload{workdir}\ndrwx------\n"

    asyncio.run(main())


def test_a_missing_base_directory_is_made(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "today"

    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.start(gated("pwd", cwd=base))
            await eventually(lambda: 1 in events.ready)
            assert events.ready[1].cwd == str(base)
            await runner.release([1], 0.0)
            await eventually(lambda: 1 in events.finished)
            assert events.finished[1].stdout.head == f"{base}\n"

    asyncio.run(main())


def test_unchanged_files_are_not_fetched_again(tmp_path: Path) -> None:
    blobs = Blobs(b"big model", b"config")
    files = [file_entry("model.bin", b"big model"), file_entry("conf/app.conf", b"config")]

    async def run_once(runner: Runner, events: Events, lease_id: int,
                       always_copy: bool = False) -> ReadyItem:
        runner.start(gated("true", lease_id=lease_id, cwd=tmp_path / "base", files=files,
                           always_copy=always_copy))
        await eventually(lambda: lease_id in events.ready)
        await runner.release([lease_id], 0.0)
        await eventually(lambda: lease_id in events.finished)
        return events.ready[lease_id]

    async def main() -> None:
        async with gate_runner(tmp_path, blobs) as (runner, events):
            first = await run_once(runner, events, 1)
            assert (first.copied_files, first.skipped_files, blobs.fetches) == (2, 0, 2)
            second = await run_once(runner, events, 2)
            assert (second.copied_files, second.skipped_files, blobs.fetches) == (0, 2, 2)
            third = await run_once(runner, events, 3, always_copy=True)
            assert (third.copied_files, third.skipped_files, blobs.fetches) == (2, 0, 4)

    asyncio.run(main())


def test_a_failed_fetch_is_a_spawn_error_naming_the_file(tmp_path: Path) -> None:
    blobs = Blobs(b"x")
    blobs.failure = ConnectionError("connection refused")

    async def main() -> None:
        async with gate_runner(tmp_path, blobs) as (runner, events):
            runner.start(gated("true", cwd=tmp_path, files=[file_entry("tool", b"x")]))
            await eventually(lambda: 1 in events.finished)
            result = events.finished[1]
            assert result.outcome == "spawn_error"
            assert result.error is not None
            assert result.error.startswith(f"{tmp_path / 'tool'}: ")
            assert "connection refused" in result.error
            assert events.ready == {} and events.started == {}
            assert runner.running() == [] and runner.busy_cores == 0

    asyncio.run(main())


def test_a_held_attempt_can_be_killed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.start(gated(f"touch {marker}", cwd=tmp_path))
            await eventually(lambda: 1 in events.ready)
            assert runner.kill(1001, 1, "not needed") is True
            await eventually(lambda: 1 in events.finished)
            assert await runner.release([1], 0.0) == 0  # too late: it is gone
            result = events.finished[1]
            assert (result.outcome, result.error, result.signal) == ("killed", "not needed", 15)
            assert events.started == {}
            assert not marker.exists()

    asyncio.run(main())


def test_an_attempt_killed_while_preparing_never_spawns(tmp_path: Path) -> None:
    blobs = Blobs(b"slow")
    blobs.delay_seconds = 5.0

    async def main() -> None:
        async with gate_runner(tmp_path, blobs) as (runner, events):
            runner.start(gated("true", cwd=tmp_path, files=[file_entry("f", b"slow")]))
            await asyncio.sleep(0.1)
            assert [a.pid for a in runner.running()] == [None]  # here, but no process yet
            assert runner.kill(1001, 1, "cancelled by user") is True
            await eventually(lambda: 1 in events.finished)
            result = events.finished[1]
            assert (result.outcome, result.error) == ("killed", "cancelled by user")
            assert events.ready == {}
            assert list(tmp_path.glob(".f.*")) == []  # the partial file is cleaned up

    asyncio.run(main())


def test_a_release_before_ready_starts_it_once_ready(tmp_path: Path) -> None:
    blobs = Blobs(b"data")
    blobs.delay_seconds = 0.3

    async def main() -> None:
        async with gate_runner(tmp_path, blobs) as (runner, events):
            runner.start(gated("cat f", cwd=tmp_path, files=[file_entry("f", b"data")]))
            assert await runner.release([1], 0.0) == 0  # still preparing
            await eventually(lambda: 1 in events.finished)
            assert events.order == [("ready", 1), ("started", 1), ("finished", 1)]
            assert events.finished[1].stdout.head == "data"

    asyncio.run(main())


def test_the_time_limit_counts_from_the_release(tmp_path: Path) -> None:
    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.start(gated("sleep 0.3", cwd=tmp_path, time_limit_seconds=0.6))
            runner.start(gated("sleep 5", lease_id=2, cwd=tmp_path, time_limit_seconds=0.6))
            await eventually(lambda: len(events.ready) == 2)
            await asyncio.sleep(1.0)  # held longer than the limit: no matter
            assert events.finished == {}
            await runner.release([1, 2], time.time() + 0.05)
            await eventually(lambda: len(events.finished) == 2)
            assert (events.finished[1].outcome, events.finished[1].exit_code) == ("exited", 0)
            assert events.finished[2].outcome == "time_limit"
            assert 0.55 < events.finished[2].wall_seconds < 1.5

    asyncio.run(main())


def test_the_command_runs_as_under_bash_c(tmp_path: Path) -> None:
    """No trace of the gate: arguments, $0, open descriptors, environment, quoting."""
    # The shell's descriptors are listed from a plain command: a pipeline's own pipes would
    # show up in the listing, or not, depending on timing.
    cmd = ("echo \"$0 $# ${1-none}\"; ls /proc/$$/fd > fds.$SHOAL_ATTEMPT_LEASE; "
           "echo $(sort -n fds.$SHOAL_ATTEMPT_LEASE); env | grep -c -i shoal_gate; "
           "echo 'it''s \"quoted\" $HOME' \\$HOME; exit 3")

    async def main() -> None:
        async with gate_runner(tmp_path) as (runner, events):
            runner.start(gated(cmd, cwd=tmp_path))
            runner.start(gated(cmd, lease_id=2, cwd=tmp_path).model_copy(update={"gate": False}))
            await eventually(lambda: 1 in events.ready)
            await runner.release([1], 0.0)
            await eventually(lambda: len(events.finished) == 2)
            held, plain = events.finished[1], events.finished[2]
            assert held.stdout.head == plain.stdout.head
            assert held.stdout.head.splitlines()[:3] == ["bash 0 none", "0 1 2", "0"]
            assert (held.exit_code, plain.exit_code) == (3, 3)

    asyncio.run(main())


# ---- the agent ------------------------------------------------------------------------------


@contextmanager
def collecting_agent(tmp_path: Path, blobs: Blobs | None = None
                     ) -> Iterator[tuple[Agent, list[FromWorker]]]:
    sent: list[FromWorker] = []
    agent = Agent("w1", Resources(cores=4, memory_bytes=1 << 30), tmp_path / "spool",
                  fetch_blob=blobs)
    agent.connected(sent.append)
    yield agent, sent


def of_type(sent: list[FromWorker], kind: type[M]) -> list[M]:
    return [message for message in sent if isinstance(message, kind)]


def test_agent_answers_a_time_probe_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        with collecting_agent(tmp_path) as (agent, sent):
            sent.clear()
            before = time.time()
            agent.handle(TimeProbe(probe_id=7, server_sent_at=123.5))
            after = time.time()
            assert len(sent) == 1  # sent during handle, not with the next batch
            reply = sent[0]
            assert isinstance(reply, TimeReply)
            assert (reply.probe_id, reply.server_sent_at) == (7, 123.5)
            assert before <= reply.worker_received_at <= reply.worker_replied_at <= after
            await agent.runner.shutdown(kill=True)

    asyncio.run(main())


def test_agent_reports_ready_releases_and_peeks(tmp_path: Path) -> None:
    blobs = Blobs(b"hello from a staged file\n")
    files = [file_entry("greeting", b"hello from a staged file\n")]

    async def main() -> None:
        with collecting_agent(tmp_path, blobs) as (agent, sent):
            agent.handle(Assign(items=[
                gated("cat greeting; sleep 30", lease_id=1, cwd=tmp_path, files=files),
                gated("true", lease_id=2, cwd=tmp_path)]))
            await eventually(lambda: sum(len(m.items) for m in of_type(sent, Ready)) == 2)
            assert len(of_type(sent, Ready)) == 1  # both in one batch
            assert of_type(sent, Started) == []

            at = time.time() + LEAD_SECONDS
            agent.handle(Release(lease_ids=[1, 2], at=at))
            await eventually(lambda: sum(len(m.items) for m in of_type(sent, Started)) == 2)
            starts = [item.started_at for m in of_type(sent, Started) for item in m.items]
            assert all(at <= start for start in starts)

            await eventually(lambda: os.path.getsize(tmp_path / "spool" / "1.stdout") > 0)
            agent.handle(Peek(request_id=5, lease_id=1, stream="stdout", offset=6, limit=4))
            chunk = sent[-1]
            assert isinstance(chunk, OutputChunk)
            assert (chunk.request_id, chunk.lease_id, chunk.data, chunk.found) == (
                5, 1, "from", True)
            assert chunk.total_bytes == len(b"hello from a staged file\n")
            agent.handle(Peek(request_id=6, lease_id=99, stream="stderr", offset=0))
            missing = sent[-1]
            assert isinstance(missing, OutputChunk) and missing.found is False
            await agent.runner.shutdown(kill=True)

    asyncio.run(main())


def test_agent_sends_held_ready_reports_again_after_a_reconnect(tmp_path: Path) -> None:
    async def main() -> None:
        with collecting_agent(tmp_path) as (agent, sent):
            agent.handle(Assign(items=[gated("true", cwd=tmp_path)]))
            await eventually(lambda: of_type(sent, Ready) != [])
            agent.disconnected()
            again: list[FromWorker] = []
            agent.connected(again.append)
            await eventually(lambda: of_type(again, Ready) != [])
            assert of_type(again, Ready)[0].items == of_type(sent, Ready)[0].items
            await agent.runner.shutdown(kill=True)

    asyncio.run(main())


# ---- fetching blobs over HTTP -------------------------------------------------------------


@contextmanager
def blob_server(blobs: dict[str, bytes], token: str, refusals: list[int] | None = None
                ) -> Iterator[str]:
    """Serves `blobs`; answers 429 while `refusals` (a one-item counter) is above 0."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            sha = self.path.rsplit("/", 1)[-1]
            if refusals and refusals[0] > 0:
                refusals[0] -= 1
                self.send_response(429)
                self.send_header("Retry-After", "0.1")
                self.end_headers()
                return
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_response(401)
                self.end_headers()
                return
            if not self.path.startswith("/api/v1/blobs/") or sha not in blobs:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(blobs[sha])))
            self.end_headers()
            self.wfile.write(blobs[sha])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_blob_streams_and_verifies(tmp_path: Path) -> None:
    content = os.urandom(3 << 20)
    sha = hashlib.sha256(content).hexdigest()
    liar = "0" * 64  # served content that does not match its name
    with blob_server({sha: content, liar: b"something else"}, "tok") as url:
        asyncio.run(download_blob(url, "tok", sha, tmp_path / "good"))
        assert (tmp_path / "good").read_bytes() == content
        with pytest.raises(StagingError, match="arrived with SHA-256"):
            asyncio.run(download_blob(url, "tok", liar, tmp_path / "bad"))
        with pytest.raises(StagingError, match="answered 404"):
            asyncio.run(download_blob(url, "tok", "1" * 64, tmp_path / "missing"))
        with pytest.raises(StagingError, match="answered 401"):
            asyncio.run(download_blob(url, "wrong", sha, tmp_path / "refused"))
    with pytest.raises(StagingError, match="cannot fetch blob"):
        asyncio.run(download_blob(url, "tok", sha, tmp_path / "gone"))


def test_download_blob_waits_and_asks_again_when_refused_for_its_rate(tmp_path: Path) -> None:
    content = b"rate limited, then served"
    sha = hashlib.sha256(content).hexdigest()
    refusals = [2]
    with blob_server({sha: content}, "tok", refusals) as url:
        asyncio.run(download_blob(url, "tok", sha, tmp_path / "got"))
    assert refusals == [0]  # both refusals were met, and the third ask was served
    assert (tmp_path / "got").read_bytes() == content


def test_agent_fetches_from_the_server_it_is_connected_to(tmp_path: Path) -> None:
    content = b"#!/bin/sh\necho staged over http\n"
    sha = hashlib.sha256(content).hexdigest()
    files = [FileEntry(path="tool.sh", mode=0o755, size=len(content), sha256=sha)]

    async def main(url: str) -> None:
        with collecting_agent(tmp_path) as (agent, sent):
            agent.server = (url, "worker-token", None)
            agent.handle(Assign(items=[gated("./tool.sh", cwd=tmp_path, files=files)]))
            await eventually(lambda: of_type(sent, Ready) != [])
            agent.handle(Release(lease_ids=[1], at=0.0))
            await eventually(lambda: agent.runner.running() == [])
            await agent.runner.shutdown(kill=True)
        assert (tmp_path / "tool.sh").read_bytes() == content

    with blob_server({sha: content}, "worker-token") as url:
        asyncio.run(main(url))

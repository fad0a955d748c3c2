"""The worker agent: runs what the server assigns and reports back, over any link.

`Agent` knows nothing of sockets. Reports are batched: everything that became ready, started or
finished during one turn of the event loop goes out as one Ready, one Started and one Finished
message. Finished reports are kept until the server acknowledges them and are sent again after a
reconnect, so a result is never lost to a broken connection; so are the Ready reports of attempts
still held at their start line. Answers to the server's questions (TimeProbe, Peek) go at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shoal.core.errors import AuthError, Conflict, ConnectError, NameTaken, ProtocolError
from shoal.core.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_RECONNECT_DELAY_SECONDS,
    PROTOCOL_VERSION,
    Ack,
    Assign,
    AttemptResult,
    Finished,
    FromWorker,
    Heartbeat,
    Kill,
    OutputChunk,
    Peek,
    Ready,
    ReadyItem,
    Refused,
    Register,
    Release,
    Resources,
    RunningAttempt,
    Started,
    StartedItem,
    Stopping,
    TimeProbe,
    TimeReply,
    ToWorker,
    Welcome,
    decode_to_worker,
    encode,
)
from shoal.home import Connection
from shoal.worker.runner import Runner
from shoal.worker.staging import FetchBlob, StagingError

log = logging.getLogger("shoal.worker")


class Agent:
    def __init__(self, name: str, resources: Resources, spool_dir: Path,
                 host: str | None = None, labels: dict[str, str] | None = None,
                 enforce_memory: bool = True, on_server_lost: str = "kill",
                 server_lost_timeout: float | None = None, fetch_blob: FetchBlob | None = None,
                 provider: str | None = None, instance_secret: str | None = None):
        self.name = name
        self.provider = provider  # how this worker was started, when not by hand
        # When this worker stops (time.monotonic()), e.g. its allocation's end: the server
        # hears how long is left at each register. None: no limit.
        self.ends_at: float | None = None
        self.host = host or socket.gethostname()
        self.resources = resources
        # Proves to the server, on every register, that this worker holds its attempts (and,
        # kept across restarts, that it is the worker whose attempts ended: identity.py).
        self.instance_secret = instance_secret or secrets.token_hex(16)
        self.joined = False  # welcomed once: a name refused later is another's for now
        self.labels = dict(labels or {})
        # The server's URL, worker token and TLS context, set on each connect: staged files
        # come from there unless `fetch_blob` says otherwise.
        self.server: tuple[str, str | None, ssl.SSLContext | None] | None = None
        self.runner = Runner(spool_dir, host=self.host, on_started=self._on_started,
                             on_finished=self._on_finished, offered_gpus=resources.gpus,
                             enforce_memory=enforce_memory, on_ready=self._on_ready,
                             fetch_blob=fetch_blob or self._fetch_from_server)
        self._send: Callable[[FromWorker], None] | None = None
        self._ready: list[ReadyItem] = []
        self._started: list[StartedItem] = []
        self._tasks: set[asyncio.Task[Any]] = set()  # releases under way
        self._finished: list[AttemptResult] = []
        self._unacked: dict[int, AttemptResult] = {}
        self._flush_pending = False
        self.heartbeat_seconds = 5.0
        self.accepting = True  # False while stopping: new assignments are left to the server
        self.on_server_lost = on_server_lost
        self._server_lost_timeout = server_lost_timeout
        self.hold_seconds = 90.0  # the server's promise, from its welcome
        self.lost_grace_seconds = 60.0  # likewise: how soon a cut-off worker must be back
        self.last_contact = time.monotonic()
        self._gave_up_on_server = False
        self._watching_stalls = False

    @property
    def server_lost_timeout(self) -> float:
        """How long without the server before its policy applies. By default half of what
        the server holds attempts for, so with `kill` a cut-off worker's copies are gone
        before the server gives their jobs to someone else."""
        if self._server_lost_timeout is not None:
            return self._server_lost_timeout
        return self.hold_seconds / 2

    @property
    def max_reconnect_delay(self) -> float:
        """Between two connection attempts: short enough, jitter included, to be back within
        the server's lost grace, so it never gives away attempts this worker still holds."""
        return max(0.2, min(MAX_RECONNECT_DELAY_SECONDS, self.lost_grace_seconds / 3))

    def check_server_lost(self) -> None:
        """Called periodically: apply the server-lost policy once the timeout has passed."""
        # Time since the server was last heard from, whatever the socket seems to say: a cut
        # link can look open for a while, and the server's hold runs from that moment too.
        if self._gave_up_on_server:
            return
        if time.monotonic() - self.last_contact < self.server_lost_timeout:
            return
        self._gave_up_on_server = True
        running = self.runner.running()
        if self.on_server_lost == "kill" and running:
            log.warning("no server for %.0fs: killing %d jobs (--on-server-lost kill)",
                        self.server_lost_timeout, len(running))
            self.kill_all("lost the server")
        elif running:
            log.warning("no server for %.0fs: letting %d jobs finish (--on-server-lost finish)",
                        self.server_lost_timeout, len(running))

    def watch_stalls(self) -> None:
        """A worker on its own (not in the server's process): with `kill`, have the keeper
        kill the jobs once this process has not run for the server-lost timeout, e.g. while
        stopped, so they are dead before the server, holding them for longer, runs them
        again elsewhere."""
        self._watching_stalls = True
        self.runner.watch_stalls(
            self.server_lost_timeout if self.on_server_lost == "kill" else None)

    def kill_all(self, reason: str) -> None:
        for attempt in self.runner.running():
            self.runner.kill(attempt.job_id, attempt.lease_id, reason)

    def begin_stop(self) -> None:
        """Take no more work, and tell the server so."""
        self.accepting = False
        if self._send is not None:
            self._send(Stopping())

    async def wait_acknowledged(self, timeout: float) -> bool:
        """Wait until the server has acknowledged every result, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while self._unacked or self._finished:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def register_message(self) -> Register:
        """Lists every attempt this worker still holds: those running, and those finished
        whose result the server has not acknowledged (it follows right after), so the server
        keeps their leases instead of running them again."""
        finished = [RunningAttempt(job_id=r.job_id, lease_id=r.lease_id, pid=r.pid,
                                   started_at=r.started_at) for r in self._unacked.values()]
        return Register(protocol_version=PROTOCOL_VERSION, name=self.name, host=self.host,
                        resources=self.resources, labels=self.labels,
                        containment=self.runner.containment, provider=self.provider,
                        time_left_seconds=None if self.ends_at is None
                        else max(0.0, self.ends_at - time.monotonic()),
                        instance_secret=self.instance_secret,
                        running=[*self.runner.running(), *finished])

    def connected(self, send: Callable[[FromWorker], None]) -> None:
        """Start reporting through `send`; results the server never acknowledged go again."""
        self._send = send
        self.joined = True
        self.last_contact = time.monotonic()
        self._gave_up_on_server = False
        if not self.accepting:
            send(Stopping())
        self._started.clear()  # the register message already listed what is running
        self._ready = self.runner.held()  # a Ready lost with the last link would stall a stage
        self._finished = list(self._unacked.values())
        self._schedule_flush()

    def disconnected(self) -> None:
        self._send = None

    def handle(self, message: ToWorker) -> None:
        received_at = time.time()  # first: a TimeProbe's arrival, as close to the wire as here
        self.last_contact = time.monotonic()
        if isinstance(message, TimeProbe):
            self._answer(TimeReply(probe_id=message.probe_id,
                                   server_sent_at=message.server_sent_at,
                                   worker_received_at=received_at,
                                   worker_replied_at=time.time()))
        elif isinstance(message, Release):
            self._run_task(self.runner.release(message.lease_ids, message.at))
        elif isinstance(message, Peek):
            data, total_bytes, found = self.runner.peek(message.lease_id, message.stream,
                                                        message.offset, message.limit)
            self._answer(OutputChunk(request_id=message.request_id, lease_id=message.lease_id,
                                     stream=message.stream, offset=message.offset, data=data,
                                     total_bytes=total_bytes, found=found))
        elif isinstance(message, Assign):
            if not self.accepting:
                self._hand_back(message)
                return
            for assignment in message.items:
                self.runner.start(assignment)
        elif isinstance(message, Kill):
            for order in message.items:
                self.runner.kill(order.job_id, order.lease_id, order.reason)
        elif isinstance(message, Ack):
            for lease_id in message.lease_ids:
                self._unacked.pop(lease_id, None)
        elif isinstance(message, Welcome):
            self.heartbeat_seconds = message.heartbeat_seconds
            self.hold_seconds = message.hold_seconds
            self.lost_grace_seconds = message.lost_grace_seconds
            if self._watching_stalls:
                self.watch_stalls()
        elif isinstance(message, Refused):
            # Its own name taken while it was away, or jobs of an earlier worker of the name
            # still waiting for it: try again later. A live clash at the start is a mistake.
            if message.name_clash == "held" or (message.name_clash and self.joined):
                raise NameTaken(f"the server refused this worker for now: {message.reason}",
                                held=message.name_clash == "held")
            if message.name_clash:  # two workers given one name: the user's to mend (exit 2)
                raise Conflict(f"the server refused this worker: {message.reason}")
            raise ProtocolError(f"the server refused this worker: {message.reason}")

    def _hand_back(self, message: Assign) -> None:
        """Assignments that crossed this worker's Stopping on the wire: each reported killed
        before it started, which the server takes as not the job's fault and runs again
        elsewhere at once (ignored, they would wait out the lost grace)."""
        now = time.time()
        for assignment in message.items:
            self._on_finished(AttemptResult(
                job_id=assignment.job_id, lease_id=assignment.lease_id, outcome="killed",
                started_at=now, ended_at=now, wall_seconds=0.0, cpu_seconds=0.0,
                peak_rss_bytes=0, error="the worker is stopping"))

    def _answer(self, message: FromWorker) -> None:
        """Send at once, not with the next batch: the server is waiting for it."""
        if self._send is not None:
            self._send(message)

    def _run_task(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_from_server(self, sha256: str, destination: Path) -> None:
        from shoal.worker.blobs import download_blob

        if self.server is None:
            raise StagingError("no server to fetch files from")
        server_url, token, context = self.server
        await download_blob(server_url, token, sha256, destination, context)

    def _on_ready(self, item: ReadyItem) -> None:
        self._ready.append(item)
        self._schedule_flush()

    def _on_started(self, item: StartedItem) -> None:
        self._started.append(item)
        self._schedule_flush()

    def _on_finished(self, result: AttemptResult) -> None:
        self._unacked[result.lease_id] = result
        self._finished.append(result)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._send is None:
            return
        if self._ready:
            ready, self._ready = self._ready, []
            self._send(Ready(items=ready))
        if self._started:
            items, self._started = self._started, []
            self._send(Started.trusted(items=items))
        if self._finished:
            results, self._finished = self._finished, []
            self._send(Finished.trusted(items=results))



class InProcessLink:
    """The service's side of a worker in the same process (`shoal run`, local ensembles):
    a send is a direct call, no socket in between."""

    immediate = True  # see WorkerLink

    def __init__(self, agent: Agent):
        self._agent = agent

    def send(self, message: ToWorker) -> None:
        self._agent.handle(message)

    def close(self, reason: str) -> None:
        self._agent.disconnected()

def websocket_url(server_url: str) -> str:
    base = server_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + "/api/v1/worker"
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + "/api/v1/worker"
    raise ConnectError(f"not a server URL: {server_url!r} (expected http://HOST:PORT)")


async def run_worker(agent: Agent, locate: Callable[[], Connection],
                     stop: asyncio.Event) -> None:
    """Connect, register, serve; reconnect with backoff until `stop` is set.

    `locate` gives the server's connection; it is asked again before every attempt, so a
    worker that found its server through $SHOAL_HOME follows it to a new address.
    """
    agent.watch_stalls()
    watchdog = asyncio.create_task(_watch_server(agent, stop))
    try:
        await _connect_loop(agent, locate, stop)
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)


async def _watch_server(agent: Agent, stop: asyncio.Event) -> None:
    while not stop.is_set():
        agent.check_server_lost()
        await asyncio.sleep(0.25)


async def _connect_loop(agent: Agent, locate: Callable[[], Connection],
                        stop: asyncio.Event) -> None:
    import websockets
    from websockets.exceptions import InvalidStatus

    delay = 0.2
    while not stop.is_set():
        server_url, token, context = "", None, None
        try:
            connection = locate()
            server_url, token = connection.url, connection.worker_token
            context = connection.ssl_context()
        except ConnectError as exc:  # between two servers: wait for the next one
            log.warning("%s", exc)
        try:
            if not server_url:
                raise ConnectionError("no server known yet")
            url = websocket_url(server_url)
            agent.server = (server_url, token, context)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with websockets.connect(url, additional_headers=headers, ssl=context,
                                          max_size=MAX_MESSAGE_BYTES, compression=None,
                                          open_timeout=10, ping_interval=None,
                                          close_timeout=1) as ws:
                await ws.send(encode(agent.register_message()))
                welcome = decode_to_worker(await asyncio.wait_for(ws.recv(), 10))
                agent.handle(welcome)
                if not isinstance(welcome, Welcome):
                    raise ProtocolError(f"expected a welcome, got {welcome.type}")
                log.info("worker %s connected to %s", agent.name, server_url)
                delay = 0.2
                await _serve(agent, ws, stop)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthError(f"the server at {server_url} refused the worker token "
                                "(unknown, revoked, or not a worker token)") from None
            log.warning("server answered %s; retrying", status)
        except ProtocolError:
            raise
        except NameTaken as exc:
            log.warning("%s; trying again", exc)
        except ssl.SSLCertVerificationError as exc:  # retrying cannot make it trusted
            raise ConnectError(f"the server at {server_url} is not the one pinned: "
                               f"{exc.verify_message}; if the address is right but not in "
                               "its certificate, start the server with --tls-san ADDRESS"
                               ) from None
        except (OSError, TimeoutError, websockets.ConnectionClosed) as exc:
            log.warning("connection to %s failed: %s", server_url, exc or type(exc).__name__)
        finally:
            agent.disconnected()
        if stop.is_set():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
        delay = min(delay * 2, agent.max_reconnect_delay)


async def _serve(agent: Agent, ws: object, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import ClientConnection

    assert isinstance(ws, ClientConnection)
    outbox: asyncio.Queue[FromWorker] = asyncio.Queue()
    agent.connected(outbox.put_nowait)

    async def write() -> None:
        while True:
            message = await outbox.get()
            if isinstance(message, TimeReply):  # the time it spent queued is the worker's, too
                message = message.model_copy(update={"worker_replied_at": time.time()})
            await ws.send(encode(message))

    async def heartbeat() -> None:
        # A heartbeat keeps our lease; the ping tells us the server is still there, so a
        # cut link is noticed even when nothing else is said.
        while True:
            await asyncio.sleep(agent.heartbeat_seconds)
            outbox.put_nowait(Heartbeat())
            pong = await ws.ping()
            try:
                await asyncio.wait_for(pong, max(1.0, 2 * agent.heartbeat_seconds))
            except TimeoutError:
                raise ConnectionError("the server stopped answering") from None
            agent.last_contact = time.monotonic()

    async def read() -> None:
        async for text in ws:
            if isinstance(text, bytes):
                text = text.decode()
            agent.handle(decode_to_worker(text))

    tasks = [asyncio.create_task(coro) for coro in (write(), heartbeat(), read(), stop.wait())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""`shoal server` and `shoal worker`: long-running processes, thin wrappers around their modules."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.core.errors import InputError
from shoal.home import DEFAULT_PORT, resolve_connection, shoal_home

if TYPE_CHECKING:
    from shoal.worker.agent import Agent


def _logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def server_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    lease_timeout: Annotated[float, typer.Option(
        help="Seconds a silent worker keeps its jobs before they count as lost.")] = 30.0,
    lost_grace: Annotated[float, typer.Option(
        help="Seconds a lost job waits for its worker to come back before it runs again.")] = 60.0,
    retry_base: Annotated[float, typer.Option(
        help="First retry delay in seconds; doubles on each failure, with jitter.")] = 1.0,
) -> None:
    """Run the coordinator. State lives in $SHOAL_HOME (default ~/.shoal)."""
    from shoal.server.app import serve
    from shoal.server.reactor import ReactorConfig

    _logging(False)
    config = ReactorConfig(lease_timeout_seconds=lease_timeout, lost_grace_seconds=lost_grace,
                           retry_base_seconds=retry_base,
                           heartbeat_seconds=min(5.0, lease_timeout / 3))
    serve(shoal_home(), host, port, config)


def worker_command(
    server: Annotated[str | None, typer.Option(help="Server URL (default: $SHOAL_HOME).")] = None,
    token: Annotated[str | None, typer.Option(help="Worker token (default: $SHOAL_HOME).")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default: the host name).")] = None,
    cores: Annotated[int | None, typer.Option(help="Cores to offer (default: all).")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory to offer, e.g. 8G.")] = None,
    spool: Annotated[Path | None, typer.Option(help="Directory for output being captured.")] = None,
) -> None:
    """Run a worker: connect to the server and run the jobs it assigns."""
    from shoal.core.models import parse_memory
    from shoal.core.protocol import Resources
    from shoal.worker.agent import Agent
    from shoal.worker.resources import detect_resources

    _logging(False)
    def locate() -> tuple[str, str | None]:
        connection = resolve_connection(role="worker", server=server, token=token)
        return connection.url, connection.worker_token

    locate()  # fail now, with a clear message, if there is no server to find
    detected = detect_resources()
    try:
        memory_bytes = parse_memory(memory) if memory else detected.memory_bytes
    except ValueError as exc:
        raise InputError(f"--memory: {exc}") from None
    if cores is not None and cores < 1:
        raise InputError("--cores: must be at least 1")
    resources = Resources(cores=cores or detected.cores, memory_bytes=memory_bytes)
    worker_name = name or socket.gethostname()
    spool_dir = spool or shoal_home() / "spool" / worker_name
    asyncio.run(_work(Agent(worker_name, resources, spool_dir), locate))


async def _work(agent: Agent, locate: Callable[[], tuple[str, str | None]]) -> None:
    from shoal.worker.agent import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def shut_down() -> None:
        # Kill while still connected so the results reach the server, which runs them again.
        agent.accepting = False
        await agent.runner.shutdown(kill=True)
        await asyncio.sleep(0.2)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(shut_down()))
    await run_worker(agent, locate, stop)

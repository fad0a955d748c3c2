"""`shoal server` and `shoal worker`: long-running processes, thin wrappers around their modules."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.cli.join import worker_address
from shoal.cli.worker_count import MAX_COUNT, gpus_argument, run_workers, shares, spool_for
from shoal.core.errors import ConnectError, InputError
from shoal.core.models import RESERVED_RESOURCES
from shoal.home import DEFAULT_PORT, MAX_PORT, Connection, resolve_connection, shoal_home
from shoal.trust import certificate_problem

if TYPE_CHECKING:
    from shoal.worker.agent import Agent

_WHOLE_NUMBER_RE = re.compile(r"^[0-9]{1,19}$")  # ASCII only: str.isdigit takes '²'
MAX_GPUS = 1024  # as many as a worker may offer in its registration
# What CUDA_VISIBLE_DEVICES takes: indexes, GPU UUIDs (GPU-...) and MIG ids (MIG-...).
_GPU_ID_RE = re.compile(r"^(?:[0-9]{1,9}|(?:GPU|MIG)-[A-Za-z0-9_.:/-]{1,124})$")
MAX_FILE_NAME_BYTES = 255  # a worker's name names its spool directory
_RESOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,128}$")
MAX_LABEL_VALUE_CHARS = 256
MAX_RESOURCE_AMOUNT = 2**62  # fits the store's 64-bit integers with room to add


def _logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per file fetched is noise


def server_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    lease_timeout: Annotated[float, typer.Option(
        help="Seconds a silent worker keeps its jobs before they count as lost.")] = 30.0,
    lost_grace: Annotated[float, typer.Option(
        help="Seconds a lost job waits for its worker to come back before it runs again.")] = 60.0,
    retry_base: Annotated[float, typer.Option(
        help="First retry delay in seconds; doubles on each failure, with jitter.")] = 1.0,
    reserve_after: Annotated[float, typer.Option(
        help="Seconds a job may fit nowhere before a worker is drained for it.")] = 60.0,
    tls_cert: Annotated[Path | None, typer.Option(
        help="Use this certificate (PEM, full chain) instead of the server's own CA; "
             "reloaded when the file changes.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The key of --tls-cert (PEM).")] = None,
    tls_san: Annotated[list[str] | None, typer.Option(
        "--tls-san", metavar="NAME|ADDRESS",
        help="Another name or address for the server's own certificate. Repeatable.")] = None,
    advertise: Annotated[str | None, typer.Option(
        metavar="HOST",
        help="The name or address workers on other hosts dial, put in the join string "
             "(default: the listen address, or the host name).")] = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http",
        help="Plain HTTP, no TLS: only on a loopback address.")] = False,
    rate_limit: Annotated[float, typer.Option(
        metavar="N",
        help="Requests per second one client (a token from one address) may make, in bursts "
             "of four times as many; beyond, 429 with Retry-After.")] = 500.0,
    max_connections_per_address: Annotated[int, typer.Option(
        metavar="N", help="Connections one address may hold open at once.")] = 256,
    metrics_public: Annotated[bool, typer.Option(
        "--metrics-public",
        help="Serve /metrics without a token (on a trusted network only); otherwise it needs "
             "an admin or metrics token (`shoal token create --role metrics`).")] = False,
    keep_history: Annotated[str | None, typer.Option(
        metavar="AGE", help="Remove ended jobs (done, failed, cancelled) with their output "
        "once they ended more than AGE ago (e.g. 30d); by default history is kept until "
        "`shoal rm`.")] = None,
) -> None:
    """Run the coordinator. State lives in $SHOAL_HOME (default ~/.shoal).

    It speaks TLS with its own CA, made on first start; clients on this host trust it
    through $SHOAL_HOME, and it prints the `shoal worker --join ...` line for other hosts.
    """
    from shoal.core.models import parse_duration
    from shoal.server.app import serve
    from shoal.server.certificates import TlsSettings
    from shoal.server.guard import GuardConfig
    from shoal.server.reactor import ReactorConfig

    check_listen_address(host, port)  # before the home is touched: nothing made for nothing
    _logging(False)
    tls = TlsSettings(cert_file=tls_cert, key_file=tls_key, insecure_http=insecure_http,
                      extra_names=tuple(tls_san or ()), advertise=advertise)
    config = ReactorConfig(lease_timeout_seconds=lease_timeout, lost_grace_seconds=lost_grace,
                           retry_base_seconds=retry_base, reserve_after_seconds=reserve_after,
                           heartbeat_seconds=min(5.0, lease_timeout / 3))
    if not rate_limit > 0:
        raise InputError("--rate-limit: must be more than 0")
    if max_connections_per_address < 1:
        raise InputError("--max-connections-per-address: must be at least 1")
    guard = GuardConfig(requests_per_second=rate_limit,
                        request_burst=max(1, round(4 * rate_limit)),
                        max_connections_per_ip=max_connections_per_address)
    try:
        keep = parse_duration(keep_history) if keep_history is not None else None
    except ValueError as exc:
        raise InputError(f"--keep-history: {exc}") from None
    serve(shoal_home(), host, port, config, tls, guard, metrics_public=metrics_public,
          keep_history_seconds=keep)


def worker_command(
    join_file: Annotated[Path | None, typer.Option(
        metavar="FILE",
        help="Read the connection string from FILE (yours only: refused if others can read "
             "it), e.g. a copy of the server's $SHOAL_HOME/join. Else $SHOAL_JOIN.")] = None,
    join: Annotated[str | None, typer.Option(
        metavar="shoal://...|-",
        help="The connection string `shoal server` printed (address, worker token, the "
             "fingerprint of its CA), or - to read it from standard input. Given here, its "
             "token shows in `ps` until the worker starts: prefer --join-file.")] = None,
    server: Annotated[str | None, typer.Option(
        help="Server URL or connection string (default: $SHOAL_HOME).")] = None,
    token: Annotated[str | None, typer.Option(
        help="Worker token (default: $SHOAL_TOKEN, else $SHOAL_HOME); it shows in `ps` "
             "until the worker starts: prefer $SHOAL_TOKEN.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Worker name, unique among connected workers (default: HOST-PID): up to 128 "
             "printable characters, no '/' or '='.")] = None,
    cores: Annotated[int | None, typer.Option(help="Cores to offer (default: all).")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory to offer, e.g. 8G.")] = None,
    gpus: Annotated[str | None, typer.Option(
        metavar="N|LIST",
        help="GPUs to offer: a count N (ids 0..N-1) or ids like 0,2 or GPU-/MIG- UUIDs "
             "(one id: '3,'). Default: $CUDA_VISIBLE_DEVICES, else what nvidia-smi lists.")
    ] = None,
    resource: Annotated[list[str] | None, typer.Option(
        "--resource", metavar="NAME=N",
        help="A named resource to offer, e.g. licenses=4. Repeatable.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="KEY=VALUE",
        help="A label jobs can ask for, e.g. zone=a. Repeatable.")] = None,
    enforce_memory: Annotated[bool, typer.Option(
        "--enforce-memory/--no-enforce-memory",
        help="Kill a job that uses more memory than it asked for. Without it, memory is only "
             "a scheduling figure; time limits still apply.")] = True,
    spool: Annotated[Path | None, typer.Option(help="Directory for output being captured.")] = None,
    on_server_lost: Annotated[str, typer.Option(
        metavar="kill|finish",
        help="When the server has been unreachable for --server-lost-timeout: kill the "
             "running jobs (the server runs them again elsewhere), or let them finish.")
    ] = "kill",
    server_lost_timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS",
        help="Default: half of how long the server keeps a silent worker's jobs for it.")
    ] = None,
    on_stop: Annotated[str, typer.Option(
        metavar="requeue|finish",
        help="On SIGTERM or Ctrl-C: kill the running jobs and hand them back to the server, "
             "or finish them first. Either way no new job starts.")] = "requeue",
    count: Annotated[int, typer.Option(
        metavar="N",
        help="Start N workers on this host, each a process, named NAME-1..NAME-N (default "
             "HOST-PID-1..N). Without --cores, --memory or --gpus they share the host's "
             "evenly; an option given applies to each.")] = 1,
    started_by: Annotated[str | None, typer.Option(
        hidden=True, help="How this worker was started (ssh, slurm:ALLOC), for `shoal workers`.")
    ] = None,
    workdir: Annotated[Path | None, typer.Option(
        metavar="DIR",
        help="Where ensemble components with a relative directory run, NetJobs commands "
             "among them (default: the directory the worker is started in).")] = None,
    exit_when_idle: Annotated[float | None, typer.Option(
        metavar="SECONDS",
        help="Stop once no job has run here for SECONDS (a temporary worker).")] = None,
    time_limit: Annotated[float | None, typer.Option(
        metavar="SECONDS",
        help="Stop after SECONDS, handing back what still runs (a worker inside a batch "
             "allocation); meanwhile the server gives it no job whose --time is longer than "
             "what it has left.")] = None,
) -> None:
    """Run a worker: connect to the server and run the jobs it assigns."""
    from shoal.core.models import parse_memory
    from shoal.core.protocol import Resources
    from shoal.worker.agent import Agent
    from shoal.worker.identity import kept_secret
    from shoal.worker.resources import detect_resources

    _logging(False)
    # Check every option before looking for the server: a bad value is a usage error.
    workdir_path = check_workdir(workdir) if workdir is not None else None
    if exit_when_idle is not None and not exit_when_idle > 0:
        raise InputError("--exit-when-idle: must be more than 0")
    if time_limit is not None and not 0 < time_limit < 1e9:
        raise InputError("--time-limit: must be more than 0 seconds")
    if cores is not None and cores < 1:
        raise InputError("--cores: must be at least 1")
    try:
        memory_bytes = parse_memory(memory) if memory else None
    except ValueError as exc:
        raise InputError(f"--memory: {exc}") from None
    if on_server_lost not in ("kill", "finish"):
        raise InputError(f"--on-server-lost: {on_server_lost!r} is not kill or finish")
    if on_stop not in ("requeue", "finish"):
        raise InputError(f"--on-stop: {on_stop!r} is not requeue or finish")
    if server_lost_timeout is not None and server_lost_timeout <= 0:
        raise InputError("--server-lost-timeout: must be more than 0")
    if not 1 <= count <= MAX_COUNT:
        raise InputError(f"--count: must be from 1 to {MAX_COUNT}")
    if started_by is not None and not 1 <= len(started_by) <= 128:
        raise InputError("--started-by: 1 to 128 characters")
    gpu_ids = parse_gpus_option(gpus) if gpus is not None else None
    custom = parse_resource_options(resource or [])
    labels = parse_label_options(label or [])
    # One name per process, kept across its reconnects: two workers on a host never clash.
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    names = [f"{base}-{index}" for index in range(1, count + 1)] if count > 1 else [base]
    for worker in names:
        check_worker_name(worker, "--name" if name else "the host name")
    if spool is not None:
        check_spool(spool)

    address = worker_address(join, join_file, server, token)  # hides a token given in argv

    def locate() -> Connection:
        return resolve_connection(role="worker", server=address.server, token=address.token,
                                  server_name=address.server_origin,
                                  token_name=address.token_origin)

    # Fail now, with a clear message, if there is no server to find or what says where it
    # is cannot be used.
    first = locate()
    if address.warning:
        logging.getLogger("shoal.worker").warning("%s", address.warning)
    detected = detect_resources(with_gpus=gpu_ids is None)
    if count > 1:
        parts = shares(count, cores or detected.cores,
                       memory_bytes if memory_bytes is not None else detected.memory_bytes,
                       gpu_ids if gpu_ids is not None else detected.gpus,
                       split_cores=cores is None, split_memory=memory_bytes is None,
                       split_gpus=gpu_ids is None)
        common = [*(f"--resource={item}" for item in resource or []),
                  *(f"--label={item}" for item in label or []),
                  "--enforce-memory" if enforce_memory else "--no-enforce-memory",
                  f"--on-server-lost={on_server_lost}", f"--on-stop={on_stop}",
                  *([f"--server-lost-timeout={server_lost_timeout}"]
                    if server_lost_timeout is not None else []),
                  *([f"--started-by={started_by}"] if started_by else []),
                  *([f"--workdir={workdir_path}"] if workdir_path else []),
                  *([f"--exit-when-idle={exit_when_idle}"] if exit_when_idle else []),
                  *([f"--time-limit={time_limit}"] if time_limit else [])]
        arguments = [[f"--cores={part.cores}", f"--memory={part.memory_bytes // 1024}K",
                      f"--gpus={gpus_argument(part.gpus)}", *spool_for(spool, worker),
                      *common] for worker, part in zip(names, parts, strict=True)]
        raise typer.Exit(run_workers(names, arguments, address))
    resources = Resources(
        cores=cores or detected.cores,
        memory_bytes=memory_bytes if memory_bytes is not None else detected.memory_bytes,
        gpus=gpu_ids if gpu_ids is not None else detected.gpus,
        custom=custom,
    )
    worker_name = base
    spool_dir = spool or shoal_home() / "spool" / worker_name
    agent = Agent(worker_name, resources, spool_dir, labels=labels, enforce_memory=enforce_memory,
                  on_server_lost=on_server_lost, server_lost_timeout=server_lost_timeout,
                  provider=started_by, instance_secret=kept_secret(spool_dir))
    agent.runner.workdir = workdir_path
    if time_limit is not None:
        agent.ends_at = time.monotonic() + time_limit
    try:
        asyncio.run(_work(agent, locate, on_stop, exit_when_idle))
    except ConnectError as exc:  # say what is wrong with a refused certificate
        problem = certificate_problem(exc, first.url, pinned=first.ca_fingerprint)
        if problem is None:
            raise
        raise ConnectError(f"the server at {first.url}: {problem}") from None


def check_listen_address(host: str, port: int) -> None:
    """`--port` is a TCP port (0: any free one) and `--host` an address or a name that
    resolves: checked before the server makes its database, CA and tokens."""
    if not 0 <= port <= MAX_PORT:
        raise InputError(f"--port: {port} is not a port (0 to {MAX_PORT}; 0: any free port)")
    if not host:  # every address, as bind() reads it
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as the server binds
    try:
        socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except UnicodeError:
        raise InputError(f"--host: {host!r} is neither an IP address nor a host name") from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # the resolver is down: not the value's fault
            return
        raise InputError(f"--host: cannot listen on {host!r}: {exc.strerror}") from None


def check_worker_name(name: str, where: str = "--name") -> None:
    """A worker's name as the server takes it (its length: the protocol's Register.name),
    that can also be the name of its spool directory and be pinned to with `add --on NAME`:
    printable, without '/' or '=', not '.' or '..'."""
    from shoal.core.protocol import MAX_WORKER_NAME_CHARS

    shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
    if not 1 <= len(name) <= MAX_WORKER_NAME_CHARS:
        raise InputError(f"{where}: a worker's name is 1 to {MAX_WORKER_NAME_CHARS} "
                         f"characters; {shown} has {len(name)}")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_FILE_NAME_BYTES:
        raise InputError(f"{where}: {shown} is longer than {MAX_FILE_NAME_BYTES} bytes, too "
                         "long to name its spool directory")
    if not name.isprintable() or "/" in name or "=" in name or name in (".", ".."):
        raise InputError(f"{where}: {shown} is not a worker name (printable characters, "
                         "no '/' or '=', not '.' or '..')")


def check_spool(spool: Path) -> None:
    """--spool: a directory, or one that can be made (its nearest existing ancestor is a
    directory this user may write in). Nothing is made here."""
    if spool.exists() or spool.is_symlink():
        if not spool.is_dir():
            raise InputError(f"--spool: {spool}: not a directory")
        if not os.access(spool, os.W_OK | os.X_OK):
            raise InputError(f"--spool: {spool}: cannot write there (permission denied)")
        return
    ancestor = spool.absolute().parent
    while not (ancestor.exists() or ancestor.is_symlink()):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--spool: {spool}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--spool: {spool}: cannot make it in {ancestor} (permission denied)")


def check_workdir(workdir: Path) -> Path:
    """--workdir: an existing directory, made absolute (the worker may change directory)."""
    path = workdir.expanduser().absolute()
    if not path.is_dir():
        raise InputError(f"--workdir: {workdir}: no such directory")
    return path


def parse_gpus_option(text: str) -> list[str]:
    """`--gpus`: a count N offers ids 0..N-1; a comma list offers exactly those ids.

    A lone id needs a trailing comma ('3,'), since '3' alone is a count.
    """
    value = text.strip()
    if _WHOLE_NUMBER_RE.match(value):
        count = int(value)
        if count > MAX_GPUS:
            raise InputError(f"--gpus: at most {MAX_GPUS} GPUs can be offered")
        return [str(index) for index in range(count)]
    ids = [item.strip() for item in value.split(",")]
    if len(ids) > 1 and ids[-1] == "":
        ids.pop()
    for gpu_id in ids:
        if not _GPU_ID_RE.match(gpu_id):
            raise InputError(f"--gpus: {text!r} is neither a count nor a list of GPU ids "
                             "(indexes like 0,2, or GPU-... and MIG-... UUIDs)")
    if len(set(ids)) != len(ids):
        raise InputError(f"--gpus: {text!r} names a GPU twice")
    if len(ids) > MAX_GPUS:
        raise InputError(f"--gpus: at most {MAX_GPUS} GPUs can be offered")
    return ids


def parse_resource_options(items: list[str]) -> dict[str, int]:
    """`--resource NAME=N`, repeatable: named resources (licenses, tokens) offered by amount."""
    offered: dict[str, int] = {}
    for item in items:
        name, equals, amount = item.partition("=")
        name, amount = name.strip(), amount.strip()
        if not equals or not name:
            raise InputError(f"--resource: {item!r} is not NAME=N")
        if not _RESOURCE_NAME_RE.match(name):
            raise InputError(f"--resource: bad name {name!r} (letters, digits and _.@+- only)")
        if name in RESERVED_RESOURCES:
            raise InputError(f"--resource: {name!r} is offered with --{name}, not --resource")
        if not _WHOLE_NUMBER_RE.match(amount) or not 1 <= int(amount) <= MAX_RESOURCE_AMOUNT:
            raise InputError(f"--resource: {name}: the amount must be a whole number from 1")
        if name in offered:
            raise InputError(f"--resource: {name!r} is given twice")
        offered[name] = int(amount)
    return offered


def parse_label_options(items: list[str]) -> dict[str, str]:
    """`--label KEY=VALUE`, repeatable: facts about this worker that jobs can ask for."""
    labels: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key or not value:
            raise InputError(f"--label: {item!r} is not KEY=VALUE")
        if not _LABEL_KEY_RE.match(key):
            raise InputError(f"--label: bad key {key!r} (letters, digits and _.:/@+- only)")
        if len(value) > MAX_LABEL_VALUE_CHARS or not value.isprintable():
            raise InputError(f"--label: {key}: the value must be printable and at most "
                             f"{MAX_LABEL_VALUE_CHARS} characters")
        if key in labels:
            raise InputError(f"--label: {key!r} is given twice")
        labels[key] = value
    return labels


async def _work(agent: Agent, locate: Callable[[], Connection],
                on_stop: str, exit_when_idle: float | None = None) -> None:
    from shoal.worker.agent import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def shut_down() -> None:
        # While still connected: the server assigns nothing more, and gets every result
        # (killed jobs come back as lost, and it runs them again elsewhere at once).
        agent.begin_stop()
        await agent.runner.shutdown(kill=on_stop == "requeue")
        await agent.wait_acknowledged(timeout=5.0)
        stop.set()

    def on_signal() -> None:
        if stopping:  # a second signal: do not wait for running jobs any more
            agent.kill_all("stopped twice")
            return
        stopping.append(asyncio.ensure_future(shut_down()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    idle = None if exit_when_idle is None else asyncio.ensure_future(
        _stop_when_idle(agent, exit_when_idle, on_signal))
    if agent.ends_at is not None:  # the end of its time: stop as on SIGTERM
        loop.call_later(max(0.0, agent.ends_at - time.monotonic()), on_signal)
    try:
        await run_worker(agent, locate, stop)
    finally:
        if idle is not None:
            idle.cancel()


async def _stop_when_idle(agent: Agent, seconds: float, stop: Callable[[], None]) -> None:
    """Stop, as on SIGTERM, once nothing has run here for `seconds`."""
    idle_since = time.monotonic()
    while True:
        await asyncio.sleep(min(1.0, seconds / 4))
        if agent.runner.running():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= seconds:
            logging.getLogger("shoal.worker").info("idle for %gs: stopping", seconds)
            stop()
            return

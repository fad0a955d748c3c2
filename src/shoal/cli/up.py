"""`shoal up HOST...` and `shoal down [HOST...]`: workers on other hosts, over SSH.

`up` starts a worker on each host (in parallel, a bounded number at a time), joined to this
server with its join string, and waits until each has connected; `down` stops them. What was
started is recorded in $SHOAL_HOME/ssh-workers.json, so `down` finds every process again.
One line per host that failed, naming it; the others go on. Exit 1 if any host failed.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli import session_of
from shoal.cli.join import JOIN_VARIABLE, read_join_file
from shoal.core.errors import InputError
from shoal.home import SCHEME, private_directory, shoal_home
from shoal.provision.hosts import SshHost, parse_host, read_hosts_file, unique_hosts

if TYPE_CHECKING:
    from shoal.provision.ssh import RemoteWorker, SshProvider, SshSettings

PASSWORD_VARIABLE = "SHOAL_SSH_PASSWORD"
PASSPHRASE_VARIABLE = "SHOAL_SSH_PASSPHRASE"
DEFAULT_PARALLEL = 16
MAX_PARALLEL = 256

UserOption = Annotated[str | None, typer.Option(
    "--user", metavar="USER", help="Log in as USER where the host names none "
                                   "(default: ~/.ssh/config's User, else yours).")]
PasswordOption = Annotated[bool, typer.Option(
    "--password", help=f"Also try a password: from ${PASSWORD_VARIABLE}, else asked for.")]
PassphraseOption = Annotated[bool, typer.Option(
    "--passphrase", help="Use encrypted keys too: their passphrase from "
                         f"${PASSPHRASE_VARIABLE}, else asked for.")]
KnownHostsOption = Annotated[Path | None, typer.Option(
    "--known-hosts", metavar="FILE", help="Check host keys against FILE "
                                          "(default: ~/.ssh/known_hosts or ~/.ssh/config's).")]
ParallelOption = Annotated[int, typer.Option(
    "--parallel", metavar="N", help="Hosts contacted at once.")]


def _secret(flag: bool, variable: str, prompt: str) -> str | None:
    if not flag:
        return None
    value = os.environ.get(variable)
    if value:
        return value
    if sys.stdin is None or not sys.stdin.isatty():
        raise InputError(f"--{prompt}: set ${variable}, or run it from a terminal to be asked")
    return getpass.getpass(f"SSH {prompt}: ")


def ssh_settings(user: str | None, password: bool, passphrase: bool, known_hosts: Path | None,
                 accept_new_host_keys: bool = False, bootstrap: bool = False) -> SshSettings:
    from shoal.provision.ssh import SshSettings

    if user is not None and not user.strip():
        raise InputError("--user: empty")
    if known_hosts is not None and known_hosts.exists() and not known_hosts.is_file():
        raise InputError("not a file", source=str(known_hosts))
    return SshSettings(user=user, password=_secret(password, PASSWORD_VARIABLE, "password"),
                       passphrase=_secret(passphrase, PASSPHRASE_VARIABLE, "passphrase"),
                       known_hosts=known_hosts, accept_new_host_keys=accept_new_host_keys,
                       bootstrap=bootstrap)


def gather_hosts(hosts: Sequence[str], hosts_file: Path | None) -> list[SshHost]:
    found = [parse_host(text) for text in hosts]
    if hosts_file is not None:
        found += read_hosts_file(hosts_file)
    return unique_hosts(found)


def join_string(join_file: Path | None) -> str:
    """The string the workers join with: --join-file, else $SHOAL_JOIN, else the one the
    server wrote to $SHOAL_HOME/join."""
    if join_file is not None:
        return read_join_file(join_file)
    if os.environ.get(JOIN_VARIABLE, "").startswith(SCHEME):
        return os.environ[JOIN_VARIABLE]
    path = shoal_home() / "join"
    if not path.exists():
        raise InputError(f"no join string: {path} is missing (start `shoal server` here, or "
                         "give --join-file FILE)")
    return read_join_file(path)


@contextmanager
def records_lock() -> Iterator[Path]:
    """$SHOAL_HOME, held against another `shoal up`/`down` changing the records at once."""
    home = private_directory(shoal_home())
    fd = os.open(home / "ssh-workers.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield home
    finally:
        os.close(fd)


def _fail(verb: str, text: str) -> None:
    print(f"shoal {verb}: {text}", file=sys.stderr, flush=True)


async def bounded(parallel: int, items: Sequence[Any],
                  work: Callable[[Any], Any]) -> list[Any]:
    """`work(item)` for each item, at most `parallel` at once; results in order."""
    gate = asyncio.Semaphore(parallel)

    async def one(item: Any) -> Any:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


def up_command(
    ctx: typer.Context,
    hosts: Annotated[list[str] | None, typer.Argument(
        metavar="HOST...", help="\\[ssh://]\\[user@]host[:port], or a Host of ~/.ssh/config.")
    ] = None,
    hosts_file: Annotated[Path | None, typer.Option(
        "--hosts-file", metavar="FILE", help="Hosts, one a line (# comments).")] = None,
    bootstrap: Annotated[bool, typer.Option(
        "--bootstrap", help="Where shoal is missing or another version, install it under the "
                            "host user's ~/.shoal/ from wheels uploaded from here (the host "
                            "needs Python 3.11+, no internet).")] = False,
    accept_new_host_keys: Annotated[bool, typer.Option(
        "--accept-new-host-keys", help="Trust and record the key of a host not in "
                                       "known_hosts (a changed key is always refused).")
    ] = False,
    user: UserOption = None,
    password: PasswordOption = False,
    passphrase: PassphraseOption = False,
    known_hosts: KnownHostsOption = None,
    count: Annotated[int, typer.Option(
        "--count", metavar="N", help="Workers per host (sharing it evenly).")] = 1,
    worker_option: Annotated[list[str] | None, typer.Option(
        "--worker-option", metavar="OPTION",
        help="Passed to each `shoal worker`, e.g. --worker-option=--cores=4. Repeatable.")
    ] = None,
    join_file: Annotated[Path | None, typer.Option(
        "--join-file", metavar="FILE",
        help="The connection string for the workers (default: $SHOAL_JOIN, else the one "
             "the server wrote to $SHOAL_HOME/join).")] = None,
    parallel: ParallelOption = DEFAULT_PARALLEL,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", help="How long to wait for the workers to join.")
    ] = 120.0,
) -> None:
    """Start a worker on each HOST over SSH, joined to this server."""
    from shoal.provision.ssh import SshProvider

    chosen = gather_hosts(hosts or [], hosts_file)
    if not chosen:
        raise InputError("no hosts: give HOST... or --hosts-file FILE")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise InputError(f"--parallel: must be from 1 to {MAX_PARALLEL}")
    if not 1 <= count <= 1024:
        raise InputError("--count: must be from 1 to 1024")
    if not timeout > 0:
        raise InputError("--timeout: must be more than 0")
    extra = list(worker_option or [])
    for option in extra:
        if not option.startswith("--") or option.split("=")[0] in (
                "--join", "--join-file", "--server", "--token", "--name", "--count"):
            raise InputError(f"--worker-option: {option!r} is not a worker option shoal up "
                             "leaves to you")
    join = join_string(join_file)
    settings = ssh_settings(user, password, passphrase, known_hosts, accept_new_host_keys,
                            bootstrap)
    client = session_of(ctx).client()
    client.workers()  # the server answers, before any host is touched
    provider = SshProvider(settings)
    if count > 1:
        extra += ["--count", str(count)]
    failed = asyncio.run(_up(provider, chosen, join, extra, count, parallel, timeout,
                             client.workers))
    raise typer.Exit(1 if failed else 0)


def expected_names(worker: RemoteWorker, count: int) -> list[str]:
    return [worker.name] if count == 1 else [f"{worker.name}-{i}" for i in range(1, count + 1)]


async def _up(provider: SshProvider, hosts: list[SshHost], join: str, worker_args: list[str],
              count: int, parallel: int, timeout: float,
              list_workers: Callable[[], list[dict[str, Any]]]) -> int:
    from shoal.provision.ssh import HostError, load_records, save_records

    with records_lock() as home:
        records = load_records(home)
    connected = {w["name"] for w in await asyncio.to_thread(list_workers) if w.get("connected")}
    failed = 0
    to_start: list[SshHost] = []
    for host in hosts:
        known = next((r for r in records if r.host == str(host)
                      and (r.name in connected or f"{r.name}-1" in connected)), None)
        if known is not None:
            print(f"{host}: already up (worker {known.name}, pid {known.pid})")
        else:
            to_start.append(host)
    started_at = time.monotonic()

    async def start(host: SshHost) -> RemoteWorker | None:
        try:
            worker = await provider.start_worker(host, join, worker_args=worker_args)
        except HostError as exc:
            _fail("up", str(exc))
            return None
        with records_lock() as home_now:  # recorded at once: `down` finds it whatever follows
            current = [r for r in load_records(home_now) if r.host != str(host)]
            save_records(home_now, [*current, worker])
        return worker

    started = [w for w in await bounded(parallel, to_start, start) if w is not None]
    failed += len(to_start) - len(started)
    waiting = {name: worker for worker in started for name in expected_names(worker, count)}
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 5.0
    dead: set[str] = set()
    while waiting and time.monotonic() < deadline:
        if time.monotonic() >= next_check:  # a worker that exited will never join: say why
            next_check = time.monotonic() + 5.0
            for worker in {w.host: w for w in waiting.values()}.values():
                try:
                    alive, last = await provider.check(worker)
                except HostError:
                    continue
                if not alive:
                    _fail("up", f"{worker.host}: worker {worker.name} (pid {worker.pid}) "
                                f"exited without joining: {last or 'no output'} (its log on "
                                f"the host: {worker.log})")
                    dead.add(worker.host)
                    waiting = {n: w for n, w in waiting.items() if w is not worker}
            if not waiting:
                break
        for info in await asyncio.to_thread(list_workers):
            if info.get("connected") and info.get("name") in waiting:
                worker = waiting.pop(info["name"])
                if not any(w is worker for w in waiting.values()):
                    print(f"{worker.host}: worker {worker.name} joined "
                          f"(pid {worker.pid}, {time.monotonic() - started_at:.1f}s)",
                          flush=True)
        if waiting:
            await asyncio.sleep(0.2)
    late = {worker.host: worker for worker in waiting.values()}
    for worker in late.values():
        _fail("up", f"{worker.host}: worker {worker.name} (pid {worker.pid}) did not join "
                    f"within {timeout:.0f}s; its log on the host: {worker.log}")
    failed += len(late) + len(dead)
    total = len(hosts)
    print(f"{total - failed} of {total} hosts up", file=sys.stderr)
    return failed


def down_command(
    hosts: Annotated[list[str] | None, typer.Argument(
        metavar="[HOST...]", help="The hosts to stop (default: every one `shoal up` started).")
    ] = None,
    user: UserOption = None,
    password: PasswordOption = False,
    passphrase: PassphraseOption = False,
    known_hosts: KnownHostsOption = None,
    parallel: ParallelOption = DEFAULT_PARALLEL,
) -> None:
    """Stop the workers `shoal up` started (their jobs go back to the queue)."""
    from shoal.provision.ssh import load_records

    wanted = [parse_host(text) for text in hosts or []]
    if not 1 <= parallel <= MAX_PARALLEL:
        raise InputError(f"--parallel: must be from 1 to {MAX_PARALLEL}")
    settings = ssh_settings(user, password, passphrase, known_hosts)
    with records_lock() as home:
        records = load_records(home)
    chosen = []
    failed = 0
    for host in wanted:
        matches = [r for r in records if _matches(host, r.host)]
        if not matches:
            _fail("down", f"{host}: no worker started there by `shoal up`")
            failed += 1
        chosen += [r for r in matches if r not in chosen]
    if not wanted:
        chosen = records
        if not chosen:
            print("no workers started by `shoal up`", file=sys.stderr)
    failed += asyncio.run(_down(settings, chosen, parallel))
    raise typer.Exit(1 if failed else 0)


def _matches(given: SshHost, recorded: str) -> bool:
    other = parse_host(recorded)
    return given == other or (given.host == other.host and given.user in (None, other.user)
                              and given.port in (None, other.port))


async def _down(settings: SshSettings, workers: list[RemoteWorker], parallel: int) -> int:
    from shoal.provision.ssh import HostError, SshProvider, load_records, save_records

    provider = SshProvider(settings)

    async def stop(worker: RemoteWorker) -> bool:
        try:
            how = await provider.stop_worker(worker)
        except HostError as exc:
            _fail("down", str(exc))
            return False
        with records_lock() as home:
            save_records(home, [r for r in load_records(home) if r != worker])
        said = {"stopped": "stopped", "killed": "killed (it did not stop in time)",
                "gone": "was not running any more"}.get(how, how)
        print(f"{worker.host}: worker {worker.name} {said}", flush=True)
        return True

    results = await bounded(parallel, workers, stop)
    return sum(1 for ok in results if not ok)

"""Workers over SSH: start `shoal worker` on hosts, detached, and stop them (asyncssh).

Authentication is OpenSSH's: the user's `~/.ssh/config` (Host aliases, User, Port,
IdentityFile, UserKnownHostsFile), then ssh-agent, then the user's keys (encrypted ones with a
passphrase), then a password if one is given. Host keys are checked against known_hosts; an
unknown one is refused unless new keys are to be accepted (then it is added), a changed one
always. Every failure is a ProvisionError whose message starts with the host.

On the host, a worker runs in a session of its own, so it outlives the SSH connection; its
output goes to `~/.shoal/up/NAME.log`. Its connection string goes through standard input into
its environment (SHOAL_JOIN), never onto a command line. What was started is described by a
`RemoteWorker`, which is all `stop` needs.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shoal
from shoal.provision.base import (
    Allocation,
    AllocationState,
    AllocationStatus,
    ProvisionError,
    SubmitRequest,
)
from shoal.provision.bootstrap import (
    INSTALL_PYTHON,
    MIN_PYTHON,
    Target,
    fetch_wheels,
    install_arguments,
)
from shoal.provision.hosts import SshHost, parse_host
from shoal.provision.remote import (
    ALIVE_PYTHON,
    LAUNCH_PYTHON,
    PYTHON_CANDIDATES,
    STOP_PYTHON,
    last_json,
    probe_command,
    python_command,
)

if TYPE_CHECKING:
    import asyncssh

COMMAND_TIMEOUT_SECONDS = 120.0
INSTALL_TIMEOUT_SECONDS = 900.0
VENV_PYTHON_SUFFIX = "/.shoal/venv/bin/python"


class HostError(ProvisionError):
    """One host failed; the message names it."""

    def __init__(self, host: SshHost | str, reason: str):
        self.host = str(host)
        self.reason = reason
        super().__init__(f"{host}: {reason}")


@dataclass(frozen=True)
class SshSettings:
    user: str | None = None  # for hosts that name none (else ~/.ssh/config's, else ours)
    password: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)  # for encrypted keys
    accept_new_host_keys: bool = False
    known_hosts: Path | None = None  # default: ~/.ssh/known_hosts, or ~/.ssh/config's
    connect_timeout_seconds: float = 30.0
    bootstrap: bool = False  # install shoal where it is missing or another version
    stop_grace_seconds: float = 20.0  # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class RemoteWorker:
    """A worker started on a host: enough to find it again and stop it."""

    host: str  # as given: [user@]host[:port]
    name: str
    pid: int
    python: str  # a Python on the host, to run the stop program with
    shoal: str  # the `shoal` it runs
    log: str
    started_at: float
    user: str | None = None  # logged in as, where the host names none (--user)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemoteWorker:
        return cls(host=str(data["host"]), name=str(data["name"]), pid=int(data["pid"]),
                   python=str(data["python"]), shoal=str(data["shoal"]), log=str(data["log"]),
                   started_at=float(data["started_at"]),
                   user=str(data["user"]) if data.get("user") else None)


@dataclass
class _HostKeyCheck:
    """What the host-key check met, to explain a refusal."""

    verdict: str | None = None  # "unknown", "mismatch", "accepted"
    key: Any = None
    port: int = 22


def _client_class(check: _HostKeyCheck, accept_new: bool) -> type:
    import asyncssh

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
            self._conn = conn

        def validate_host_public_key(self, host: str, addr: str, port: int,
                                     key: asyncssh.SSHKey) -> bool:
            # Called only for a key known_hosts does not trust. If it trusts others for this
            # host, the key has changed: refused, whatever the settings.
            check.key, check.port = key, port
            if getattr(self._conn, "_trusted_host_keys", None):
                check.verdict = "mismatch"
                return False
            check.verdict = "accepted" if accept_new else "unknown"
            return accept_new

    return Client


class SshProvider:
    """Starts workers on hosts over SSH. `submit` takes the host as the request's name."""

    name = "ssh"

    def __init__(self, settings: SshSettings | None = None):
        self.settings = settings or SshSettings()
        self._wheel_locks: dict[str, asyncio.Lock] = {}
        self._known_hosts_lock = asyncio.Lock()

    # ---- the WorkerProvider protocol -----------------------------------------------------

    async def submit(self, request: SubmitRequest) -> Allocation:
        host = parse_host(request.name)
        args = list(request.worker_args)
        if request.workers > 1:
            args += ["--count", str(request.workers)]
        worker = await self.start_worker(host, request.join, worker_args=args)
        return Allocation(provider=self.name, engine_id=json.dumps(worker.to_dict()),
                          name=worker.name, workers=request.workers,
                          submitted_at=worker.started_at, work_dir=worker.log)

    async def status(self, allocations: Sequence[Allocation]) -> dict[str, AllocationStatus]:
        async def one(allocation: Allocation) -> tuple[str, AllocationStatus]:
            worker = RemoteWorker.from_dict(json.loads(allocation.engine_id))
            try:
                alive = await self.is_alive(worker)
            except ProvisionError as exc:
                return allocation.engine_id, AllocationStatus(AllocationState.FAILED, str(exc))
            state = AllocationState.RUNNING if alive else AllocationState.FINISHED
            return allocation.engine_id, AllocationStatus(state, started_at=worker.started_at)

        return dict(await asyncio.gather(*(one(a) for a in allocations)))

    async def cancel(self, allocation: Allocation) -> None:
        await self.stop_worker(RemoteWorker.from_dict(json.loads(allocation.engine_id)))

    # ---- connecting ----------------------------------------------------------------------

    def _user(self, host: SshHost, user: str | None = None) -> str:
        return host.user or user or self.settings.user or getpass.getuser()

    async def connect(self, host: SshHost,
                      user: str | None = None) -> asyncssh.SSHClientConnection:
        """Logged in to `host` as its user, else `user`, else the settings' (else as
        ~/.ssh/config says)."""
        import asyncssh

        check = _HostKeyCheck()
        options: dict[str, Any] = {
            "connect_timeout": self.settings.connect_timeout_seconds,
            "login_timeout": self.settings.connect_timeout_seconds,
            "keepalive_interval": 15,
            "client_factory": _client_class(check, self.settings.accept_new_host_keys),
        }
        if host.port is not None:
            options["port"] = host.port
        if host.user or user or self.settings.user:
            options["username"] = host.user or user or self.settings.user
        if self.settings.known_hosts is not None:
            options["known_hosts"] = str(self.settings.known_hosts)
        if self.settings.passphrase is not None:
            options["passphrase"] = self.settings.passphrase
        if self.settings.password is not None:
            options["password"] = self.settings.password
        try:
            conn = await asyncssh.connect(host.host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_error(host, check, exc) from None
        except asyncssh.PermissionDenied:
            tried = "ssh-agent, keys" + (", password" if self.settings.password else "")
            hint = "" if self.settings.passphrase or self.settings.password else \
                "; an encrypted key needs --passphrase, a password --password"
            raise HostError(host, f"authentication refused for user {self._user(host, user)} "
                                  f"(tried {tried}{hint})") from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, UnicodeDecodeError) as exc:
            raise HostError(host, _key_problem(key_failure(exc),
                                               self.settings.passphrase is not None)) from None
        except TimeoutError:
            raise HostError(host, "unreachable: no answer within "
                                  f"{self.settings.connect_timeout_seconds:.0f}s") from None
        except socket.gaierror as exc:
            raise HostError(host, f"unreachable: cannot resolve the name ({exc.strerror})"
                            ) from None
        except OSError as exc:
            raise HostError(host, f"unreachable: {exc.strerror or exc}") from None
        except asyncssh.Error as exc:
            raise HostError(host, f"ssh: {exc.reason}") from None
        except ValueError as exc:  # asyncssh's word for a bad ~/.ssh/config or option
            raise HostError(host, f"ssh settings: {exc}") from None
        if check.verdict == "accepted":
            await self._remember_host_key(host, check)
        return conn

    def _known_hosts_file(self) -> Path:
        return self.settings.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def _host_key_error(self, host: SshHost, check: _HostKeyCheck,
                        exc: Exception) -> HostError:
        known = self._known_hosts_file()
        if check.key is None:
            return HostError(host, f"host key refused: {getattr(exc, 'reason', exc)}")
        fingerprint = f"{check.key.get_algorithm()} {check.key.get_fingerprint()}"
        if check.verdict == "mismatch":
            return HostError(host, f"host key mismatch: it offers {fingerprint}, not the key "
                                   f"{known} has for it (a reinstalled host, or someone in "
                                   "between); refused")
        return HostError(host, f"host key unknown ({fingerprint}, not in {known}); check it, "
                               "then add it, or use --accept-new-host-keys")

    async def _remember_host_key(self, host: SshHost, check: _HostKeyCheck) -> None:
        """Add an accepted new key to known_hosts, as OpenSSH's accept-new does."""
        pattern = host.host if check.port in (22, None) else f"[{host.host}]:{check.port}"
        key = check.key.export_public_key("openssh").decode().split()
        line = f"{pattern} {key[0]} {key[1]}\n"
        path = self._known_hosts_file()
        async with self._known_hosts_lock:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with path.open("a") as handle:
                    handle.write(line)
            except OSError as exc:
                raise HostError(host, f"cannot add its host key to {path}: "
                                      f"{exc.strerror or exc}") from None

    async def _run(self, conn: asyncssh.SSHClientConnection, host: SshHost, command: str,
                   *, input: str | None = None,
                   timeout: float = COMMAND_TIMEOUT_SECONDS) -> asyncssh.SSHCompletedProcess:
        import asyncssh

        try:
            result: asyncssh.SSHCompletedProcess = await conn.run(
                command, input=input, check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            raise HostError(host, f"a command took longer than {timeout:.0f}s") from None
        except asyncssh.Error as exc:
            raise HostError(host, f"ssh: {exc.reason}") from None
        except OSError as exc:
            raise HostError(host, f"connection lost: {exc.strerror or exc}") from None
        return result

    # ---- starting ------------------------------------------------------------------------

    async def start_worker(self, host: SshHost, join: str, *, name: str | None = None,
                           worker_args: Sequence[str] = (),
                           started_by: str = "ssh") -> RemoteWorker:
        """Start one `shoal worker` (or, with --count in `worker_args`, several) on `host`,
        joined with `join`; installs shoal first with `bootstrap` where needed."""
        name = name or host.worker_name
        async with await self.connect(host) as conn:
            pythons, on_path = await self._probe(conn, host)
            python, shoal_command = await self._choose(conn, host, pythons, on_path)
            argv = [shoal_command, "worker", "--name", name, f"--started-by={started_by}",
                    *worker_args]
            result = await self._run(conn, host, python_command(
                python, LAUNCH_PYTHON, {"argv": argv, "name": name, "settle": 0.3}),
                input=join + "\n")
            answer = last_json(str(result.stdout or ""))
            if answer is None or "pid" not in answer:
                raise HostError(host, "could not start the worker: "
                                      f"{_last_line(result.stderr) or 'no answer'}")
            if answer.get("exit") is not None:
                raise HostError(host, f"the worker exited at once (exit {answer['exit']}): "
                                      f"{_last_line(answer.get('tail')) or 'no output'} "
                                      f"(its log: {answer.get('log')})")
            worker = RemoteWorker(host=str(host), name=name, pid=int(answer["pid"]),
                                  python=python, shoal=shoal_command, log=str(answer["log"]),
                                  started_at=time.time(), user=host.user or self.settings.user)
        return worker

    async def _probe(self, conn: asyncssh.SSHClientConnection,
                     host: SshHost) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """The host's Pythons (each once, best first), and the `shoal` on PATH with its
        version."""
        result = await self._run(conn, host, probe_command())
        pythons: list[dict[str, Any]] = []
        on_path: tuple[str, str] | None = None
        seen: set[tuple[Any, ...]] = set()
        for line in str(result.stdout or "").splitlines():
            if line.startswith("PROBE "):
                try:
                    info = json.loads(line[len("PROBE "):])
                except ValueError:
                    continue
                identity = (tuple(info.get("version", ())), info.get("shoal"),
                            info["exe"].endswith(VENV_PYTHON_SUFFIX))
                if identity not in seen:
                    seen.add(identity)
                    pythons.append(info)
            elif line.startswith("SHOAL "):
                words = line.split()
                on_path = (words[1], words[2] if len(words) > 2 else "")
        return pythons, on_path

    async def _choose(self, conn: asyncssh.SSHClientConnection, host: SshHost,
                      pythons: list[dict[str, Any]],
                      on_path: tuple[str, str] | None) -> tuple[str, str]:
        """(a Python to run shoal's programs with, the `shoal` to start): a bootstrapped one
        of this version, else the one on PATH if it is this version, else one installed now
        (with `bootstrap`)."""
        version = shoal.__version__
        venv = next((p for p in pythons if p["exe"].endswith(VENV_PYTHON_SUFFIX)), None)
        plain = [p for p in pythons if not p["exe"].endswith(VENV_PYTHON_SUFFIX)]
        usable = [p for p in plain if tuple(p.get("version", ()))[:2] >= MIN_PYTHON
                  and p.get("implementation", "cpython") == "cpython"]
        venv_shoal = str(venv["exe"])[: -len("python")] + "shoal" if venv else None
        if self.settings.bootstrap and usable:
            build = await self._build_version()
            if venv is not None and venv.get("shoal") == build:
                return str(venv["exe"]), str(venv_shoal)
        elif venv is not None and str(venv.get("shoal") or "").partition("+")[0] == version:
            return str(venv["exe"]), str(venv_shoal)
        if on_path is not None and on_path[1].partition("+")[0] == version and pythons:
            return str(pythons[0]["exe"]), on_path[0]
        shoal_found = ("no shoal on its PATH" if on_path is None
                       else f"{on_path[0]} is shoal {on_path[1] or '(unknown version)'}")
        if not usable:
            needs = ("install one to bootstrap shoal" if self.settings.bootstrap else
                     f"shoal {version} needs one, and is not installed there ({shoal_found})")
            raise HostError(host, f"{_no_python(plain)}; {needs}")
        if not self.settings.bootstrap:
            raise HostError(host, f"shoal {version} is not installed there ({shoal_found}); "
                                  "install it, or use --bootstrap")
        return await self._bootstrap(conn, host, usable[0])

    async def _build_version(self) -> str:
        from shoal.provision.bootstrap import build_own_wheel, cache_directory

        _, version = await asyncio.to_thread(build_own_wheel, cache_directory() / "own")
        return version

    async def _bootstrap(self, conn: asyncssh.SSHClientConnection, host: SshHost,
                         info: dict[str, Any]) -> tuple[str, str]:
        import asyncssh

        target = Target.from_probe(info)
        lock = self._wheel_locks.setdefault(target.key, asyncio.Lock())
        async with lock:  # hosts alike share one download
            try:
                wheels, _, version = await asyncio.to_thread(fetch_wheels, target)
            except ProvisionError as exc:
                raise HostError(host, str(exc)) from None
        home = str(info.get("home") or ".")
        wheels_dir = f"{home}/.shoal/wheels"
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(wheels_dir, exist_ok=True)
                await sftp.chmod(f"{home}/.shoal", 0o700)
                present = {entry.filename: entry.attrs.size
                           for entry in await sftp.readdir(wheels_dir)}
                missing = [str(w) for w in wheels if present.get(w.name) != w.stat().st_size]
                if missing:
                    await sftp.put(missing, wheels_dir)
        except (asyncssh.Error, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise HostError(host, f"cannot upload the wheels to {wheels_dir}: {reason}"
                            ) from None
        arguments = install_arguments(wheels_dir, wheels, version)
        result = await self._run(conn, host, python_command(
            str(info["exe"]), INSTALL_PYTHON, arguments), timeout=INSTALL_TIMEOUT_SECONDS)
        answer = last_json(str(result.stdout or ""))
        if answer is None or "shoal" not in answer:
            reason = answer.get("error") if answer else _last_line(result.stderr)
            raise HostError(host, f"installing shoal in ~/.shoal/venvs failed: "
                                  f"{reason or 'no answer'}")
        shoal_command = str(answer["shoal"])
        return shoal_command[: -len("shoal")] + "python", shoal_command

    # ---- stopping ------------------------------------------------------------------------

    async def stop_worker(self, worker: RemoteWorker) -> str:
        """Stop it and what it started; "stopped", "killed" (did not stop within the grace),
        or "gone" (it was not running any more)."""
        host = parse_host(worker.host)
        async with await self.connect(host, worker.user) as conn:
            result = await self._run(conn, host, python_command(
                worker.python, STOP_PYTHON,
                {"pid": worker.pid, "name": worker.name,
                 "grace": self.settings.stop_grace_seconds}),
                timeout=self.settings.stop_grace_seconds + COMMAND_TIMEOUT_SECONDS)
        answer = last_json(str(result.stdout or ""))
        if answer is None:
            raise HostError(host, f"could not stop worker {worker.name} (pid {worker.pid}): "
                                  f"{_last_line(result.stderr) or 'no answer'}")
        return str(answer.get("how"))

    async def is_alive(self, worker: RemoteWorker) -> bool:
        alive, _ = await self.check(worker)
        return alive

    async def check(self, worker: RemoteWorker) -> tuple[bool, str]:
        """Whether it runs; if not, the last line of its log."""
        host = parse_host(worker.host)
        async with await self.connect(host, worker.user) as conn:
            result = await self._run(conn, host, python_command(
                worker.python, ALIVE_PYTHON,
                {"pid": worker.pid, "name": worker.name, "log": worker.log}))
        answer = last_json(str(result.stdout or "")) or {}
        return bool(answer.get("alive")), _last_line(answer.get("tail"))


_UNPARSABLE_KEY = re.compile(r"Invalid .*private key")  # asyncssh's words, one per format


def key_failure(exc: Exception) -> str:
    """asyncssh's words for a key it could not load. Now and then a wrong passphrase decrypts
    an old PEM key to garbage whose text fields are not UTF-8, and asyncssh lets Python's
    decoding error out: that is an unparsable key too."""
    if isinstance(exc, UnicodeDecodeError):
        return "Invalid private key (it decrypts to bytes that are no key)"
    return str(exc)


def _key_problem(reason: str, passphrase_given: bool) -> str:
    """Why a key asyncssh loaded cannot be used, and what to do."""
    if "bcrypt" in reason:
        return f"cannot use an SSH key: {reason} (install the Python package bcrypt beside shoal)"
    lowered = reason.lower()
    # A PEM key's old encryption has no check value: about one wrong passphrase in 256
    # decrypts to well-padded garbage, which then fails to parse as a key.
    if passphrase_given and ("decrypt" in lowered or "passphrase" in lowered
                             or _UNPARSABLE_KEY.fullmatch(reason)):
        return f"cannot decrypt an SSH key with the passphrase given (wrong passphrase?): {reason}"
    return f"cannot use an SSH key: {reason}"


def _no_python(found: list[dict[str, Any]]) -> str:
    """Why none of the Pythons the probe `found` will do, naming what it looked for."""
    described = []
    for info in found:
        text = f"{Path(str(info['exe'])).name} {'.'.join(str(v) for v in info.get('version', ()))}"
        implementation = info.get("implementation", "cpython")
        described.append(text if implementation == "cpython" else f"{text} ({implementation})")
    return (f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer found (tried "
            f"{', '.join(PYTHON_CANDIDATES)} on its PATH; found {', '.join(described) or 'none'})")


def _last_line(text: object) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# ---- what `shoal up` started, kept beside the server's state -------------------------------

RECORDS_FILE = "ssh-workers.json"


def load_records(home: Path) -> list[RemoteWorker]:
    path = home / RECORDS_FILE
    try:
        data = json.loads(path.read_text())
        return [RemoteWorker.from_dict(item) for item in data.get("workers", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"{path}: unreadable ({exc})") from None


def save_records(home: Path, workers: Sequence[RemoteWorker]) -> None:
    path = home / RECORDS_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"workers": [worker.to_dict() for worker in workers]}, handle, indent=1)
    os.replace(partial, path)


def shell_words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)

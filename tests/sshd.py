"""Real OpenSSH servers for tests: `sshd -D -f CONFIG` on loopback ports or inside namespace
hosts, with host keys, client keys and test accounts made here, all removed at the end.

Each account has a home of its own under one directory the testbed owns (world-traversable,
so the accounts reach their homes); its processes, its sshd and the account itself are gone
after `close()`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.ports import free_port
from tests.system import require, require_root_tool

SSHD = "/usr/sbin/sshd"


def require_sshd() -> None:
    require_root_tool("useradd")
    require(os.path.exists(SSHD), "sshd (Debian's openssh-server)")
    require(shutil.which("ssh-keygen") is not None, "ssh-keygen")


def keygen(path: Path, comment: str = "shoal-test", *, passphrase: str = "",
           kind: str = "ed25519", key_format: str = "openssh") -> str:
    """A new key pair at `path` (encrypted with `passphrase` if one is given; the private key
    in ssh-keygen's own format, or "pem"); returns the public key line."""
    form = ["-m", "PEM"] if key_format == "pem" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment, *form,
                    "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Account:
    name: str
    home: Path
    uid: int


@dataclass
class Sshd:
    address: str
    port: int
    host_key_line: str  # "ssh-ed25519 AAAA..."
    process: subprocess.Popen[bytes]
    log: Path

    def known_hosts_line(self) -> str:
        pattern = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{pattern} {self.host_key_line}\n"

    def spec(self, account: Account) -> str:
        return f"{account.name}@{self.address}:{self.port}"


class SshBed:
    def __init__(self) -> None:
        require_sshd()
        self.root = Path(tempfile.mkdtemp(prefix="shoal-ssh-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.tag = f"sh{os.getpid() % 100000}{random.randint(0, 999):03d}"
        self.accounts: list[Account] = []
        self.daemons: list[Sshd] = []
        # The client side: a HOME of its own with a key, known_hosts and no ssh config.
        self.client_home = self.root / "client"
        (self.client_home / ".ssh").mkdir(parents=True, mode=0o700)
        os.chmod(self.client_home, 0o700)
        self.client_key = self.client_home / ".ssh" / "id_ed25519"
        self.client_public = keygen(self.client_key)
        self.known_hosts = self.client_home / ".ssh" / "known_hosts"
        self.known_hosts.touch(mode=0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation

    # ---- accounts ---------------------------------------------------------------------------

    def add_account(self, authorized_keys: Sequence[str] | None = None) -> Account:
        """A new account; it trusts `authorized_keys` (public key lines), by default the
        client's key."""
        keys = [self.client_public] if authorized_keys is None else list(authorized_keys)
        name = f"{self.tag}u{len(self.accounts)}"
        home = self.root / f"home-{name}"
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        account = Account(name, home, entry.pw_uid)
        self.accounts.append(account)
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text("".join(f"{key}\n" for key in keys))
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        os.chmod(home, 0o700)
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return account

    def set_password(self, account: Account, password: str) -> None:
        """Give the account a password (as `passwd` would): sshd checks it when it allows
        password authentication."""
        require_root_tool("chpasswd")
        subprocess.run(["chpasswd"], input=f"{account.name}:{password}\n", text=True,
                       check=True, capture_output=True)

    def account_processes(self, account: Account) -> list[psutil.Process]:
        found = []
        # Read as each process is listed: one that exits meanwhile is left out, not raised.
        for process in psutil.process_iter(["uids", "cmdline", "status"]):
            try:
                if process.info["uids"] and process.info["uids"].real == account.uid:
                    found.append(process)
            except psutil.Error:
                continue
        return found

    # ---- daemons ----------------------------------------------------------------------------

    def start_sshd(self, address: str = "127.0.0.1", port: int | None = None, *,
                   netns: str | None = None, path: str | None = None,
                   password_authentication: bool = False) -> Sshd:
        """An sshd on address:port (in namespace `netns` if given) for the accounts; `path`
        becomes its sessions' PATH. Keys only, unless `password_authentication`."""
        index = len(self.daemons)
        where = self.root / f"sshd-{index}"
        where.mkdir(mode=0o700)
        host_key = where / "ssh_host_ed25519_key"
        host_public = keygen(host_key, "host")
        port = port or free_port(address if netns is None else "127.0.0.1")
        lines = [f"Port {port}", f"ListenAddress {address}", f"HostKey {host_key}",
                 f"PidFile {where / 'sshd.pid'}", "AuthorizedKeysFile .ssh/authorized_keys",
                 "StrictModes no", "UsePAM no",
                 f"PasswordAuthentication {'yes' if password_authentication else 'no'}",
                 "KbdInteractiveAuthentication no", "PermitRootLogin no",
                 "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "UseDNS no",
                 "MaxStartups 100:30:200"]
        if path:
            lines.append(f"SetEnv PATH={path}")
        config = where / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        log = where / "sshd.log"
        prefix = ["ip", "netns", "exec", netns] if netns else []
        process = subprocess.Popen([*prefix, SSHD, "-D", "-f", str(config), "-E", str(log)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        daemon = Sshd(address, port, " ".join(host_public.split()[:2]), process, log)
        self.daemons.append(daemon)
        deadline = time.monotonic() + 30
        while not _listening(address, port, netns):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        return daemon

    def trust(self, daemon: Sshd) -> None:
        with self.known_hosts.open("a") as handle:
            handle.write(daemon.known_hosts_line())

    def client_env(self, base: dict[str, str]) -> dict[str, str]:
        """An environment for `shoal up`: this client HOME (its key, its known_hosts), no
        agent, the wheel cache of the real home kept (fetched once per machine)."""
        env = dict(base)
        real_home = os.environ.get("HOME") or str(Path.home())
        env.setdefault("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME")
                       or str(Path(real_home) / ".cache"))
        env["HOME"] = str(self.client_home)
        env.pop("SSH_AUTH_SOCK", None)
        env.pop("SSH_AGENT_PID", None)
        return env

    # ---- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                os.killpg(daemon.process.pid, signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.process.pid, signal.SIGKILL)
                daemon.process.wait()
        for account in self.accounts:
            for _ in range(50):
                processes = self.account_processes(account)
                if not processes:
                    break
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
                time.sleep(0.1)
            subprocess.run(["userdel", account.name], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def command_directory(where: Path, commands: Sequence[str]) -> Path:
    """A directory of links to this machine's `commands` and nothing else: as a session's
    whole PATH, a host that has those commands only."""
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(where, 0o755)
    for command in commands:
        found = shutil.which(command)
        require(found is not None, command)
        (where / command).symlink_to(str(found))
    return where


def _listening(address: str, port: int, netns: str | None) -> bool:
    if netns is None:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            return False
    done = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                           f"import socket; socket.create_connection(({address!r}, {port}), 1)"],
                          capture_output=True)
    return done.returncode == 0


def install_shared_shoal(python: str = "/usr/bin/python3") -> Path:
    """This shoal installed for every account: a venv made by the same offline install the
    bootstrap runs on a host, in a world-readable directory. Returns that directory; the
    venv's bin is `shared_bin(it)`."""
    import json

    from shoal.provision.bootstrap import INSTALL_PYTHON, Target, fetch_wheels, install_arguments

    require(os.path.exists(python), python)
    probe = subprocess.run([python, "-c", "import json, platform, sys, sysconfig; print(json.dumps("
                            "[list(sys.version_info[:3]), sysconfig.get_platform(), "
                            "list(platform.libc_ver())]))"],
                           capture_output=True, text=True, check=True)
    version, platform_name, libc = json.loads(probe.stdout)
    require(tuple(version[:2]) >= (3, 11), f"{python} 3.11 or later")
    target = Target(python, tuple(version), platform_name, tuple(libc))
    wheels, _, build = fetch_wheels(target)
    root = Path(tempfile.mkdtemp(prefix="shoal-ssh-shared-", dir="/tmp"))
    os.chmod(root, 0o755)
    wheels_dir = root / "wheels"
    wheels_dir.mkdir()
    for wheel in wheels:
        shutil.copy(wheel, wheels_dir / wheel.name)
    arguments = install_arguments(str(wheels_dir), wheels, build)
    done = subprocess.run([python, "-c", INSTALL_PYTHON, json.dumps(arguments)],
                          env={"HOME": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def shared_bin(root: Path) -> Path:
    return root / ".shoal" / "venv" / "bin"

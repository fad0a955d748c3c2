"""Hosts to reach over SSH: `[ssh://][user@]host[:port]`, given on the command line, in a
file (one a line), or as an ensemble's `ssh://` host."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shoal.core.errors import InputError

SSH_SCHEME = "ssh://"
MAX_HOSTS = 10_000
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# A name from DNS or ~/.ssh/config, or an IPv4 address; IPv6 goes in brackets.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]{1,15})?$")


@dataclass(frozen=True, order=True)
class SshHost:
    """One host: None for the user or port leaves them to ~/.ssh/config (then the defaults:
    the local user name, port 22)."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"

    @property
    def worker_name(self) -> str:
        """The name of the worker shoal starts there: the host as written, in worker-name
        characters."""
        return re.sub(r"[^A-Za-z0-9_.@+-]", "_", str(self))[:120]


def parse_host(text: str) -> SshHost:
    """`[ssh://][user@]host[:port]`; InputError naming the host when it is not one."""
    raw = text.strip()
    rest = raw[len(SSH_SCHEME):] if raw.lower().startswith(SSH_SCHEME) else raw
    rest = rest.rstrip("/")

    def bad(why: str) -> InputError:
        return InputError(f"host {text!r}: {why} (expected [ssh://][user@]host[:port])")

    if not rest:
        raise bad("empty")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not _USER_RE.match(user):
            raise bad(f"bad user name {user!r}")
    port_text: str | None = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or not _IPV6_RE.match(host):
            raise bad("bad bracketed address")
        if after:
            if not after.startswith(":"):
                raise bad("unexpected text after the address")
            port_text = after[1:]
    else:
        if rest.count(":") > 1:
            raise bad("an IPv6 address goes in brackets: [::1]:22")
        host, colon, port_part = rest.partition(":")
        port_text = port_part if colon else None
        if not _NAME_RE.match(host):
            raise bad(f"bad host name {host!r}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"bad port {port_text!r}")
        port = int(port_text)
    return SshHost(host=host, user=user, port=port)


def is_ssh_host(text: str) -> bool:
    return text.strip().lower().startswith(SSH_SCHEME)


def read_hosts_file(path: Path) -> list[SshHost]:
    """One host a line; `#` comments and blank lines skipped. A bad line is named."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read it: {reason}", source=str(path)) from None
    hosts: list[SshHost] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            hosts.append(parse_host(entry))
        except InputError as exc:
            raise InputError(str(exc), source=str(path), line=number) from None
        if len(hosts) > MAX_HOSTS:
            raise InputError(f"more than {MAX_HOSTS} hosts", source=str(path))
    if not hosts:
        raise InputError("no hosts in it", source=str(path))
    return hosts


def unique_hosts(hosts: list[SshHost]) -> list[SshHost]:
    """In order, each once; a host named twice is refused (two workers would take one name)."""
    seen: set[SshHost] = set()
    for host in hosts:
        if host in seen:
            raise InputError(f"host {host} is given twice")
        seen.add(host)
    return hosts

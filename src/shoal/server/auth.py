"""Tokens and who holds them: created by an admin, stored hashed, checked on every request.

A token's name is its holder's identity: jobs belong to the name that added them. Roles:
`admin` sees and does everything; `user` sees and acts on their own jobs; `worker` may only
use the worker channel (and fetch the files of the jobs handed to workers); `metrics` may
only read /metrics (for a Prometheus scraper).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.core.errors import InputError, NotFound
from shoal.home import Connection, read_connection_file
from shoal.store import Store

ADMIN, USER, WORKER, METRICS = "admin", "user", "worker", "metrics"
ROLES = (ADMIN, USER, WORKER, METRICS)
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
TOKEN_NAME_RULE = "1-64 letters, digits and _.@+-, starting with a letter or digit"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the role and name of the token presented."""

    role: str
    name: str
    token_hash: str

    @property
    def sees_all(self) -> bool:
        return self.role == ADMIN

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this principal may see, or None for all."""
        return None if self.sees_all else self.name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(role: str) -> str:
    return f"shoal-{role}-{secrets.token_urlsafe(24)}"


class TokenBook:
    """Which principal a presented token is; the store's copy is the truth, this a cache
    changed only together with it, so a revocation takes effect on the next request."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock
        self._principals: dict[str, Principal] = {}
        self.revoked_listeners: list[Callable[[str], None]] = []  # called with a token hash
        self._reload()

    def _reload(self) -> None:
        self._principals = {digest: Principal(role, name, digest)
                            for digest, (role, name) in self._store.tokens().items()}

    def principal_of(self, token: str | None) -> Principal | None:
        if not token or len(token) > 256:
            return None
        return self._principals.get(hash_token(token))

    def role_of(self, token: str | None) -> str | None:
        principal = self.principal_of(token)
        return principal.role if principal else None

    def create(self, role: str, name: str) -> str:
        """A new token; only its hash is kept, so this is the one time it is seen."""
        if role not in ROLES:
            raise InputError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        if not TOKEN_NAME_RE.fullmatch(name):
            raise InputError(f"name: {name!r} is not a valid token name ({TOKEN_NAME_RULE})")
        if name.startswith("default-"):
            raise InputError(f"name: {name!r}: names starting with 'default-' are the "
                             "server's own")
        token = new_token(role)
        self._store.add_token(role, name, hash_token(token), self._clock())
        self._reload()
        return token

    def revoke(self, name: str) -> None:
        hashes = self._store.revoke_token(name, self._clock())
        if not hashes:
            raise NotFound(f"no live token is named {name!r}")
        self._reload()
        for digest in hashes:
            for listener in self.revoked_listeners:
                listener(digest)

    def listing(self) -> list[dict[str, Any]]:
        return self._store.token_list()

    def ensure_default_tokens(self, home: Path) -> tuple[str, str]:
        """Keep the admin and worker tokens of the connection file if they are still valid,
        otherwise make new ones. Returns (admin token, worker token)."""
        previous = read_connection_file(home) or Connection("", None, None)
        tokens = []
        for role, token in ((ADMIN, previous.admin_token), (WORKER, previous.worker_token)):
            if token is None or self.role_of(token) != role:
                token = new_token(role)
                self._store.replace_tokens(role, f"default-{role}", hash_token(token),
                                           self._clock())
            tokens.append(token)
        self._reload()
        return tokens[0], tokens[1]

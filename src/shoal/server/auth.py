"""Tokens: created on first start, stored hashed, checked on every request but the version probe."""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

from shoal.home import Connection, read_connection_file
from shoal.store import Store

ADMIN, USER, WORKER = "admin", "user", "worker"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(role: str) -> str:
    return f"shoal-{role}-{secrets.token_urlsafe(24)}"


class TokenBook:
    """Which role a presented token has; reloaded from the store when tokens change."""

    def __init__(self, store: Store):
        self._store = store
        self._roles = {digest: role for digest, (role, _name) in store.tokens().items()}

    def role_of(self, token: str | None) -> str | None:
        if not token:
            return None
        return self._roles.get(hash_token(token))

    def ensure_default_tokens(self, home: Path) -> tuple[str, str]:
        """Keep the admin and worker tokens of the connection file if they are still valid,
        otherwise make new ones. Returns (admin token, worker token)."""
        previous = read_connection_file(home) or Connection("", None, None)
        tokens = []
        for role, token in ((ADMIN, previous.admin_token), (WORKER, previous.worker_token)):
            if token is None or self.role_of(token) != role:
                token = new_token(role)
                self._store.replace_tokens(role, f"default-{role}", hash_token(token), time.time())
            tokens.append(token)
        self._roles = {digest: role for digest, (role, _name) in self._store.tokens().items()}
        return tokens[0], tokens[1]

"""Durable state: SQLite in WAL mode, schema migrations, and the repository."""

from shoal.store.repository import AttemptRow, Store

__all__ = ["AttemptRow", "Store"]

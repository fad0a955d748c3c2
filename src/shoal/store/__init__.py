"""Durable state: SQLite in WAL mode, schema migrations, and the repository."""

from shoal.store.repository import AttemptRow, JobQuery, JobWriter, Store

__all__ = ["AttemptRow", "JobQuery", "JobWriter", "Store"]

"""Durable state: SQLite in WAL mode, schema migrations, and the repository."""

from shoal.store.repository import (
    CHANGED_IN_PLACE,
    AttemptRow,
    JobQuery,
    JobWriter,
    StateCounts,
    Store,
    json_text,
)
from shoal.store.schema import key_hash, key_hashes

__all__ = ["CHANGED_IN_PLACE", "AttemptRow", "JobQuery", "JobWriter", "StateCounts", "Store",
           "json_text", "key_hash", "key_hashes"]

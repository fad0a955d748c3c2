"""A large add in chunks: each chunk is checked and kept in the database as it arrives, and
the add is made from all of them in one commit, or from none. A request stays the size of a
chunk whatever the add's, and a failed or abandoned add leaves no job behind."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from shoal.core.errors import InputError
from shoal.core.models import JobSpec
from shoal.server.service import MAX_JOBS_PER_ADD, Service
from shoal.store.staged import STAGED_HOURS, StagedAdds

_SPECS: TypeAdapter[list[JobSpec]] = TypeAdapter(list[JobSpec])


class ChunkedAdds:
    def __init__(self, service: Service):
        self.service = service
        self.staged = StagedAdds(service.store)

    def stage(self, batch: str, seq: int, specs: Sequence[JobSpec], owner: str) -> int:
        """Keep one chunk (already checked as an add checks it); the jobs staged so far."""
        now = self.service.clock()
        self.staged.expire(now - STAGED_HOURS * 3600)
        self.service.check_sizes(specs)
        held = self.staged.size(batch) + len(specs)
        if held > MAX_JOBS_PER_ADD:
            self.staged.drop(batch, owner)
            raise InputError(f"more than {MAX_JOBS_PER_ADD} jobs in one add")
        text = json.dumps([spec.model_dump(mode="json", exclude_defaults=True)
                           for spec in specs])
        self.staged.put(batch, seq, owner, text, len(specs), now)
        return held

    async def commit(self, batch: str, *, rerun: bool, owner: str, sees_all: bool,
                     may_set_caps: bool) -> dict[str, Any]:
        """The add of every chunk, at once; the batch is gone afterwards either way."""
        texts = list(self.staged.chunks(batch, owner))
        try:
            return self.service.add_chunks(_parse_each(texts), rerun=rerun, owner=owner,
                                           sees_all=sees_all, may_set_caps=may_set_caps)
        finally:
            self.staged.drop(batch)

    def abort(self, batch: str, owner: str) -> int:
        return self.staged.drop(batch, owner)


def _parse_each(texts: list[str]) -> Iterator[list[JobSpec]]:
    """The staged chunks' specs, a chunk at a time. Checked again: pydantic's check from
    JSON costs no more than building them unchecked (model_construct fills in defaults
    slowly)."""
    for text in texts:
        try:
            yield _SPECS.validate_json(text)
        except ValidationError as exc:  # checked when staged: only a changed shoal gets here
            raise InputError("a staged chunk no longer reads as jobs: "
                             f"{exc.errors()[0]['msg']}") from None

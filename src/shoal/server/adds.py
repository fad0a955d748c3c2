"""A large add in chunks: each chunk is checked and kept in the database as it arrives, and
the add is made from all of them in one commit, or from none. A request stays the size of a
chunk whatever the add's, and a failed or abandoned add leaves no job behind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

import shoal
from shoal.core.errors import InputError
from shoal.core.models import JobSpec, with_shared_empties
from shoal.server.effects import AlikeJobs
from shoal.server.service import MAX_JOBS_PER_ADD, Service
from shoal.store import json_text, key_hashes
from shoal.store.staged import STAGED_HOURS, StagedAdds

_SPECS: TypeAdapter[list[JobSpec]] = TypeAdapter(list[JobSpec])
# Which shoal checked a staged chunk: its version and the schema of a spec.
_CHECKED_BY = "{}:{}".format(shoal.__version__, hashlib.blake2b(json.dumps(
    JobSpec.model_json_schema(), sort_keys=True).encode(), digest_size=8).hexdigest())
# Every field but cmd (always staged) at its default: every spec made from these shares them.
_DEFAULTS = with_shared_empties(JobSpec(cmd="true"))


class ChunkedAdds:
    def __init__(self, service: Service):
        self.service = service
        self.staged = StagedAdds(service.store)

    def stage(self, batch: str, seq: int, specs: Sequence[JobSpec] | AlikeJobs,
              owner: str) -> int:
        """Keep one chunk (already checked as an add checks it); the jobs staged so far."""
        now = self.service.clock()
        self.staged.expire(now - STAGED_HOURS * 3600)
        self.service.check_sizes(specs)
        count = len(specs.cmds) if isinstance(specs, AlikeJobs) else len(specs)
        held = self.staged.size(batch) + count
        if held > MAX_JOBS_PER_ADD:
            self.staged.drop(batch, owner)
            raise InputError(f"more than {MAX_JOBS_PER_ADD} jobs in one add")
        self.staged.put(batch, seq, owner, json_text({"checked_by": _CHECKED_BY,
                                                      **_staged(specs, owner)}), count, now)
        return held

    async def commit(self, batch: str, *, rerun: bool, owner: str, sees_all: bool,
                     may_set_caps: bool) -> dict[str, Any]:
        """The add of every chunk, at once; the batch is gone afterwards either way."""
        texts = self.staged.chunks(batch, owner)  # NotFound here: another's is left alone
        try:
            return self.service.add_chunks(_parse_each(texts), rerun=rerun, owner=owner,
                                           sees_all=sees_all, may_set_caps=may_set_caps)
        finally:
            self.staged.drop(batch)

    def abort(self, batch: str, owner: str) -> int:
        return self.staged.drop(batch, owner)


def _staged(specs: Sequence[JobSpec] | AlikeJobs, owner: str) -> dict[str, Any]:
    """A checked chunk as it is kept: the fields each job sets (and, of alike jobs, their
    key digests, made now, while the server waits for the next chunk, not at the commit)."""
    if isinstance(specs, AlikeJobs):
        cwd = specs.spec.cwd or ""
        return {"shared": specs.spec.model_dump(mode="json", exclude_defaults=True,
                                                exclude={"cmd"}), "cmds": list(specs.cmds),
                "hashes": [] if specs.spec.gate else key_hashes(owner, specs.cmds, cwd)}
    return {"jobs": [spec.model_dump(mode="json", exclude_defaults=True) for spec in specs]}


def _parse_each(texts: Iterable[str]) -> Iterator[list[JobSpec] | AlikeJobs]:
    """The staged chunks' specs, a chunk at a time, read as they are needed. A chunk this
    shoal checked (the same version, the same spec schema) holds its own JSON of checked
    specs: each is the defaults with its fields put in (checking them again cost a tenth of
    a large add). Any other (staged before an upgrade) is checked again in full. (Each is
    read and parsed while the store's writer writes the chunk before: see StagedAdds.chunks.)"""
    for text in texts:
        yield _parsed(text)


def _parsed(text: str) -> list[JobSpec] | AlikeJobs:
    chunk = json.loads(text)
    if not isinstance(chunk, dict) or chunk.get("checked_by") != _CHECKED_BY:
        return _checked(chunk["jobs"] if isinstance(chunk, dict) else chunk)
    if "shared" in chunk:
        return AlikeJobs(_DEFAULTS.model_copy(update=chunk["shared"]), chunk["cmds"],
                         chunk["hashes"])
    return [_DEFAULTS.model_copy(update=fields) for fields in chunk["jobs"]]


def _checked(specs: Any) -> list[JobSpec]:
    try:
        return _SPECS.validate_python(specs)
    except ValidationError as exc:
        raise InputError("a staged chunk no longer reads as jobs: "
                         f"{exc.errors()[0]['msg']}") from None

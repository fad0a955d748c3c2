"""Files for ensembles, stored by content (SHA-256) under $SHOAL_HOME/blobs.

Each content is kept once, and recorded for every name that uploaded it (an empty file
`uploaders/<digest of the name>/<sha256>`), so that the server can answer a user about their own
uploads only: whether someone else has a file with a given hash is not theirs to learn.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from shoal.core.errors import InputError, NotFound, StoreUnavailable
from shoal.ensemble.digest import sha256_of_file

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def check_sha(sha256: str) -> str:
    if not SHA256_RE.fullmatch(sha256):
        raise InputError(f"{sha256!r} is not a SHA-256 in hex")
    return sha256


class BlobStore:
    def __init__(self, directory: Path):
        self.directory = directory

    def path_of(self, sha256: str) -> Path:
        return self.directory / check_sha(sha256)

    def has(self, sha256: str) -> bool:
        return self.path_of(sha256).exists()

    def _record_of(self, sha256: str, owner: str) -> Path:
        # A digest, not the name itself: any string is a safe directory name this way.
        name = hashlib.sha256(owner.encode()).hexdigest()[:32]
        return self.directory / "uploaders" / name / check_sha(sha256)

    def uploaded_by(self, sha256: str, owner: str) -> bool:
        return self.has(sha256) and self._record_of(sha256, owner).exists()

    def missing(self, shas: Iterable[str], owner: str | None = None) -> list[str]:
        """The files not stored; with `owner`, those that name has not uploaded, whoever
        else may have."""
        if owner is None:
            return [sha for sha in dict.fromkeys(shas) if not self.has(sha)]
        return [sha for sha in dict.fromkeys(shas) if not self.uploaded_by(sha, owner)]

    def _record(self, sha256: str, owner: str) -> None:
        record = self._record_of(sha256, owner)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.touch()

    def put_file(self, path: Path) -> str:
        """Store a local file (the embedded mode's upload)."""
        sha = sha256_of_file(path)
        if not self.has(sha):
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as source:
                self._store(sha, iter(lambda: source.read(CHUNK), b""))
        return sha

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes],
                         owner: str | None = None) -> int:
        """Store an upload, refusing it unless its content has the announced hash; recorded
        for `owner` once it is. A content already stored must still be sent whole: having it
        is what lets a user name it."""
        check_sha(sha256)
        self.directory.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != sha256:
                raise InputError(f"the uploaded content's SHA-256 is {digest.hexdigest()}, "
                                 f"not {sha256}")
            os.replace(temp, self.directory / sha256)
            if owner is not None:
                self._record(sha256, owner)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store a file: {exc}") from None
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return size

    def _store(self, sha256: str, chunks: Iterable[bytes]) -> None:
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temp, self.directory / sha256)

    def open_path(self, sha256: str) -> Path:
        path = self.path_of(sha256)
        if not path.exists():
            raise NotFound(f"no file with SHA-256 {sha256}")
        return path

"""What each component's files are, as the workers will lay them out: one FileEntry per file
and directory, with its mode, size and content hash. Files travel by content (sha256), so a
file shared by many components, or already on a host, is sent once or not at all.

Local paths are read here and nowhere else; nothing is sent.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shoal.core.errors import InputError
from shoal.core.protocol import FileEntry
from shoal.ensemble.digest import sha256_of_file
from shoal.ensemble.spec import Component, Ensemble, FileCopy


@dataclass(frozen=True, slots=True)
class Blob:
    """One distinct content to upload, and a local file that holds it."""

    sha256: str
    size: int
    path: Path


@dataclass
class Manifests:
    """Every component's entries, and the distinct contents they need."""

    entries: dict[str, list[FileEntry]] = field(default_factory=dict)  # by component name
    blobs: dict[str, Blob] = field(default_factory=dict)  # by sha256

    @property
    def total_bytes(self) -> int:
        return sum(blob.size for blob in self.blobs.values())


class ContentHasher:
    """sha256 of local files, each read once however many components copy it."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: Path, status: os.stat_result) -> str:
        key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_of_file(path)
        return self._known[key]


def build_manifests(ensemble: Ensemble, root: Path, *, hash_contents: bool = True) -> Manifests:
    """The entries of every component; relative local paths are under `root` (the directory of
    the ensemble's file). Without `hash_contents` (a dry run) entries carry no sha256 and no
    blobs are listed. A missing or unreadable local path is an InputError naming it."""
    manifests = Manifests()
    hasher = ContentHasher() if hash_contents else None
    for component in ensemble.components:
        manifests.entries[component.name] = component_entries(
            component, root, hasher, manifests.blobs)
    return manifests


def component_entries(component: Component, root: Path, hasher: ContentHasher | None,
                      blobs: dict[str, Blob]) -> list[FileEntry]:
    by_path: dict[str, FileEntry] = {}
    for copy in component.files:
        for entry, local in copy_entries(copy, root, component.name, hasher):
            earlier = by_path.get(entry.path)
            if earlier is not None and earlier != entry:
                raise InputError(f"component {component.name}: two different files for "
                                 f"{entry.path!r}")
            by_path[entry.path] = entry
            if entry.sha256 is not None and entry.sha256 not in blobs:
                blobs[entry.sha256] = Blob(entry.sha256, entry.size, local)
    return list(by_path.values())


def copy_entries(copy: FileCopy, root: Path, component: str,
                 hasher: ContentHasher | None) -> Iterator[tuple[FileEntry, Path]]:
    """The entries of one FileCopy, parents before their contents; each with its local path.

    A file whose remote path ends in '/' goes into that directory under its own name, as cp
    does; a directory is mirrored at the remote path.
    """
    local = root / Path(copy.local).expanduser()
    status = _stat(local, component)
    remote = copy.remote
    if stat.S_ISREG(status.st_mode) and remote.endswith("/"):
        remote = posixpath.join(remote, local.name)
    remote = posixpath.normpath(remote)
    yield from _walk(local, status, remote, component, hasher, set())


def _walk(local: Path, status: os.stat_result, remote: str, component: str,
          hasher: ContentHasher | None,
          visiting: set[tuple[int, int]]) -> Iterator[tuple[FileEntry, Path]]:
    mode = stat.S_IMODE(status.st_mode)
    if stat.S_ISREG(status.st_mode):
        sha256 = None
        if hasher is not None:
            try:
                sha256 = hasher.sha256(local, status)
            except OSError as exc:
                raise _unreadable(local, component, exc) from None
        yield FileEntry(path=remote, kind="file", mode=mode, size=status.st_size,
                        sha256=sha256), local
        return
    if not stat.S_ISDIR(status.st_mode):
        raise InputError(f"component {component}: {local}: not a file or a directory")
    identity = (status.st_dev, status.st_ino)
    if identity in visiting:  # a symbolic link back up the tree
        raise InputError(f"component {component}: {local}: a link loops back to a directory "
                         "that contains it")
    yield FileEntry(path=remote, kind="dir", mode=mode), local
    try:
        names = sorted(os.listdir(local))
    except OSError as exc:
        raise _unreadable(local, component, exc) from None
    for name in names:
        child = local / name
        yield from _walk(child, _stat(child, component), posixpath.join(remote, name),
                         component, hasher, visiting | {identity})


def _stat(local: Path, component: str) -> os.stat_result:
    try:
        return local.stat()  # follows links: what a link points to is what is copied
    except FileNotFoundError:
        raise InputError(f"component {component}: {local}: no such file or directory") from None
    except OSError as exc:
        raise _unreadable(local, component, exc) from None


def _unreadable(local: Path, component: str, exc: OSError) -> InputError:
    return InputError(f"component {component}: {local}: cannot read: {exc.strerror or exc}")


def without_files(ensemble: Ensemble) -> Ensemble:
    """The ensemble as the server takes it: files travel as manifests, beside it."""
    components = [component.model_copy(update={"files": []})
                  for component in ensemble.components]
    return ensemble.model_copy(update={"components": components})


def summarize_copy(entries: list[FileEntry]) -> tuple[int, int]:
    """(files, bytes) of the entries of one copy."""
    files = [entry for entry in entries if entry.kind == "file"]
    return len(files), sum(entry.size for entry in files)

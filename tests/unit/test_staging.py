"""Staging an ensemble component's files: copy what changed, skip what is there, keep modes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.core.protocol import FileEntry
from shoal.worker.staging import StagingError, StagingReport, stage_files


class Blobs:
    """A fetch_blob that serves content from memory and counts what it was asked for."""

    def __init__(self, *contents: bytes) -> None:
        self.by_sha = {hashlib.sha256(c).hexdigest(): c for c in contents}
        self.fetched: list[str] = []
        self.fail_with: Exception | None = None

    async def __call__(self, sha256: str, destination: Path) -> None:
        self.fetched.append(sha256)
        if self.fail_with is not None:
            destination.write_bytes(b"half")  # as a broken transfer would leave it
            raise self.fail_with
        destination.write_bytes(self.by_sha[sha256])


def entry(path: str | Path, content: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(path=str(path), mode=mode, size=len(content),
                     sha256=hashlib.sha256(content).hexdigest())


def stage(entries: list[FileEntry], base: Path, blobs: Blobs | None,
          always_copy: bool = False) -> StagingReport:
    return asyncio.run(stage_files(entries, base, blobs, always_copy=always_copy))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_copies_files_with_their_modes(tmp_path: Path) -> None:
    base, elsewhere = tmp_path / "base", tmp_path / "elsewhere"
    base.mkdir()
    blobs = Blobs(b"#!/bin/sh\necho hi\n", b"secret", b"config")
    entries = [
        entry("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        entry("keys/secret", b"secret", 0o600),
        entry(elsewhere / "app.conf", b"config"),  # absolute: as given
    ]
    report = stage(entries, base, blobs)
    assert (report.copied_files, report.copied_bytes, report.skipped_files) == (3, 30, 0)
    assert (base / "bin/run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert mode_of(base / "bin/run.sh") == 0o755
    assert mode_of(base / "keys/secret") == 0o600
    assert (elsewhere / "app.conf").read_bytes() == b"config"
    assert sorted(p.name for p in (base / "bin").iterdir()) == ["run.sh"]  # no temporary left


def test_unchanged_files_are_skipped_by_size_and_hash(tmp_path: Path) -> None:
    blobs = Blobs(b"one", b"two", b"TWO")
    first = [entry("a", b"one"), entry("b", b"two")]
    stage(first, tmp_path, blobs)
    assert len(blobs.fetched) == 2

    again = stage(first, tmp_path, blobs)
    assert (again.copied_files, again.skipped_files) == (0, 2)
    assert len(blobs.fetched) == 2

    changed = stage([entry("a", b"one"), entry("b", b"TWO")], tmp_path, blobs)  # same size
    assert (changed.copied_files, changed.skipped_files) == (1, 1)
    assert (tmp_path / "b").read_bytes() == b"TWO"
    assert blobs.fetched[-1] == hashlib.sha256(b"TWO").hexdigest()


def test_always_copy_copies_again(tmp_path: Path) -> None:
    blobs = Blobs(b"data")
    stage([entry("f", b"data")], tmp_path, blobs)
    report = stage([entry("f", b"data")], tmp_path, blobs, always_copy=True)
    assert (report.copied_files, report.skipped_files) == (1, 0)
    assert len(blobs.fetched) == 2


def test_a_skipped_file_still_gets_its_mode(tmp_path: Path) -> None:
    blobs = Blobs(b"tool")
    stage([entry("tool", b"tool", 0o644)], tmp_path, blobs)
    report = stage([entry("tool", b"tool", 0o750)], tmp_path, blobs)
    assert report.skipped_files == 1
    assert mode_of(tmp_path / "tool") == 0o750


def test_directories_are_created_with_their_mode(tmp_path: Path) -> None:
    entries = [FileEntry(path="out/logs", kind="dir", mode=0o700),
               FileEntry(path="shared", kind="dir", mode=0o777)]
    report = stage(entries, tmp_path, None)
    assert report == StagingReport()
    assert mode_of(tmp_path / "out/logs") == 0o700
    assert mode_of(tmp_path / "shared") == 0o777  # not trimmed by the umask
    stage(entries, tmp_path, None)  # already there: fine


def test_an_empty_file_needs_no_fetch(tmp_path: Path) -> None:
    report = stage([FileEntry(path="empty", size=0)], tmp_path, None)
    assert report.copied_files == 1
    assert (tmp_path / "empty").read_bytes() == b""


def test_a_failed_fetch_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"old")
    blobs = Blobs(b"new content")
    blobs.fail_with = ConnectionError("connection reset")
    with pytest.raises(StagingError) as caught:
        stage([entry("model.bin", b"new content")], tmp_path, blobs)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'model.bin'}: ")
    assert "connection reset" in message
    assert (tmp_path / "model.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # the partial file is gone


def test_content_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    blobs = Blobs(b"short")
    wrong = FileEntry(path="f", size=99, sha256=hashlib.sha256(b"short").hexdigest())
    with pytest.raises(StagingError, match="fetched 5 bytes, expected 99"):
        stage([wrong], tmp_path, blobs)
    assert not (tmp_path / "f").exists()


def test_no_fetcher_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="no way to fetch"):
        stage([entry("f", b"x")], tmp_path, None)


def test_a_file_in_the_way_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(StagingError) as caught:
        stage([FileEntry(path="data", kind="dir")], tmp_path, None)
    assert str(caught.value) == f"{tmp_path / 'data'}: File exists"


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """A directory nobody may write in: by its mode, or for root (whom modes do not stop) by
    a read-only file system mounted on it. Yields the error the kernel will give."""
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield "Permission denied"
        finally:
            directory.chmod(0o700)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
                   check=True)
    try:
        yield "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_an_unwritable_destination_names_the_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    with unwritable(locked) as error, pytest.raises(StagingError) as caught:
        stage([entry("locked/f", b"x")], tmp_path, Blobs(b"x"))
    assert str(caught.value) == f"{locked / 'f'}: {error}"


def test_a_file_in_the_way_of_a_parent_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").write_text("a file, not a directory")
    with pytest.raises(StagingError) as caught:
        stage([entry("conf/app.toml", b"x")], tmp_path, Blobs(b"x"))
    assert str(caught.value) == (
        f"{tmp_path / 'conf/app.toml'}: cannot create its directory {tmp_path / 'conf'}: "
        "File exists")

"""Manifests: the entries each component's files become, read from a real temporary tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from shoal.core.errors import InputError
from shoal.ensemble.manifest import build_manifests, without_files
from shoal.ensemble.spec import Component, Ensemble, FileCopy


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensemble_of(*components: Component) -> Ensemble:
    return Ensemble(name="e", components=list(components))


def component(name: str, *copies: tuple[str, str]) -> Component:
    return Component(name=name, host="h1", command="true",
                     files=[FileCopy(local=local, remote=remote) for local, remote in copies])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """run.sh (755); data/ (750) holding a.txt (600), sub/b.bin (644) and an empty dir."""
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "run.sh").chmod(0o755)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "empty").mkdir()
    (data / "a.txt").write_bytes(b"alpha")
    (data / "a.txt").chmod(0o600)
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 5000)  # more than one hash chunk
    (data / "sub" / "b.bin").chmod(0o644)
    data.chmod(0o750)
    return tmp_path


def test_a_file_becomes_one_entry_with_its_mode_size_and_hash(tree: Path) -> None:
    manifests = build_manifests(ensemble_of(component("c", ("run.sh", "bin/go.sh"))), tree)
    (entry,) = manifests.entries["c"]
    content = (tree / "run.sh").read_bytes()
    assert entry.path == "bin/go.sh"
    assert entry.kind == "file"
    assert entry.mode == 0o755
    assert entry.size == len(content)
    assert entry.sha256 == sha256(content)
    assert manifests.blobs[entry.sha256].path == tree / "run.sh"
    assert manifests.total_bytes == len(content)


def test_a_directory_is_mirrored_parents_first(tree: Path) -> None:
    manifests = build_manifests(ensemble_of(component("c", (str(tree / "data"), "/srv/in"))),
                                Path("/elsewhere"))  # an absolute local path ignores the root
    entries = {entry.path: entry for entry in manifests.entries["c"]}
    assert list(entries) == ["/srv/in", "/srv/in/a.txt", "/srv/in/empty", "/srv/in/sub",
                             "/srv/in/sub/b.bin"]
    assert [entries[p].kind for p in entries] == ["dir", "file", "dir", "dir", "file"]
    assert entries["/srv/in"].mode == 0o750
    assert entries["/srv/in/a.txt"].mode == 0o600
    big = (tree / "data" / "sub" / "b.bin").read_bytes()
    assert entries["/srv/in/sub/b.bin"].size == len(big)
    assert entries["/srv/in/sub/b.bin"].sha256 == sha256(big)
    assert entries["/srv/in/empty"].sha256 is None
    assert manifests.total_bytes == len(big) + len(b"alpha")


def test_a_content_shared_by_components_is_one_blob(tree: Path) -> None:
    (tree / "copy.sh").write_bytes((tree / "run.sh").read_bytes())
    manifests = build_manifests(ensemble_of(
        component("a", ("run.sh", "run.sh")),
        component("b", ("copy.sh", "tools/run.sh"), ("run.sh", "again.sh")),
    ), tree)
    assert len(manifests.blobs) == 1
    assert [e.path for e in manifests.entries["b"]] == ["tools/run.sh", "again.sh"]


def test_a_file_sent_to_a_directory_path_keeps_its_name(tree: Path) -> None:
    manifests = build_manifests(ensemble_of(component("c", ("run.sh", "bin/"))), tree)
    assert [e.path for e in manifests.entries["c"]] == ["bin/run.sh"]


def test_a_missing_local_path_names_the_file_and_the_component(tree: Path) -> None:
    with pytest.raises(InputError) as caught:
        build_manifests(ensemble_of(component("loader-2", ("nope.bin", "x"))), tree)
    assert str(caught.value) == (f"component loader-2: {tree / 'nope.bin'}: "
                                 "no such file or directory")


def test_two_different_files_for_one_remote_path_are_refused(tree: Path) -> None:
    with pytest.raises(InputError, match="component c: two different files for 'x'"):
        build_manifests(ensemble_of(component("c", ("run.sh", "x"), ("data/a.txt", "x"))), tree)


def test_a_link_looping_back_up_the_tree_is_refused(tree: Path) -> None:
    os.symlink(tree / "data", tree / "data" / "sub" / "loop")
    with pytest.raises(InputError, match="loops back"):
        build_manifests(ensemble_of(component("c", ("data", "d"))), tree)


def test_a_dry_run_reads_sizes_but_hashes_nothing(tree: Path) -> None:
    manifests = build_manifests(ensemble_of(component("c", ("data", "d"))), tree,
                                hash_contents=False)
    assert all(entry.sha256 is None for entry in manifests.entries["c"])
    assert manifests.blobs == {}
    assert sum(e.size for e in manifests.entries["c"]) == 5 + 256 * 5000


def test_the_server_gets_the_ensemble_without_its_files(tree: Path) -> None:
    ensemble = ensemble_of(component("c", ("run.sh", "x")))
    stripped = without_files(ensemble)
    assert stripped.components[0].files == []
    assert ensemble.components[0].files  # the original is untouched


def test_a_toml_file_sent_to_a_directory_path_keeps_its_name(tree: Path) -> None:
    """The loaders tidy remote paths but keep the trailing '/' that means 'into'."""
    from shoal.ensemble.loaders import load_ensembles

    (tree / "e.toml").write_text('name = "e"\n[[component]]\nname = "c"\nhost = "h1"\n'
                                 'command = "./bin/run.sh"\nfiles = { "run.sh" = "./bin//" }\n')
    [ensemble] = load_ensembles(tree / "e.toml")
    manifests = build_manifests(ensemble, tree)
    assert [e.path for e in manifests.entries["c"]] == ["bin/run.sh"]

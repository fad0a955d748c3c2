"""Host strings for `shoal up`, the wheel tags a bootstrap asks for, and how `shoal worker
--count` shares a host."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.worker_count import Share, gpus_argument, shares
from shoal.core.errors import InputError
from shoal.provision.bootstrap import Target
from shoal.provision.hosts import SshHost, parse_host, read_hosts_file, unique_hosts


@pytest.mark.parametrize(("text", "host"), [
    ("node1", SshHost("node1")),
    ("ssh://node1", SshHost("node1")),
    ("alice@node1", SshHost("node1", "alice")),
    ("ssh://alice@10.0.0.2:2222", SshHost("10.0.0.2", "alice", 2222)),
    ("[::1]:22", SshHost("::1", None, 22)),
    ("ssh://bob@[fe80::1]", SshHost("fe80::1", "bob")),
    ("ssh://node1/", SshHost("node1")),
])
def test_hosts_parse(text: str, host: SshHost) -> None:
    assert parse_host(text) == host
    assert parse_host(str(host)) == host


@pytest.mark.parametrize("text", ["", "ssh://", "a@", "host:0", "host:65536", "host:x",
                                  "::1", "bad name", "a;b@host", "[zz]:22", "host:²"])
def test_bad_hosts_are_named(text: str) -> None:
    with pytest.raises(InputError, match="host "):
        parse_host(text)


def test_worker_names_are_worker_name_characters() -> None:
    assert SshHost("10.0.0.2", "alice", 2222).worker_name == "alice@10.0.0.2_2222"
    assert SshHost("::1").worker_name == "_::1_".replace(":", "_")


def test_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("# the rack\nnode1\n\nalice@node2:2200  # the odd one\n")
    assert read_hosts_file(path) == [SshHost("node1"), SshHost("node2", "alice", 2200)]
    path.write_text("node1\nno good\n")
    with pytest.raises(InputError, match=r"hosts:2: host 'no good'"):
        read_hosts_file(path)
    with pytest.raises(InputError, match="given twice"):
        unique_hosts([SshHost("a"), SshHost("a")])


def test_platform_tags_follow_glibc() -> None:
    target = Target("/usr/bin/python3", (3, 11, 2), "linux-x86_64", ("glibc", "2.36"))
    tags = target.platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and tags[-1] == "linux_x86_64"
    assert target.abi == "cp311" and target.key == "cp311-linux-x86_64-glibc2.36"
    arm = Target("python3", (3, 12, 0), "linux-aarch64", ("glibc", "2.31"))
    assert "manylinux1_aarch64" not in arm.platform_tags()


def test_count_shares_what_is_not_given() -> None:
    assert shares(3, 8, 900, ["0", "1"], True, True, True) == [
        Share(3, 300, ["0"]), Share(3, 300, ["1"]), Share(2, 300, [])]
    assert shares(2, 4, 100, ["0"], False, False, False) == [
        Share(4, 100, ["0"]), Share(4, 100, ["0"])]
    assert shares(4, 2, 100, [], True, True, True)[3].cores == 1  # at least one each
    assert gpus_argument([]) == "0" and gpus_argument(["3"]) == "3,"

"""A large add goes in chunks, each kept by the server, and is committed whole or not at all."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shoal import client as client_module
from shoal.client import Client
from shoal.core.errors import InputError

from .cluster import Cluster


def admin(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Client:
    """The admin's client, finding and trusting the server through its home."""
    monkeypatch.setenv("SHOAL_HOME", str(cluster.home))
    for name in ("SHOAL_SERVER", "SHOAL_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return Client()


def total_jobs(cluster: Cluster) -> int:
    return int(cluster.api("GET", "/server")["jobs"])


def test_an_add_in_chunks_is_one_add(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "ADD_CHUNK", 40)
    cluster.api("PUT", "/limits/hold", json={"cap": 0})
    sent: list[int] = []
    specs = ({"cmd": f"echo {i}", "cwd": "/", "limits": ["hold"]} for i in range(130))
    with admin(cluster, monkeypatch) as client:
        result = client.add(specs, progress=sent.append)
    assert sent == [40, 80, 120, 130]
    assert (result.added, len(result.ids), len(set(result.ids))) == (130, 130, 130)
    assert total_jobs(cluster) == 130
    with admin(cluster, monkeypatch) as client:  # the same again: every one already there
        again = client.add({"cmd": f"echo {i}", "cwd": "/", "limits": ["hold"]}
                           for i in range(130))
    assert (again.added, again.existed, again.ids) == (0, 130, result.ids)


def test_a_chunk_refused_or_a_bad_spec_later_leaves_nothing(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "ADD_CHUNK", 25)
    huge = "x" * 65_000
    specs = [{"cmd": f"echo {i}", "cwd": "/"} for i in range(60)]
    specs[55]["env"] = {f"V{n}": huge for n in range(140)}  # too large for any worker
    with admin(cluster, monkeypatch) as client, \
            pytest.raises(InputError, match=r"jobs\[55\]\.env: the environment is larger"):
        client.add(specs)
    assert total_jobs(cluster) == 0

    def then_a_bad_one() -> object:
        for i in range(60):
            yield {"cmd": f"echo {i}", "cwd": "/"}
        raise InputError("jobs.txt:61: something wrong")

    with admin(cluster, monkeypatch) as client, pytest.raises(InputError, match=r"jobs\.txt:61"):
        client.add(then_a_bad_one())  # type: ignore[arg-type]
    assert total_jobs(cluster) == 0


def test_a_batch_is_its_senders_alone(cluster: Cluster) -> None:
    alice = cluster.api("POST", "/tokens", json={"role": "user", "name": "alice"})["token"]
    bob = cluster.api("POST", "/tokens", json={"role": "user", "name": "bob"})["token"]
    batch = "ab" * 16

    def post(token: str, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{cluster.url}/api/v1{path}", json=body, verify=cluster.tls,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)

    staged = post(alice, f"/adds/{batch}", {"seq": 0, "jobs": [{"cmd": "true", "cwd": "/"}]})
    assert staged.status_code == 200 and staged.json() == {"staged": 1}
    assert post(bob, f"/adds/{batch}", {"seq": 1, "jobs": [
        {"cmd": "rm -rf /tmp/x", "cwd": "/"}]}).status_code == 404
    assert post(bob, f"/adds/{batch}/commit", {}).status_code == 404
    again = post(alice, f"/adds/{batch}", {"seq": 0, "jobs": [{"cmd": "true", "cwd": "/"}]})
    assert again.status_code == 409
    done = post(alice, f"/adds/{batch}/commit", {})
    assert done.status_code == 201 and done.json()["added"] == 1
    assert post(alice, f"/adds/{batch}/commit", {}).status_code == 404  # gone once committed


def test_the_cli_adds_a_file_larger_than_a_chunk(cluster: Cluster) -> None:
    cluster.api("PUT", "/limits/hold", json={"cap": 0})
    lines = "".join(f"echo {i}\n" for i in range(client_module.ADD_CHUNK + 5))
    added = cluster.cli("add", "-f", "-", "--limit", "hold", input=lines, timeout=600)
    assert added.returncode == 0, added.stderr
    assert f"added {client_module.ADD_CHUNK + 5}, 0 already existed" in added.stdout
    assert total_jobs(cluster) == client_module.ADD_CHUNK + 5


def test_jobs_given_as_shared_fields_and_commands_each_get_the_fields(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """shoal.CommandOf through the Python client, and a file of plain commands through the
    CLI (sent as its commands), in several chunks: every job has the fields and its own
    command, and a blank or comment line makes none."""
    import shoal

    monkeypatch.setattr(client_module, "ADD_CHUNK", 40)
    cluster.api("PUT", "/limits/hold", json={"cap": 0})
    fields = {"cwd": "/srv", "group": "night", "priority": 7, "limits": ["hold"]}
    with admin(cluster, monkeypatch) as client:
        result = client.add(shoal.CommandOf(fields, f"echo {i}") for i in range(90))
    assert result.added == 90
    jobs_file = tmp_path / "jobs.txt"
    jobs_file.write_text("# made by hand\n" + "".join(
        f"  gzip part{i}\n\n" for i in range(client_module.ADD_CHUNK + 5)))
    added = cluster.cli("add", "-f", str(jobs_file), "--group", "zip", "--cwd", "/data",
                        "--limit", "hold", timeout=600)
    assert added.returncode == 0, added.stderr
    jobs = {job["cmd"]: job for job in cluster.api(
        "GET", "/jobs", params={"limit": 100_000})["jobs"]}
    assert len(jobs) == 90 + client_module.ADD_CHUNK + 5
    for i in range(90):
        job = jobs[f"echo {i}"]
        assert (job["cwd"], job["group"], job["priority"]) == ("/srv", "night", 7)
    for i in range(client_module.ADD_CHUNK + 5):
        job = jobs[f"gzip part{i}"]
        assert (job["cwd"], job["group"], job["priority"]) == ("/data", "zip", 0)


def test_the_cli_reads_a_file_as_it_sends_it_and_a_late_bad_line_adds_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    """The file is parsed chunk by chunk: a bad line after the first chunk has gone is still
    one line naming the file and the line, exit 2, and no job is added."""
    jobs_file = tmp_path / "jobs.wr"
    bad_line = client_module.ADD_CHUNK + 3
    lines = [f"echo {i}" for i in range(client_module.ADD_CHUNK + 10)]
    lines[bad_line - 1] = 'echo bad\t{"priority": "high"}'
    jobs_file.write_text("\n".join(lines) + "\n")
    added = cluster.cli("add", "-f", str(jobs_file), "--format", "wr", timeout=600)
    assert added.returncode == 2, added.stderr
    assert added.stderr.strip().splitlines() == [
        line for line in added.stderr.strip().splitlines() if f"{jobs_file}:{bad_line}:" in line]
    assert "Traceback" not in added.stderr
    assert total_jobs(cluster) == 0


@pytest.mark.parametrize("options, reason", [
    ('{"cwd": "relative"}', "cwd: must be an absolute path"),
    ('{"deps": ["nowhere"]}', "group:nowhere has no jobs"),
])
def test_a_line_the_server_refuses_is_named_by_the_file_and_line(
        cluster: Cluster, tmp_path: Path, options: str, reason: str) -> None:
    """What only the server can judge (a relative cwd, a wait for a group with no jobs),
    in a line after the first chunk: still the file's line, exit 2, and nothing added."""
    jobs_file = tmp_path / "jobs.wr"
    bad_line = client_module.ADD_CHUNK + 3
    lines = [f"echo {i}" for i in range(client_module.ADD_CHUNK + 10)]
    lines[bad_line - 1] = f"echo bad\t{options}"
    jobs_file.write_text("\n".join(lines) + "\n")
    added = cluster.cli("add", "-f", str(jobs_file), "--format", "wr", timeout=600)
    assert added.returncode == 2, added.stderr
    assert added.stderr.strip() == f"shoal: {jobs_file}:{bad_line}: {reason}"
    assert total_jobs(cluster) == 0


def test_a_chunk_of_jobs_alike_but_for_their_commands_is_their_fields_and_commands(
        cluster: Cluster) -> None:
    batch = "cd" * 16

    def post(path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{cluster.url}/api/v1{path}", json=body, verify=cluster.tls,
                          headers={"Authorization": f"Bearer {cluster.connection['admin_token']}"},
                          timeout=30)

    shared = {"cwd": "/srv", "group": "night", "priority": 7, "env": {"K": "v"}}
    for body, message in [
        ({"jobs": [{"cmd": "a", "cwd": "/"}], "shared": shared, "cmds": ["b"]},
         "give jobs, or shared and cmds"),
        ({"shared": shared, "cmds": []}, "give jobs, or shared and cmds"),
        ({"shared": {**shared, "cmd": "c"}, "cmds": ["b"]}, "shared: holds no cmd"),
        ({"shared": {**shared, "group": "a b"}, "cmds": ["b"]}, "shared.group: group names"),
        ({"shared": shared, "cmds": ["ok", " "]}, "cmds[1]: command is empty"),
    ]:
        refused = post(f"/adds/{batch}", {"seq": 0, **body})
        assert refused.status_code == 400, body
        assert message in refused.json()["error"]["message"], refused.json()
    assert post(f"/adds/{batch}", {"seq": 0, "shared": shared,
                                   "cmds": ["echo 1", "echo 2"]}).json() == {"staged": 2}
    assert post(f"/adds/{batch}", {"seq": 1, "jobs": [{"cmd": "echo 3", "cwd": "/"}]}
                ).json() == {"staged": 3}
    done = post(f"/adds/{batch}/commit", {})
    assert done.status_code == 201 and done.json()["added"] == 3
    jobs = {job["cmd"]: job for job in cluster.api("GET", "/jobs")["jobs"]}
    for cmd in ("echo 1", "echo 2"):
        assert (jobs[cmd]["cwd"], jobs[cmd]["group"], jobs[cmd]["priority"],
                jobs[cmd]["env"]) == ("/srv", "night", 7, ["K"])
    assert (jobs["echo 3"]["cwd"], jobs["echo 3"]["group"]) == ("/", "default")


def test_a_bad_command_is_named_by_its_place_in_the_whole_add(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "ADD_CHUNK", 10)
    specs = [{"cmd": f"echo {i}", "cwd": "/"} for i in range(30)]
    specs[23]["cmd"] = "echo \0"
    with admin(cluster, monkeypatch) as client, \
            pytest.raises(InputError, match=r"cmds\[23\]: command contains a NUL byte"):
        client.add(specs)
    assert total_jobs(cluster) == 0

"""`shoal ensemble run` without real workers: the dry-run plan, usage errors, and a run followed
against a server that answers scripted snapshots (the real thing is in the integration tests)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.ensemble_output import RunWatcher
from shoal.cli.main import main
from shoal.ensemble.driver import Silent, upload_missing
from shoal.ensemble.manifest import build_manifests
from shoal.ensemble.spec import Component, Ensemble, FileCopy

from .test_client_errors import FakeServer, fake_server, isolated_home

__all__ = ["fake_server", "isolated_home"]  # fixtures used here

SAMPLE = """\
name = "web-bench"
timeout = "5m"
run_timeout = "10m"

[stages]
1 = "started"

[[component]]
name = "server"
host = "h1"
command = "./server --port 8080"
files = { "server.sh" = "bin/server.sh", "data" = "data" }
env = { SECRET = "hunter2" }

[[component]]
name = "client"
host = ["h2", "h3"]
executable = "./load"
args = ["-c", 10]
stage = 1
timeout = "90s"

[[component]]
name = "monitor"
host = "h1"
command = "vmstat 1"
wait = false
"""


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server.sh").write_text("#!/bin/sh\nexec sleep 60\n")
    (tmp_path / "server.sh").chmod(0o755)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.csv").write_text("x" * 2048)
    (tmp_path / "data" / "sub" / "b.csv").write_text("y" * 1024)
    path = tmp_path / "bench.toml"
    path.write_text(SAMPLE)
    return path


# ---- the plan --------------------------------------------------------------------------


def test_a_dry_run_prints_the_plan_and_touches_nothing(
        sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(os.listdir(sample.parent))
    assert main(["--server", "http://127.0.0.1:9", "ensemble", "run", str(sample),
                 "--dry-run"]) == 0
    out, err = capsys.readouterr()
    root = sample.parent
    assert out == f"""\
ensemble web-bench: 4 components on 3 hosts, start synchronized
  must succeed: every waited-for component (3); run timeout 10m00s
  stage 0: first
    server on h1: timeout 5m00s, waited for
      $ ./server --port 8080
      in a fresh directory on its host (mktemp -d), its files in it
      env SECRET
      file {root}/server.sh -> bin/server.sh (24 B, mode 755)
      dir {root}/data -> data (2 files, 3.0 KiB)
    monitor on h1: timeout 5m00s, service, killed when the run ends
      $ vmstat 1
      in a fresh directory on its host (mktemp -d), its files in it
  stage 1: once stage 0 has started
    client@h2 on h2: timeout 1m30s, waited for
      $ ./load -c 10
      in a fresh directory on its host (mktemp -d), its files in it
    client@h3 on h3: timeout 1m30s, waited for
      $ ./load -c 10
      in a fresh directory on its host (mktemp -d), its files in it
"""
    assert err == "dry run: nothing was started\n"
    assert sorted(os.listdir(sample.parent)) == before  # no .shoal/, no shoal-runs/


def test_a_dry_run_as_json_hides_environment_values(
        sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ensemble", "run", str(sample), "--dry-run", "--json", "--sequential"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    server = plan["ensemble"]["components"][0]
    assert server["env"] == {"SECRET": "(hidden)"}
    assert [e["path"] for e in plan["manifests"]["server"]] == [
        "bin/server.sh", "data", "data/a.csv", "data/sub", "data/sub/b.csv"]
    assert plan["manifests"]["client@h2"] == []


def test_timeout_overrides_the_files_run_timeout_in_the_plan(
        sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ensemble", "run", str(sample), "--dry-run", "--timeout", "90s"]) == 0
    assert "run timeout 1m30s" in capsys.readouterr().out


# ---- usage errors: exit 2, one line ------------------------------------------------------


@pytest.mark.parametrize(("arguments", "message"), [
    (["ensemble", "run"], "no ensemble file: give FILE (or -c FILE)"),
    (["ensemble", "run", "{sample}", "--bogus"], "No such option: --bogus"),
    (["ensemble", "run", "{sample}", "--timeout", "soon"], "--timeout: not a duration: 'soon'"),
    (["ensemble", "run", "{sample}", "--timeout", "0"], "--timeout: must be more than 0"),
    (["ensemble", "run", "{sample}", "--attach", "nobody"],
     "--attach: no component is named 'nobody' (components: server, client@h2, client@h3, "
     "monitor)"),
    (["ensemble", "run", "{missing}"], "missing.toml"),
    (["ensemble", "run", "{sample}", "--muddler", "{sample}", "--dry-run"], "--muddler"),
    (["ensemble", "frobnicate"], "No such command 'frobnicate'"),
])
def test_bad_usage_is_one_line_and_exit_2(
        sample: Path, capsys: pytest.CaptureFixture[str], arguments: list[str],
        message: str) -> None:
    filled = [a.format(sample=sample, missing=sample.parent / "missing.toml") for a in arguments]
    assert main(filled) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("shoal: ")
    assert message.lower() in err.lower()


def test_a_local_file_gone_since_loading_is_exit_2_before_anything_starts(
        sample: Path, capsys: pytest.CaptureFixture[str], fake_server: FakeServer) -> None:
    # The loader sees something there; reading it fails, for root too: a socket in its place.
    script = sample.parent / "server.sh"
    script.unlink()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(script))
    try:
        assert main(["--server", fake_server.url, "ensemble", "run", str(sample)]) == 2
    finally:
        listener.close()
    assert "component server:" in capsys.readouterr().err
    assert fake_server.requests == []


def test_shoal_ensemble_alone_prints_help_and_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ensemble"]) == 2
    assert "run" in capsys.readouterr().out


# ---- a run, against scripted snapshots ---------------------------------------------------


def snapshot(state: str, version: int, *components: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": 7, "name": "pair", "state": state, "version": version, "stage": 0,
            "started_at": 1_700_000_000.0, "ended_at": 1_700_000_002.5 if state == "done" else None,
            "components": list(components),
            "stages": [{"stage": 0, "release_at": 1_700_000_000.25, "spread_seconds": 0.0004}],
            "log": [{"at": 1_700_000_000.0, "message": "run 7 started"},
                    {"at": 1_700_000_002.5, "message": f"run 7 {state}"}]}


def component_state(name: str, state: str, job_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"name": name, "host": f"host-{name}", "worker": "w", "job_id": job_id, "stage": 0,
            "wait": True, "state": state, "exit_code": None, "ready_at": None,
            "started_at": None, "start_skew_seconds": None, "ended_at": None,
            "duration_seconds": None, "copied_files": 0, "skipped_files": 0,
            "copied_bytes": 0, "fail_reason": None, **fields}


PAIR = """\
name = "pair"
[[component]]
name = "a"
host = "host-a"
command = "echo a"
files = { "in.txt" = "in.txt" }
[[component]]
name = "b"
host = "host-b"
command = "exit 3"
"""


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("input\n")
    (tmp_path / "pair.toml").write_text(PAIR)
    return tmp_path / "pair.toml"


def script_run(server: FakeServer, final_state: str, b_exit: int) -> None:
    finished = {"exit_code": 0, "started_at": 1_700_000_000.2504,
                "start_skew_seconds": 0.0004, "duration_seconds": 1.5}
    server.reply("POST", "/blobs/missing", 200, {"missing": []})
    server.reply("POST", "/ensembles", 201, snapshot(
        "preparing", 1, component_state("a", "preparing", 11),
        component_state("b", "pending", 12)))
    server.reply("GET", "/ensembles/7", 200, snapshot(
        "running", 2, component_state("a", "running", 11, start_skew_seconds=0.0004),
        component_state("b", "running", 12)))
    b_state = "done" if b_exit == 0 else "failed"
    server.reply("GET", "/ensembles/7", 200, snapshot(
        final_state, 3, component_state("a", "done", 11, **finished),
        component_state("b", b_state, 12, **{**finished, "exit_code": b_exit,
                                            "fail_reason": f"exit code {b_exit}"})))
    server.reply("GET", "/jobs/11/logs", 200, {"job_id": 11, "stream": "stdout", "state": "done",
                                               "head": "a\n", "tail": "a\n", "total_bytes": 2})
    server.reply("GET", "/jobs/12/logs", 200, {
        "job_id": 12, "stream": "stdout", "state": "failed", "head": "first\n",
        "tail": "last\n", "total_bytes": 1000})


def test_a_run_is_followed_and_its_results_kept(
        pair: Path, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    script_run(fake_server, "done", 0)
    log_dir = pair.parent / "out"
    code = main(["--server", fake_server.url, "--token", "t", "ensemble", "run", str(pair),
                 "--log-dir", str(log_dir), "--no-kill", "-v"])
    out, err = capsys.readouterr()
    assert code == 0, err
    start = next(r for r in fake_server.requests if r.path == "/api/v1/ensembles")
    assert start.body["no_kill"] is True and start.body["start"] == "synchronized"
    assert all(c["files"] == [] for c in start.body["ensemble"]["components"])
    (entry,) = start.body["manifests"]["a"]
    assert entry["path"] == "in.txt"
    assert entry["sha256"] == hashlib.sha256(b"input\n").hexdigest()
    missing = next(r for r in fake_server.requests if r.path == "/api/v1/blobs/missing")
    assert missing.body == {"sha256": [entry["sha256"]]}
    assert "a (host-a): running (skew 0.400ms)" in err
    assert "run 7 pair: done" in err
    assert out.startswith("ensemble pair: done in 2.5s\nCOMPONENT")
    assert "stage 0: released" in out and "start spread 0.400ms" in out
    assert f"output in {log_dir}" in out
    assert (log_dir / "a.stdout").read_text() == "a\n"
    assert (log_dir / "b.stdout").read_text() == "first\n\n… [989 bytes omitted] …\nlast\n"
    run_log = (log_dir / "run.log").read_text()
    assert run_log.startswith("2023-11-14T22:13:20.000Z run 7 started\n")
    assert json.loads((log_dir / "run.json").read_text())["state"] == "done"


def test_a_failed_run_exits_1_and_json_gives_the_snapshots(
        pair: Path, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    script_run(fake_server, "failed", 3)
    code = main(["--server", fake_server.url, "--token", "t", "ensemble", "run", str(pair),
                 "--json", "--verbose"])
    out, err = capsys.readouterr()
    assert code == 1
    (result,) = json.loads(out)
    assert result["state"] == "failed"
    run_dir = Path(result["log_dir"])
    assert run_dir.parent == Path("shoal-runs") and run_dir.name.startswith("pair-")
    assert (pair.parent / run_dir / "b.stderr").exists()
    assert "b (host-b): failed (exit 3, 1.5s, exit code 3)" in err


def test_a_host_no_worker_matches_is_the_servers_one_line(
        pair: Path, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/blobs/missing", 200, {"missing": []})
    message = "component b: host host-b matches no connected worker (connected: h1)"
    fake_server.reply("POST", "/ensembles", 400, {"error": {"code": "bad", "message": message}})
    assert main(["--server", fake_server.url, "--token", "t", "ensemble", "run",
                 str(pair)]) == 2
    assert capsys.readouterr().err == f"shoal: ensemble pair: {message}\n"  # which one
    assert not (pair.parent / "shoal-runs").exists()  # nothing ran: no run directory


# ---- pieces ---------------------------------------------------------------------------


class BlobShelf:
    """Holds uploaded contents by hash, as a server's blob store does."""

    def __init__(self, held: set[str]):
        self.contents: dict[str, bytes] = dict.fromkeys(held, b"")

    def missing_blobs(self, sha256s: list[str]) -> list[str]:
        return [sha for sha in sha256s if sha not in self.contents]

    def put_blob(self, sha256: str, path: str, progress: Any = None) -> dict[str, Any]:
        self.contents[sha256] = Path(path).read_bytes()
        return {"sha256": sha256, "size": len(self.contents[sha256])}


def test_only_contents_the_other_side_lacks_are_sent(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"already there")
    (tmp_path / "new").write_bytes(b"fresh")
    ensemble = Ensemble(name="e", components=[Component(
        name="c", host="h", command="true",
        files=[FileCopy(local="old", remote="old"), FileCopy(local="new", remote="new")])])
    manifests = build_manifests(ensemble, tmp_path)
    old_sha = hashlib.sha256(b"already there").hexdigest()
    shelf = BlobShelf({old_sha})
    upload_missing(shelf, manifests, Silent())  # type: ignore[arg-type]
    assert shelf.contents == {old_sha: b"", hashlib.sha256(b"fresh").hexdigest(): b"fresh"}


def test_state_changes_are_reported_once_each() -> None:
    watcher = RunWatcher(live=False)
    first = snapshot("running", 1, component_state("a", "running", 1))
    assert watcher.changes(first) == ["a (host-a): running", "run 7 pair: running"]
    assert watcher.changes(first) == []
    hostile = snapshot("running", 2, component_state("a", "failed", 1,
                                                     fail_reason="bad\x1b]0;pwned\x07 end"))
    assert watcher.changes(hostile) == ["a (host-a): failed (bad end)"]


class ScriptedLogs:
    """Answers logs requests from a script of (stream, offset) -> answer."""

    def __init__(self, answers: dict[tuple[str, int | None], dict[str, Any]]):
        self.answers = answers
        self.asked: list[tuple[str, int | None]] = []

    def logs(self, job_id: int, stream: str = "stdout",
             offset: int | None = None) -> dict[str, Any]:
        self.asked.append((stream, offset))
        return self.answers[(stream, offset)]


def live(stream: str, offset: int, data: str, total: int) -> dict[str, Any]:
    return {"job_id": 5, "stream": stream, "state": "running", "live": True, "offset": offset,
            "data": data, "total_bytes": total}


def kept(stream: str, state: str, head: str, tail: str, total: int) -> dict[str, Any]:
    return {"job_id": 5, "stream": stream, "state": state, "head": head, "tail": tail,
            "total_bytes": total, "live": False}


def test_an_attached_component_is_streamed_from_offsets_then_finished_from_its_logs(
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from shoal.cli.ensemble_output import AttachedOutput

    logs = ScriptedLogs({
        ("stdout", 0): live("stdout", 0, "héllo\n", 7),
        ("stdout", 7): live("stdout", 7, "", 7),
        ("stderr", 0): live("stderr", 0, "", 0),
    })
    attached = AttachedOutput(logs, "a", sys.stdout)  # type: ignore[arg-type]
    running = snapshot("running", 2, component_state("a", "running", 5))
    attached.poll(running)
    assert capsys.readouterr().out == "héllo\n"  # 'é' is two bytes: the next read is at 7
    logs.answers.update({
        ("stdout", 7): kept("stdout", "done", "héllo\nbye\n", "héllo\nbye\n", 11),
        ("stderr", 0): kept("stderr", "done", "warn\n", "warn\n", 5),
    })
    attached.poll(snapshot("done", 3, component_state("a", "done", 5)))
    out, err = capsys.readouterr()
    assert (out, err) == ("bye\n", "warn\n")
    asked = len(logs.asked)
    attached.poll(snapshot("done", 4, component_state("a", "done", 5)))
    assert len(logs.asked) == asked  # both streams are over: nothing more is asked


def test_an_ensemble_on_localhost_runs_in_process_with_no_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOAL_HOME")
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho tool ran with $1\n")
    (tmp_path / "tool.sh").chmod(0o755)
    (tmp_path / "here.toml").write_text("""\
name = "here"
timeout = "30s"
[[component]]
name = "first"
command = "./bin/tool.sh x"
files = { "tool.sh" = "bin/tool.sh" }
[[component]]
name = "second"
command = "echo bad >&2; exit 4"
stage = 1
""")
    code = main(["ensemble", "run", "here.toml", "--log-dir", "out"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert (tmp_path / "out" / "first.stdout").read_text() == "tool ran with x\n"
    assert (tmp_path / "out" / "second.stderr").read_text() == "bad\n"
    assert (tmp_path / ".shoal").is_dir()  # its state, beside the file
    lines = out.splitlines()
    assert lines[0].startswith("ensemble here: abandoned")  # too few can succeed
    assert "second" in lines[1]  # why
    rows = {line.split()[0]: line.split()[:4] for line in lines if line.startswith(("first",
                                                                                   "second"))}
    assert rows["first"] == ["first", "localhost", "done", "0"]
    assert rows["second"] == ["second", "localhost", "failed", "4"]
    # Each component's output follows the results, with the file that holds it.
    assert "tool ran with x" in lines and "bad" in lines
    assert any(line.startswith("--- second (localhost) stderr, 1 line: ") for line in lines)


def test_with_no_server_services_are_followed_until_they_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOAL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))  # no server in ~/.shoal either
    (tmp_path / "svc.toml").write_text("""\
name = "svc"
[[component]]
name = "brief"
command = "echo serving; sleep 1"
wait = false
""")
    code = main(["ensemble", "run", "svc.toml", "--log-dir", "out"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no server: the services this run leaves running stop with this command" in err
    assert out.startswith("ensemble svc: done")  # followed past detached, to its end
    assert (tmp_path / "out" / "brief.stdout").read_text() == "serving\n"


def test_a_run_abandoned_while_a_later_stage_prepares_keeps_its_services_with_no_kill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOAL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "late.toml").write_text("""\
name = "late"
[[component]]
name = "service"
command = "echo serving; sleep 1"
wait = false
[[component]]
name = "unplaceable"
command = "true"
base_dir = "/proc/no-such-place"
stage = 1
""")
    code = main(["ensemble", "run", "late.toml", "--no-kill", "--log-dir", "out"])
    out, err = capsys.readouterr()
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("ensemble late: abandoned")
    rows = {line.split()[0]: line for line in lines if line.startswith(("service ", "unplace"))}
    assert rows["service"].split()[2] == "done"  # left to end by itself: --no-kill
    assert rows["unplaceable"].split()[2] == "failed" and "/proc/no-such-place" in out

"""The command line without a real server: add's options into JobSpecs, usage errors, the
wait and logs loops against scripted answers, and the render helpers."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from shoal.cli import admin, render
from shoal.cli.add import InputFormat, job_defaults, parse_env, specs_from_command, specs_from_file
from shoal.cli.main import main
from shoal.client import SQLITE_HEADER
from shoal.core.errors import InputError
from shoal.core.models import JobState

from .test_client_errors import FakeServer, fake_server, isolated_home

__all__ = ["fake_server", "isolated_home"]  # fixtures used here

GiB = 1024**3
ADDED = {"added": 1, "existed": 0, "requeued": 0, "ids": [1]}


def run(server: FakeServer, *args: str) -> int:
    return main(["--server", server.url, "--token", "t", *args])


# ---- add: options into JobSpecs -----------------------------------------------------------


def test_every_add_option_reaches_the_job(fake_server: FakeServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/jobs", 201, ADDED)
    code = run(fake_server, "add", "--cwd", str(tmp_path), "--group", "g", "--priority", "-2",
               "--retries", "3", "--cores", "2", "--memory", "1.5G", "--time", "1h30m",
               "--time-limit", "2h", "--after", "7", "--after", "group:prep", "--limit", "db",
               "--env", "A=1", "--env", "B==x", "--on", "w1", "--name", "n1",
               "ls", "-l", "--color")
    assert code == 0
    assert capsys.readouterr().out == "added 1, 0 already existed\n"
    (request,) = fake_server.requests
    assert request.body == {
        "rerun": False,
        "jobs": [{
            "cmd": "ls -l --color",  # options after the command belong to it
            "cwd": str(tmp_path),
            "group": "g",
            "priority": -2,
            "retries": 3,
            "cores": 2,
            "memory_bytes": int(1.5 * GiB),
            "time_seconds": 5400.0,
            "time_limit_seconds": 7200.0,
            "after": ["7", "group:prep"],
            "limits": ["db"],
            "env": {"A": "1", "B": "=x"},
            "on_worker": "w1",
            "name": "n1",
        }],
    }


def test_every_new_add_option_reaches_the_job(fake_server: FakeServer) -> None:
    fake_server.reply("POST", "/jobs", 201, ADDED)
    assert run(fake_server, "add", "--cwd", "/w", "--gpus", "2", "--resource", "license=2",
               "--resource", "scratch", "--after-any", "3", "--after-any", "group:prep",
               "--limit", "db:4", "--limit", "net", "--on", "rack=a", "--grow-memory",
               "--req-group", "align", "--time-limit", "1h", "align", "x.fq") == 0
    assert fake_server.requests[0].body["jobs"] == [{
        "cmd": "align x.fq",
        "cwd": "/w",
        "gpus": 2,
        "resources": {"license": 2, "scratch": 1},  # a bare name asks for one
        "after_any": ["3", "group:prep"],
        "limits": ["db:4", "net"],
        "on_worker": "rack=a",
        "grow_memory": True,
        "req_group": "align",
        "time_limit_seconds": 3600.0,
    }]


def test_add_defaults_to_the_current_directory_and_reports_requeued(
        fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 0, "existed": 1, "requeued": 1,
                                             "ids": [4]})
    assert run(fake_server, "add", "--rerun", "--", "echo", "hi") == 0
    assert capsys.readouterr().out == "added 0, 1 already existed, 1 requeued\n"
    assert fake_server.requests[0].body == {
        "jobs": [{"cmd": "echo hi", "cwd": os.getcwd()}], "rerun": True,
    }


def test_add_json_prints_the_servers_answer(fake_server: FakeServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("POST", "/jobs", 201, ADDED)
    assert run(fake_server, "add", "--json", "true") == 0
    assert capsys.readouterr().out == (
        '{\n  "added": 1,\n  "existed": 0,\n  "requeued": 0,\n  "ids": [\n    1\n  ]\n}\n'
    )


def test_add_from_a_file_flags_are_defaults_and_lines_win(
        fake_server: FakeServer, tmp_path: Path) -> None:
    fake_server.reply("POST", "/jobs", 201, {"added": 2, "existed": 0, "requeued": 0,
                                             "ids": [1, 2]})
    jobs_file = tmp_path / "jobs.wr"
    jobs_file.write_text('one\ntwo\t{"priority": 9, "rep_grp": "mine", "cwd": "/srv"}\n')
    assert run(fake_server, "add", "-f", str(jobs_file), "--format", "wr", "--group", "g",
               "--priority", "1", "--cwd", "/data") == 0
    assert fake_server.requests[0].body["jobs"] == [
        {"cmd": "one", "cwd": "/data", "group": "g", "priority": 1},
        {"cmd": "two", "cwd": "/srv", "group": "mine", "priority": 9},
    ]


def test_add_reads_standard_input(fake_server: FakeServer,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_server.reply("POST", "/jobs", 201, ADDED)
    monkeypatch.setattr("sys.stdin", io.StringIO("# two jobs\necho a\n\necho b\n"))
    assert run(fake_server, "add", "-f", "-", "--cwd", "/w") == 0
    assert fake_server.requests[0].body["jobs"] == [
        {"cmd": "echo a", "cwd": "/w"}, {"cmd": "echo b", "cwd": "/w"},
    ]


def test_job_defaults_parse_sizes_durations_and_paths(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert job_defaults() == {"cwd": str(tmp_path)}
    assert job_defaults(cwd="sub", memory="512", run_time="90", time_limit="1d") == {
        "cwd": str(tmp_path / "sub"),
        "memory_bytes": 512 * 1024**2,  # bare numbers are megabytes
        "time_seconds": 90.0,
        "time_limit_seconds": 86400.0,
    }


def test_env_values_may_come_from_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_TEST_VAR", "from here")
    monkeypatch.delenv("SHOAL_UNSET_VAR", raising=False)
    assert parse_env(["SHOAL_TEST_VAR", "X="]) == {"SHOAL_TEST_VAR": "from here", "X": ""}
    with pytest.raises(InputError, match="not set here"):
        parse_env(["SHOAL_UNSET_VAR"])
    with pytest.raises(InputError, match="no variable name"):
        parse_env(["=1"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"memory": "8Q"}, "--memory: not a memory size: '8Q' (examples: 512M, 8G)"),
        ({"run_time": "soon"}, "--time: not a duration: 'soon'"),
        ({"run_time": "5m5m"}, "--time: not a duration: '5m5m'"),  # a unit once, largest first
        ({"run_time": "30m1h"}, "--time: not a duration: '30m1h'"),
        ({"priority": 10**9}, "--priority: Input should be less than or equal to 1000000"),
        ({"group": "a b"}, "--group: group names are 1-128 characters"),
        ({"cores": 0}, "--cores: Input should be greater than or equal to 1"),
        ({"time_limit": "0"}, "--time-limit: Input should be greater than 0"),
        ({"gpus": -1}, "--gpus: Input should be greater than or equal to 0"),
        ({"resources": ["gpus=1"]}, "--resource: gpus has its own option, --gpus"),
        ({"resources": ["memory=1"]}, "--resource: memory has its own option, --memory"),
        ({"resources": ["lic=x"]}, "--resource: 'lic=x' is not NAME=N (e.g. license=2)"),
        ({"resources": ["=2"]}, "--resource: '=2' is not NAME=N (e.g. license=2)"),
        ({"resources": ["lic=\u00b2"]}, "--resource: 'lic=\u00b2' is not NAME=N"),
        ({"resources": ["lic=1", "lic=2"]}, "--resource: lic is given twice"),
        ({"resources": ["lic=0"]}, "--resource: resource lic: amount must be at least 1"),
        ({"resources": ["a b=1"]}, "--resource: bad resource name 'a b'"),
        ({"after": ["x"]}, "--after: 'x' is neither a job id nor group:NAME"),
        ({"after_any": ["group:"]}, "--after-any: 'group:' is neither a job id nor group:NAME"),
        ({"limits": ["db:x"]}, "--limit: 'db:x' is not a limit name (NAME, or NAME:N to set"),
    ],
)
def test_bad_flags_are_named(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        specs_from_command(["true"], job_defaults(**flags))
    assert str(caught.value).startswith(message)


def test_a_bad_flag_with_a_file_names_the_flag_not_the_file(tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.txt"
    jobs_file.write_text("echo a\n")
    with pytest.raises(InputError, match=r"^--priority: "):
        specs_from_file(str(jobs_file), InputFormat.AUTO, job_defaults(priority=-(10**7)))


def test_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.wr"
    jobs_file.write_text('ok\nbad\t{"priority": "high"}\n')
    with pytest.raises(InputError) as caught:
        list(specs_from_file(str(jobs_file), InputFormat.WR, job_defaults()))
    assert caught.value.source == str(jobs_file)
    assert caught.value.line == 2


# ---- usage errors: exit 2, one line, no server contacted ------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add"], "shoal: give a command or -f FILE (not both)"),
        (["add", "-f", "x", "echo"], "shoal: give a command or -f FILE (not both)"),
        (["add", "--format", "wr", "echo"], "shoal: --format applies to -f FILE only"),
        (["add", "--priority", "high", "echo"], "shoal: Invalid value for '--priority'"),
        (["add", "--format", "csv", "-f", "x"], "shoal: Invalid value for '--format'"),
        (["add", "--memory", "lots", "echo"], "shoal: --memory: not a memory size"),
        (["add", "--gpus", "two", "echo"], "shoal: Invalid value for '--gpus'"),
        (["add", "--resource", "lic=many", "echo"], "shoal: --resource: 'lic=many' is not NAME=N"),
        (["add", "--after-any", "seven", "echo"], "shoal: --after-any: 'seven' is neither"),
        (["add", "--limit", "a b", "echo"], "shoal: --limit: 'a b' is not a limit name"),
        (["add", "--grow-memory=yes", "echo"], "shoal: Option '--grow-memory' does not take"),
        (["jobs", "--why", "yes"], "shoal: Got unexpected extra argument(s) (yes)"),
        (["limit"], "shoal: Missing argument 'NAME'"),
        (["limit", "db", "x"], "shoal: Invalid value for '[N]'"),
        (["limit", "db", "3", "--unset"], "shoal: give N or --unset, not both"),
        (["limit", "a b", "3"], "shoal: NAME: 'a b' is not a limit name (1-128 letters, digits"),
        (["limit", "db:4"], "shoal: NAME: 'db:4' has a cap in it; give it apart: shoal limit db 4"),
        (["limits", "db"], "shoal: Got unexpected extra argument(s) (db)"),
        (["jobs", "--state", "finished"], "shoal: Invalid value for '--state'"),
        (["status", "one"], "shoal: Invalid value for '[ID]'"),
        (["status", "1", "--group", "g"], "shoal: give an ID or --group, not both"),
        (["kill"], "shoal: give job IDs or --group (not both)"),
        (["rm", "1", "--group", "g"], "shoal: give job IDs or --group (not both)"),
        (["retry", "x"], "shoal: Invalid value for '[ID]...'"),
        (["logs"], "shoal: Missing argument 'ID'"),
        (["frobnicate"], "shoal: No such command 'frobnicate'"),
        (["jobs", "--bogus"], "shoal: No such option: --bogus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, closed_port_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", closed_port_url, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_no_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "add" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("shoal ")


# ---- wait and logs against scripted answers --------------------------------------------------


def test_wait_exits_1_when_a_job_failed(fake_server: FakeServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/status", body={"version": 1, "totals": {"running": 2}})
    fake_server.reply("GET", "/status", body={"version": 2,
                                              "totals": {"done": 1, "running": 1}})
    fake_server.reply("GET", "/status", body={"version": 3,
                                              "totals": {"done": 1, "failed": 1}})
    assert run(fake_server, "wait", "--group", "g") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0/2 ended: 2 running"
    assert out[-1] == "2/2 ended: 1 done, 1 failed"
    polls = [request.query for request in fake_server.requests]
    assert polls[0] == "group=g"
    assert polls[1].startswith("group=g&wait=") and polls[1].endswith("&since=1")


def test_wait_exits_0_when_all_are_done(fake_server: FakeServer) -> None:
    fake_server.reply("GET", "/status", body={"version": 5, "totals": {"done": 3}})
    assert run(fake_server, "wait") == 0


def test_wait_for_a_group_without_jobs_is_an_error(fake_server: FakeServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/status", body={"version": 5, "totals": {}})
    assert run(fake_server, "wait", "-g", "typo") == 2
    assert capsys.readouterr().err == "shoal: no jobs in group 'typo'\n"


def test_logs_marks_the_omitted_middle_on_stderr(fake_server: FakeServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/jobs/3/logs", body={
        "job_id": 3, "stream": "stderr", "state": "done",
        "head": "first\n", "tail": "last\n", "total_bytes": 1000})
    assert run(fake_server, "logs", "3", "--stderr") == 0
    captured = capsys.readouterr()
    assert captured.out == "first\nlast\n"
    assert captured.err == "… [989 bytes omitted] …\n"
    # From byte 0: a running job would answer with its live output; an ended one with what
    # was kept, as here.
    assert fake_server.requests[0].query == "stream=stderr&offset=0"
    # A head cut inside a line is ended there: never joined to the tail's first line.
    fake_server.reply("GET", "/jobs/4/logs", body={
        "job_id": 4, "stream": "stdout", "state": "done",
        "head": "1\n12", "tail": "91\n92\n", "total_bytes": 1000})
    assert run(fake_server, "logs", "4") == 0
    assert capsys.readouterr().out == "1\n12\n91\n92\n"


def test_logs_follow_prints_only_new_text(fake_server: FakeServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/status", body={"version": 1, "totals": {"running": 1}})
    for state, head in (("running", "a\n"), ("running", "a\nb\n"), ("done", "a\nb\nc\n")):
        fake_server.reply("GET", "/jobs/8/logs", body={
            "job_id": 8, "stream": "stdout", "state": state, "head": head, "tail": "",
            "total_bytes": len(head)})
    assert run(fake_server, "logs", "8", "--follow") == 0
    assert capsys.readouterr().out == "a\nb\nc\n"


# ---- render helpers ---------------------------------------------------------------------


def test_render_knows_every_job_state_in_order() -> None:
    assert tuple(state.value for state in JobState) == render.STATES
    assert {state.value for state in JobState if state.is_final} == render.FINAL_STATES


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain\ttext\n", "plain\ttext\n"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;evil title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("bell\x07 nul\x00", "bell\\x07 nul\\x00"),
        ("progress\r50%\r\n", "progress\n50%\n"),
        ("\x9b2Jc1", "c1"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("\x1bPdevice control\x1b\\ok", "ok"),
    ],
)
def test_sanitize_removes_terminal_controls(text: str, shown: str) -> None:
    assert render.sanitize(text) == shown


def test_one_line_keeps_cells_on_one_line() -> None:
    assert render.one_line("a\nb\tc") == "a\\nb c"


@pytest.mark.parametrize(
    ("size", "shown"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (8 * GiB, "8.0 GiB"),
     (3 * 1024**6, "3072.0 PiB")],
)
def test_format_bytes(size: int | None, shown: str) -> None:
    assert render.format_bytes(size) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.25, "250ms"), (5, "5.0s"), (75, "1m15s"), (7300, "2h01m"),
     (90000, "1d01h")],
)
def test_format_duration(seconds: float | None, shown: str) -> None:
    assert render.format_duration(seconds) == shown


def test_format_ago_and_plural() -> None:
    assert render.format_ago(100.0, now=130.0) == "30.0s ago"
    assert render.format_ago(None) == "-"
    assert render.plural(1, "job") == "1 job"
    assert render.plural(2, "job") == "2 jobs"


def test_summarize_counts_in_lifecycle_order() -> None:
    counts = {"failed": 1, "done": 3, "queued": 0, "running": 2, "mystery": 1}
    assert render.summarize_counts(counts) == "2 running, 3 done, 1 failed, 1 mystery"
    assert render.summarize_counts({}) == "no jobs"


def test_status_rows_have_a_total_row_for_many_groups() -> None:
    headers, rows = render.status_rows({
        "totals": {"done": 3, "failed": 1, "queued": 0},
        "groups": {"b": {"done": 1}, "a": {"done": 2, "failed": 1}},
    })
    assert headers == ["GROUP", "done", "failed", "TOTAL"]
    assert rows == [["a", "2", "1", "3"], ["b", "1", "", "1"], ["(all)", "3", "1", "4"]]


def test_print_table_aligns_and_never_cuts_off_a_terminal() -> None:
    out = io.StringIO()
    render.print_table(["ID", "STATE", "COMMAND"],
                       [["1", "done", "echo " + "x" * 300], ["12", "failed", "false"]],
                       stream=out)
    assert out.getvalue().splitlines() == [
        "ID  STATE   COMMAND",
        " 1  done    echo " + "x" * 300,
        "12  failed  false",
    ]


def test_job_rows_escape_untrusted_text() -> None:
    job = {"id": 1, "state": "done", "group": "g", "exit_code": 0, "attempts": 1,
           "wall_seconds": 2.0, "worker": "w\x1b[2J", "name": None,
           "cmd": "echo \x1b[31mhi\nthere"}
    headers, rows = render.jobs_rows([job])
    assert headers[-1] == "COMMAND"
    assert rows == [["1", "done", "g", "0", "1", "2.0s", "w", "echo hi\\nthere"]]


@pytest.mark.parametrize(
    ("log", "position", "pieces", "after"),
    [
        ({"head": "abc", "tail": "", "total_bytes": 3}, 0, ["abc"], 3),
        ({"head": "abc", "tail": "xyz", "total_bytes": 10}, 0, ["abc", 4, "xyz"], 10),
        ({"head": "abc", "tail": "xyz", "total_bytes": 10}, 3, [4, "xyz"], 10),
        ({"head": "abc", "tail": "xyz", "total_bytes": 12}, 10, ["yz"], 12),
        ({"head": "abc", "tail": "xyz", "total_bytes": 20}, 10, [7, "xyz"], 20),
        ({"head": "abcd", "tail": "cdef", "total_bytes": 6}, 0, ["abcd", "ef"], 6),  # overlap
        ({"head": "é", "tail": "", "total_bytes": 2}, 0, ["é"], 2),
        ({"head": "", "tail": "", "total_bytes": 0}, 0, [], 0),
    ],
)
def test_unseen_output(log: dict[str, Any], position: int, pieces: list[str | int],
                       after: int) -> None:
    assert render.unseen_output(log, position) == (pieces, after)


# ---- limits --------------------------------------------------------------------------------


def test_limit_sets_pauses_unsets_and_shows(fake_server: FakeServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("PUT", "/limits/db", body={"name": "db", "cap": 4, "running": 2,
                                                 "queued": 10})
    fake_server.reply("PUT", "/limits/db", body={"name": "db", "cap": 0, "running": 1,
                                                 "queued": 11})
    fake_server.reply("PUT", "/limits/db", body={"name": "db", "cap": None, "running": 3,
                                                 "queued": 9})
    fake_server.reply("GET", "/limits", body={"limits": [
        {"name": "net", "cap": 2, "running": 0, "queued": 0}]})
    assert run(fake_server, "limit", "db", "4") == 0
    assert run(fake_server, "limit", "db", "0") == 0
    assert run(fake_server, "limit", "db", "--unset") == 0
    assert run(fake_server, "limit", "net") == 0
    assert run(fake_server, "limit", "unused") == 0  # a limit no job names yet is no error
    assert capsys.readouterr().out.splitlines() == [
        "limit db: cap 4, 2 running, 10 queued",
        "limit db: paused, 1 running, 11 queued",
        "limit db: no cap, 3 running, 9 queued",
        "limit net: cap 2, 0 running, 0 queued",
        "limit unused: no cap, 0 running, 0 queued",
    ]
    assert [(r.method, r.body) for r in fake_server.requests] == [
        ("PUT", {"cap": 4}), ("PUT", {"cap": 0}), ("PUT", {"cap": None}), ("GET", None),
        ("GET", None),
    ]


def test_limit_json_prints_the_limit(fake_server: FakeServer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/limits", body={"limits": []})
    assert run(fake_server, "limit", "db", "--json") == 0
    assert capsys.readouterr().out == (
        '{\n  "name": "db",\n  "cap": null,\n  "running": 0,\n  "queued": 0\n}\n')


def test_limits_lists_caps(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/limits", body={"limits": [
        {"name": "db", "cap": 2, "running": 2, "queued": 130},
        {"name": "license", "cap": 0, "running": 0, "queued": 4},
        {"name": "net", "cap": None, "running": 12, "queued": 0}]})
    fake_server.reply("GET", "/limits", body={"limits": []})
    assert run(fake_server, "limits") == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME        CAP  RUNNING  QUEUED",
        "db            2        2     130",
        "license  paused        0       4",
        "net           -       12       0",
    ]
    assert run(fake_server, "limits") == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "no limits\n")


# ---- what status, jobs --why and workers show -------------------------------------------


QUEUED_JOB = {
    "id": 12, "cmd": "train --big", "state": "queued", "group": "ml", "cwd": "/w",
    "priority": 0, "retries": 0, "attempts": 0, "exit_code": None, "worker": None,
    "resources": {"cores": 64, "memory_bytes": 8 * GiB, "gpus": 2, "custom": {"license": 1}},
    "grow_memory": True, "req_group": "train",
    "requirements_source": "memory and time learned from req-group train: p95 of 40 runs",
    "dependencies": ["3"], "dependencies_any": ["group:prep"], "limits": ["db:2"],
    "pending_reason": "needs 64 cores; largest worker offers 16", "gpu_ids": [],
    "added_at": None,
}


def test_status_of_a_job_says_why_it_is_not_running(fake_server: FakeServer,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/jobs/12", body=QUEUED_JOB)
    assert run(fake_server, "status", "12") == 0
    assert capsys.readouterr().out.splitlines() == [
        "job 12",
        "  command          train --big",
        "  state            queued",
        "  why not running  needs 64 cores; largest worker offers 16",
        "  group            ml",
        "  cwd              /w",
        "  priority         0",
        "  retries          0",
        "  attempts         0",
        "  requested        64 cores, 8.0 GiB (grows), 2 GPUs, license=1",
        "  req group        train",
        "  requirements     memory and time learned from req-group train: p95 of 40 runs",
        "  after            3",
        "  after any        group:prep",
        "  limits           db:2",
        "  added            -",
    ]


def test_a_running_job_shows_its_gpus_and_no_pending_reason() -> None:
    job = {**QUEUED_JOB, "state": "running", "worker": "g1", "host": "gpu-1", "pid": 77,
           "gpu_ids": ["0", "3"], "pending_reason": "stale"}
    fields = dict(render.job_fields(job))
    assert fields["worker"] == "g1 on gpu-1, pid 77, GPUs 0,3"
    assert render.WHY_LABEL not in fields


def test_jobs_why_adds_the_reason_of_jobs_not_running(
        fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    done = {"id": 1, "cmd": "prep", "state": "done", "group": "ml", "exit_code": 0,
            "attempts": 1, "wall_seconds": 2.0, "worker": "w1", "pending_reason": None}
    queued = {**QUEUED_JOB, "pending_reason": "limit db is full"}
    waiting = {**QUEUED_JOB, "id": 13, "state": "waiting", "cmd": "report",
               "pending_reason": "waiting for job 12"}
    fake_server.reply("GET", "/jobs", body={"jobs": [done, queued, waiting], "total": 3})
    fake_server.reply("GET", "/jobs", body={"jobs": [], "total": 3})
    assert run(fake_server, "jobs", "--why") == 0
    assert capsys.readouterr().out.splitlines() == [
        "ID  STATE    GROUP  EXIT  TRIES  WALL  WORKER  WHY                 COMMAND",
        " 1  done     ml        0      1  2.0s  w1      -                   prep",
        "12  queued   ml        -      0     -  -       limit db is full    train --big",
        "13  waiting  ml        -      0     -  -       waiting for job 12  report",
    ]


def test_workers_show_gpus_named_resources_and_labels_when_there_are_any() -> None:
    plain = {"name": "cpu1", "host": "cpu1", "connected": True, "running": 1, "last_seen": None,
             "resources": {"cores": 16, "memory_bytes": 0, "gpus": [], "custom": {}},
             "used": {"cores": 1, "memory_bytes": 0, "gpus": 0, "custom": {}}, "labels": {}}
    headers, rows = render.workers_rows([plain])
    assert headers == ["NAME", "HOST", "STATE", "CORES", "MEMORY", "RUNNING", "LAST SEEN"]
    gpu = {**plain, "name": "gpu1", "host": "gpu1", "labels": {"zone": "b", "rack": "a"},
           "resources": {"cores": 32, "memory_bytes": 0, "gpus": ["0", "1", "2", "3"],
                         "custom": {"scratch": 5, "license": 4}},
           "used": {"cores": 8, "memory_bytes": 0, "gpus": 2, "custom": {"license": 1}}}
    headers, rows = render.workers_rows([plain, gpu])
    assert headers == ["NAME", "HOST", "STATE", "CORES", "MEMORY", "GPUS", "RESOURCES",
                       "RUNNING", "LAST SEEN", "LABELS"]
    assert rows == [
        ["cpu1", "cpu1", "connected", "1/16", "0 B/0 B", "0/0", "-", "1", "-", "-"],
        ["gpu1", "gpu1", "connected", "8/32", "0 B/0 B", "2/4", "license=1/4,scratch=0/5",
         "1", "-", "rack=a,zone=b"],
    ]


# ---- drain, server stop, server info, backup -----------------------------------------------

SERVER_INFO = {"version": "0.1.0", "draining": False, "started_at": 1795314000.0, "jobs": 3,
               "running": 2, "workers": 1, "store_error": None}


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "DRAIN_POLL_SECONDS", 0.01)
    monkeypatch.setattr(admin, "STOP_POLL_SECONDS", 0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["drain", "--no-wait", "--timeout", "5"], "shoal: give --no-wait or --timeout, not both"),
        (["drain", "--timeout", "0"], "shoal: --timeout: must be more than 0 seconds"),
        (["drain", "--timeout", "soon"], "shoal: Invalid value for '--timeout'"),
        (["drain", "now"], "shoal: Got unexpected extra argument(s) (now)"),
        (["backup"], "shoal: Missing argument 'PATH'"),
        (["backup", "/nonexistent-dir/b.db"], "shoal: /nonexistent-dir: no such directory"),
        (["backup", "/"], "shoal: /: is a directory"),
        (["server", "--port", "1", "stop"], "shoal: Got unexpected extra argument(s) (stop)"),
        (["server", "stop", "now"], "shoal: Got unexpected extra argument(s) (now)"),
        (["server", "info", "--bogus"], "shoal: No such option: --bogus"),
        (["server", "bogus"], "shoal: Got unexpected extra argument(s) (bogus)"),
    ],
)
def test_admin_usage_errors_exit_2_before_asking_the_server(
        args: list[str], message: str, closed_port_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", closed_port_url, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_server_help_lists_its_options_and_the_admin_verbs(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--lease-timeout" in out
    assert "shoal server stop" in out and "shoal server info" in out


def test_drain_no_wait_asks_and_returns(fake_server: FakeServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("POST", "/server/drain", body={"draining": True, "running": 2})
    assert run(fake_server, "drain", "--no-wait") == 0
    assert capsys.readouterr().out == (
        "server draining: 2 jobs running; it stops once they have ended\n")
    assert [(r.method, r.path) for r in fake_server.requests] == [
        ("GET", "/api/v1/server"), ("POST", "/api/v1/server/drain")]


def test_drain_waits_until_the_server_has_exited(fake_server: FakeServer, quick_polls: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("POST", "/server/drain", body={"draining": True, "running": 2})
    fake_server.reply("GET", "/server", body={**SERVER_INFO, "draining": True, "running": 1})
    fake_server.reply("GET", "/server", body={**SERVER_INFO, "draining": True, "running": 0})
    fake_server.reply("GET", "/server", hang_up=True)
    assert run(fake_server, "drain") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "draining: 2 jobs running"  # off a terminal, changes at most every 5s
    assert lines[-1] == "server drained and stopped"
    assert captured.err == ""
    assert [r.path for r in fake_server.requests].count("/api/v1/server") == 4


def test_drain_takes_a_newly_started_server_for_the_drained_one_gone(
        fake_server: FakeServer, quick_polls: None) -> None:
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("POST", "/server/drain", body={"draining": True, "running": 1})
    fake_server.reply("GET", "/server", body={**SERVER_INFO, "started_at": 1795319999.0})
    assert run(fake_server, "drain") == 0


def test_drain_gives_up_at_its_timeout(fake_server: FakeServer, quick_polls: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body={**SERVER_INFO, "draining": True})
    fake_server.reply("POST", "/server/drain", body={"draining": True, "running": 2})
    assert run(fake_server, "drain", "--timeout", "0.2") == 1
    assert capsys.readouterr().err == (
        "shoal: the server is still draining after 200ms, 2 jobs running; "
        "it stops once they have ended\n")


def test_drain_of_an_unreachable_server_exits_3(closed_port_url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", closed_port_url, "drain"]) == 3
    assert capsys.readouterr().err.startswith("shoal: cannot reach the server at ")


def test_server_stop_waits_until_it_no_longer_answers(
        fake_server: FakeServer, quick_polls: None, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("GET", "/server", hang_up=True)
    fake_server.reply("POST", "/server/stop", body={"stopping": True})
    assert run(fake_server, "server", "stop") == 0
    assert capsys.readouterr().out == "server stopped\n"
    assert [(r.method, r.path) for r in fake_server.requests] == [
        ("GET", "/api/v1/server"), ("POST", "/api/v1/server/stop"),
        ("GET", "/api/v1/server"), ("GET", "/api/v1/server")]


def test_server_stop_fails_if_the_server_keeps_answering(
        fake_server: FakeServer, quick_polls: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(admin, "STOP_WAIT_SECONDS", 0.2)
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("POST", "/server/stop", body={"stopping": True})
    assert run(fake_server, "server", "stop") == 1
    assert capsys.readouterr().err == (
        f"shoal: the server at {fake_server.url} still answers 0.2s after being asked to stop\n")


def test_server_info_shows_the_answer(fake_server: FakeServer,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    broken = {**SERVER_INFO, "draining": True, "store_error": "disk full\x1b[2J"}
    fake_server.reply("GET", "/server", body=broken)
    assert run(fake_server, "server", "info") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"server    {fake_server.url}"
    assert lines[1:3] == ["version   0.1.0", "state     draining"]
    assert lines[3].startswith("started   ") and lines[3].endswith(" ago)")
    assert lines[4:] == ["jobs      3, 2 running", "workers   1", "store     disk full"]
    assert run(fake_server, "server", "info", "--json") == 0
    assert json.loads(capsys.readouterr().out) == broken


def test_server_info_counts_live_and_ended_jobs_and_the_database(
        fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body={
        **SERVER_INFO, "jobs": 1_200_003, "live_jobs": 200_003, "running": 2,
        "backlog_jobs": 100_001, "history_jobs": 1_000_000, "database_bytes": 3 * 1024**3})
    assert run(fake_server, "server", "info") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[4:] == [
        "jobs      1,200,003: 200,003 live (2 running, 100,001 in the backlog), 1,000,000 ended",
        "workers   1", "database  3.0 GiB", "store     ok"]


def test_backup_writes_the_file_and_says_what_it_holds(
        fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = SQLITE_HEADER + bytes(3 * 1024**2)
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("GET", "/server/backup", body=database)
    target = tmp_path / "b.db"
    assert run(fake_server, "backup", str(target)) == 0
    assert capsys.readouterr().out == f"backup of 3 jobs written to {target} (3.0 MiB)\n"
    assert target.read_bytes() == database
    requests = len(fake_server.requests)
    assert run(fake_server, "backup", str(target)) == 2  # refused before asking the server
    assert capsys.readouterr().err == f"shoal: {target}: already exists (--force replaces it)\n"
    assert len(fake_server.requests) == requests
    assert run(fake_server, "backup", "--force", str(target)) == 0


def test_backup_with_a_user_token_is_refused_in_one_line(
        fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_server.reply("GET", "/server", body=SERVER_INFO)
    fake_server.reply("GET", "/server/backup", 403, {"error": {
        "code": "forbidden", "message": "only an admin token may take a backup"}})
    assert run(fake_server, "backup", str(tmp_path / "b.db")) == 2
    assert capsys.readouterr().err == "shoal: only an admin token may take a backup\n"
    assert list(tmp_path.iterdir()) == []

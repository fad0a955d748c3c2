"""Ensemble loaders: shoal's TOML, NetJobs configurations, remote_runner Python configurations."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.errors import InputError
from shoal.ensemble.loaders import detect_kind, load_ensembles
from shoal.ensemble.loaders.netjobs import parse_netjobs
from shoal.ensemble.loaders.remote_runner import SHIM_MODULES
from shoal.ensemble.loaders.toml import parse_toml
from shoal.ensemble.spec import Ensemble

FIXTURES = Path(__file__).parent / "fixtures" / "ensembles"
ONE = '[[component]]\nname = "a"\ncommand = "true"\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_one(path: Path, **kwargs: Path) -> Ensemble:
    ensembles = load_ensembles(path, **kwargs)
    assert len(ensembles) == 1
    return ensembles[0]


def error_of(path: Path, **kwargs: Path) -> str:
    with pytest.raises(InputError) as caught:
        load_ensembles(path, **kwargs)
    return str(caught.value)


# --- detection ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind"), [
    ("t:\nlocalhost: \"x\"\nend\n", "netjobs"),
    ("# a comment\n\n  test 1 :\n-minhosts: all\nh: x\nend", "netjobs"),
    ("t:\n-generaltimeout: 5m\n", "netjobs"),  # 'end' missing: still NetJobs, to say so
    ("t:\nlocalhost: \"x\"\n", "netjobs"),
    ("import copy\nc = Component()\n", "remote_runner"),
    ("main = Component()\nmain.name = 'x'\n", "remote_runner"),
    ("config.add_component(c)\n", "remote_runner"),
    ("from remote_runner import Component\n", "remote_runner"),
    ("def muddle(config):\n    pass\n", "remote_runner"),
    ("if True:\n    x = 1\n", "toml"),  # neither: TOML, whose parser then says what is wrong
    (ONE, "toml"),
    ('name = "x"\n' + '[[component]]\nname = "a"\ncommand = "import os; end"\n', "toml"),
    ('[[component]]\nname = "a"\ncommand = """\nimport x\n"""\n', "remote_runner"),
    ("", "toml"),
])
def test_detect_kind(text: str, kind: str) -> None:
    assert detect_kind(text) == kind


def test_unreadable_files_are_input_errors(tmp_path: Path) -> None:
    assert error_of(tmp_path / "absent.toml") == f"{tmp_path / 'absent.toml'}: no such file"
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a file"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"# a first line\nname = \xff\n")
    assert error_of(binary) == f"{binary}:2: not UTF-8 text (byte 8 of the line is 0xff)"


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    toml = tmp_path / "bom.toml"
    toml.write_bytes(b"\xef\xbb\xbf" + ONE.encode())
    assert load_one(toml).components[0].name == "a"
    netjobs = tmp_path / "bom.txt"
    netjobs.write_bytes(b"\xef\xbb\xbft:\nh: x\nend\n")
    assert load_one(netjobs).name == "t"


# --- TOML --------------------------------------------------------------------------------

def test_toml_sample_file_maps_every_field() -> None:
    ensemble = load_one(FIXTURES / "web_bench.toml")
    assert ensemble.name == "web-bench"
    assert ensemble.timeout_seconds == 600
    assert ensemble.run_timeout_seconds == 1800
    assert ensemble.min_hosts == 2
    assert ensemble.stage_starts_after == {2: "finished"}
    assert [(c.name, c.host, c.stage, c.wait) for c in ensemble.components] == [
        ("server", "web1", 0, False),
        ("monitor", "web1", 0, False),
        ("client@load1", "load1", 1, True),
        ("client@load2", "load2", 1, True),
        ("client@10.0.0.7", "10.0.0.7", 1, True),
        ("report", "localhost", 2, True),
    ]
    server = ensemble.components[0]
    assert server.command == "./server.sh --port 8080 --name 'bench server'"
    assert server.env == {"LOG_LEVEL": "info"}
    assert server.base_dir == "/srv/bench"
    assert [(f.local, f.remote) for f in server.files] == [
        (str(FIXTURES / "payload" / "server.sh"), "server.sh"),
        (str(FIXTURES / "payload" / "conf"), "conf"),
    ]
    assert ensemble.components[2].timeout_seconds == 300
    assert ensemble.components[0].timeout_seconds is None  # the ensemble's 10m applies
    assert ensemble.required == 2


def test_toml_defaults(tmp_path: Path) -> None:
    ensemble = load_one(write(tmp_path, "plain.toml", ONE))
    assert ensemble.name == "plain"  # the file's name
    assert (ensemble.timeout_seconds, ensemble.run_timeout_seconds) == (None, None)
    assert ensemble.min_hosts == "all"
    assert ensemble.stage_starts_after == {}
    component = ensemble.components[0]
    assert (component.host, component.stage, component.wait, component.base_dir) == (
        "localhost", 0, True, None)
    assert (component.env, component.files, component.timeout_seconds) == ({}, [], None)


@pytest.mark.parametrize(("value", "seconds"), [
    ('"10m"', 600), ('"90s"', 90), ("45", 45), ("2.5", 2.5), ('"1h30m"', 5400), ('"120"', 120),
])
def test_toml_durations(tmp_path: Path, value: str, seconds: float) -> None:
    path = write(tmp_path, "e.toml", f"timeout = {value}\n{ONE}timeout = {value}\n")
    ensemble = load_one(path)
    assert ensemble.timeout_seconds == seconds
    assert ensemble.components[0].timeout_seconds == seconds


def test_toml_host_list_expands_to_one_component_per_host(tmp_path: Path) -> None:
    path = write(tmp_path, "e.toml", """
min_hosts = 3
[[component]]
name = "client"
host = ["load1", "10.0.0.7", "[::1]"]
command = "run"
stage = 1
timeout = "1m"
env = { A = "1" }

[[component]]
name = "single"
host = ["only"]
command = "run"
""")
    components = load_one(path).components
    assert [(c.name, c.host) for c in components] == [
        ("client@load1", "load1"), ("client@10.0.0.7", "10.0.0.7"), ("client@_::1_", "[::1]"),
        ("single@only", "only"),
    ]
    assert {(c.command, c.stage, c.timeout_seconds, tuple(c.env.items()))
            for c in components[:3]} == {("run", 1, 60, (("A", "1"),))}


def test_toml_executable_and_args_reach_the_program_unchanged(tmp_path: Path) -> None:
    """Whatever the arguments hold, bash hands them over exactly: nothing is expanded."""
    args = ["%s|", "two words", "$HOME", "it's", '"quoted"', "; echo injected", "`date`", "*",
            ""]
    quoted = ", ".join(_toml_string(arg) for arg in args)
    path = write(tmp_path, "e.toml", f'[[component]]\nname = "p"\nexecutable = "printf"\n'
                                     f"args = [{quoted}, 7, 1.5]\n")
    command = load_one(path).components[0].command
    output = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    assert output.stdout == "|".join([*args[1:], "7", "1.5"]) + "|"


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_toml_files_forms_and_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.bin").write_text("x")
    (tmp_path / "tool").write_text("t")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    path = write(elsewhere, "e.toml", f"""
[[component]]
name = "table"
command = "true"
files = {{ "../data" = "input", "{tmp_path / 'tool'}" = "/opt/tool", "../data/x.bin" = "./a//b/" }}

[[component]]
name = "list"
command = "true"
files = [{{ local = "../tool", remote = "bin/tool" }}]
""")
    table, listed = load_one(path).components
    assert [(f.local, f.remote) for f in table.files] == [
        (str(tmp_path / "data"), "input"),
        (str(tmp_path / "tool"), "/opt/tool"),
        (str(tmp_path / "data" / "x.bin"), "a/b/"),  # tidied; the '/' (into a/b) stays
    ]
    assert [(f.local, f.remote) for f in listed.files] == [(str(tmp_path / "tool"), "bin/tool")]


def test_toml_stages_table(tmp_path: Path) -> None:
    path = write(tmp_path, "e.toml", """
[stages]
1 = "started"
3 = "finished"

[[component]]
name = "a"
command = "true"

[[component]]
name = "b"
command = "true"
stage = 1

[[component]]
name = "c"
command = "true"
stage = 3
""")
    ensemble = load_one(path)
    assert ensemble.stage_starts_after == {1: "started", 3: "finished"}
    assert ensemble.stages == [0, 1, 3]


BAD_TOML = [
    # (file text, line, message)
    ("name = \n" + ONE, 1, "TOML: Invalid value (column 8)"),
    (ONE + "command = \"again\"\n", 4, "TOML: Cannot overwrite a value (column 18)"),
    ("x = [\n", 1, "TOML: Invalid value (at the end)"),
    ("timout = 5\n" + ONE, 1, "unknown key 'timout' (did you mean 'timeout'?)"),
    ("colour = 5\n" + ONE, 1, "unknown key 'colour' (known: name, timeout, run_timeout, "
                              "min_hosts, base_dir, stages, component)"),
    ('[[component]]\nname = "a"\ncomand = "true"\n', 3,
     "component #1: unknown key 'comand' (did you mean 'command'?)"),
    ("", None, "no [[component]] tables: an ensemble needs at least one component"),
    ('[component]\nname = "a"\ncommand = "true"\n', 1,
     "'component' must be an array of tables: write [[component]], with two brackets"),
    ("component = []\n", 1, "'component' must be a non-empty array of tables"),
    ("component = [1]\n", 1, "component #1 must be a table, not an integer"),
    ('[[component]]\ncommand = "true"\n', 1, "component #1: 'name' is missing"),
    ('[[component]]\nname = 5\ncommand = "true"\n', 2,
     "component #1: 'name' must be a string, not an integer"),
    ('[[component]]\nname = "a b"\ncommand = "true"\n', 2,
     "component 'a b': name: names are 1-128 characters of letters, digits and _.:@+-"),
    (ONE + ONE, 5, "component name 'a' is used twice (also by component #1)"),
    ('[[component]]\nname = "a"\n', 1,
     "component 'a': 'command' (or 'executable' with 'args') is missing"),
    ('[[component]]\nname = "a"\ncommand = "x"\nexecutable = "y"\n', 3,
     "component 'a': give either 'command' or 'executable' (with 'args'), not both"),
    ('[[component]]\nname = "a"\ncommand = "x"\nargs = ["y"]\n', 4,
     "component 'a': 'args' goes with 'executable'; put arguments in 'command' itself"),
    ('[[component]]\nname = "a"\ncommand = "  "\n', 3,
     "component 'a': 'command' must be a non-empty string, not '  '"),
    ('[[component]]\nname = "a"\nexecutable = "x"\nargs = "-v"\n', 4,
     "component 'a': 'args' must be an array, not a string"),
    ('[[component]]\nname = "a"\nexecutable = "x"\nargs = [true]\n', 4,
     "component 'a': 'args' values must be strings or numbers, not a boolean"),
    ('[[component]]\nname = "a"\nhost = ""\ncommand = "x"\n', 3, "component 'a': 'host' is empty"),
    ('[[component]]\nname = "a"\nhost = []\ncommand = "x"\n', 3,
     "component 'a': 'host' must be a string or a non-empty array of strings, not an array"),
    ('[[component]]\nname = "a"\nhost = ["h", "h"]\ncommand = "x"\n', 3,
     "component 'a': 'host' lists 'h' twice"),
    ('[[component]]\nname = "a"\nhost = ["h", 1]\ncommand = "x"\n', 3,
     "component 'a': 'host' entries must be non-empty strings, not 1"),
    (ONE + "env = { 1A = \"x\" }\n", 4, "component 'a': env: '1A' is not a variable name"),
    (ONE + "env = [\"A=1\"]\n", 4, "component 'a': 'env' must be a table, not an array"),
    (ONE + "files = \"x\"\n", 4,
     "component 'a': 'files' must be a table or an array of tables, not a string"),
    (ONE + "files = [{ local = \"x\" }]\n", 4, "component 'a': files: each entry of the array "
                                              "must be a table with exactly 'local' and 'remote'"),
    (ONE + "files = { \"x\" = 1 }\n", 4,
     "component 'a': files: 'x' must map to a non-empty remote path string"),
    (ONE + "stage = -1\n", 4, "component 'a': 'stage' must be a whole number from 0 to 1000, "
                              "not -1"),
    (ONE + "stage = true\n", 4, "component 'a': 'stage' must be a whole number from 0 to 1000, "
                                "not True"),
    (ONE + "wait = \"no\"\n", 4, "component 'a': 'wait' must be true or false, not a string"),
    (ONE + "base_dir = 3\n", 4, "component 'a': 'base_dir' must be a non-empty string, not 3"),
    (ONE + "timeout = \"soon\"\n", 4,
     "component 'a': 'timeout': not a duration: 'soon' (examples: 90s, 30m, 1h30m)"),
    (ONE + "timeout = 0\n", 4,
     "component 'a': 'timeout': a duration must be more than zero and finite, not 0"),
    (ONE + "timeout = inf\n", 4,
     "component 'a': 'timeout': a duration must be more than zero and finite, not inf"),
    (ONE + "timeout = true\n", 4, "component 'a': 'timeout': a duration is a string like "
                                  "\"90s\" or a number, not a boolean"),
    ("run_timeout = \"-5m\"\n" + ONE, 1,
     "'run_timeout': not a duration: '-5m' (examples: 90s, 30m, 1h30m)"),
    ("name = \"\"\n" + ONE, 1, "'name' is empty"),
    ("name = 1\n" + ONE, 1, "'name' must be a string, not an integer"),
    ("min_hosts = 2\n" + ONE, 1, "'min_hosts' is 2 but the ensemble has 1 component"),
    ("min_hosts = \"most\"\n" + ONE, 1, "'min_hosts' must be \"all\" or a whole number, not "
                                        "'most'"),
    ("min_hosts = -1\n" + ONE, 1, "'min_hosts' must be \"all\" or a whole number, not -1"),
    ("stages = 1\n" + ONE, 1, "'stages' must be a table, not an integer"),
    ("[stages]\n1 = \"finished\"\n" + ONE, 2, "stages: no component is in stage 1"),
    ("[stages]\n0 = \"finished\"\n" + ONE, 2,
     "stages: stage 0 is the first stage; it has nothing to wait for"),
    ("[stages]\nfirst = \"finished\"\n" + ONE, 2,
     "stages: 'first' is not a stage number (0 to 1000)"),
    ("[stages]\n1 = \"done\"\n" + ONE + "stage = 1\n[[component]]\nname = \"b\"\n"
     "command = \"x\"\n", 2, "stages: stage 1 must be \"started\" or \"finished\", not 'done'"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_TOML)
def test_bad_toml_names_file_line_and_problem(tmp_path: Path, text: str, line: int | None,
                                              message: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    where = f"{path}:{line}" if line is not None else str(path)
    assert error_of(path) == f"{where}: {message}"


def test_toml_missing_local_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "e.toml", ONE + 'files = { "nope/x" = "x" }\n')
    assert error_of(path) == (f"{path}:4: component 'a': files: no such local file or "
                              f"directory: {tmp_path / 'nope' / 'x'}")


def test_toml_error_in_a_host_list_component_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "e.toml", ONE + '\n[[component]]\nname = "c"\nhost = ["a", "b"]\n'
                                           'command = "x"\n\n[[component]]\nname = "c@a"\n'
                                           'command = "y"\n')
    assert error_of(path) == f"{path}:11: component name 'c@a' is used twice (also by component #2)"


# --- NetJobs -----------------------------------------------------------------------------

def test_netjobs_readme_example() -> None:
    """The example configuration from NetJobs's README (version 2.1)."""
    test0, test1 = load_ensembles(FIXTURES / "netjobs_readme.txt")
    assert (test0.name, test0.timeout_seconds, test0.min_hosts) == ("test0", None, "all")
    assert [(c.name, c.host, c.command, c.timeout_seconds, c.stage, c.wait)
            for c in test0.components] == [
        ("localhost", "localhost", "echo 'hello, world'", 1.0, 0, True)]
    assert (test1.name, test1.timeout_seconds, test1.min_hosts) == ("test1", 300.0, 0)
    assert [(c.name, c.host, c.command, c.timeout_seconds) for c in test1.components] == [
        ("172.17.1.19", "172.17.1.19", "./some_test_script.sh", 30.0),
        ("182.17.1.20+1", "182.17.1.20", "./other_test_script.sh", None),
        ("182.17.1.20+2", "182.17.1.20", "./and_another_test_script.sh", None),
    ]


def test_netjobs_sample_config() -> None:
    """NetJobs 2.1's sample_config.txt: five commands on one host, run at once."""
    test0, test1 = load_ensembles(FIXTURES / "netjobs_sample_config.txt")
    assert (test0.min_hosts, test0.components[0].timeout_seconds) == (0, 1.0)
    assert test1.timeout_seconds == 2.0
    assert [c.name for c in test1.components] == [f"localhost+{i}" for i in range(1, 6)]
    assert [c.command for c in test1.components] == [
        "python sleep10.py", "echo 'hello, world'", "python sleep1.py", "python sleep5.py",
        "echo 'goodbye, world'"]
    assert {c.stage for c in test1.components} == {0}


def test_netjobs_lexical_rules() -> None:
    text = """
# comments and blank lines are skipped; lines are stripped
   first test :
-generaltimeout : 2 m
-minhosts:1
  web-1.example.com :   "ab"c"
db_2: "echo \\"quoted\\""
-timeout: none
cache: plain command: with colon
-timeout: 1h
-timeout: 0s
end
second:
localhost: "
end
"""
    first, second = parse_netjobs(text, source="nj")
    assert (first.name, first.min_hosts) == ("first test", 1)
    # Every limit is spelled per component, because db_2 asked for none under a general 2m.
    assert first.timeout_seconds is None
    assert [(c.host, c.command, c.timeout_seconds) for c in first.components] == [
        ("web-1.example.com", 'ab"c', 120.0),
        ("db_2", 'echo \\"quoted\\"', None),
        ("cache", "plain command: with colon", None),  # the last -timeout wins; 0 is none
    ]
    assert [(c.host, c.command) for c in second.components] == [("localhost", '"')]


BAD_NETJOBS = [
    ("t:\nlocalhost: \"x\"\n", 1, "test 't' has no 'end' line"),
    ("t:\nend\n", 2, "test 't' has no targets"),
    ("t:\n-minhosts: 3\nlocalhost: \"x\"\nend\n", 2, "-minhosts is 3 but test 't' has 1 host"),
    ("t:\n-minhosts: 12345678\nlocalhost: \"x\"\nend\n", 2,
     "-minhosts 12345678 is more than any test has hosts"),
    ("t:\n-minhosts: some\nlocalhost: \"x\"\nend\n", 2,
     "-minhosts: use all or a whole number, not '-minhosts: some'"),
    ("t:\nlocalhost: \"x\"\n-generaltimeout: 5m\nend\n", 3,
     "-generaltimeout and -minhosts must come before the first target"),
    ("t:\nlocalhost: \"x\"\n-minhosts: all\nend\n", 3,
     "-generaltimeout and -minhosts must come before the first target"),
    ("t:\n-timeout: 5m\nlocalhost: \"x\"\nend\n", 2,
     "-timeout must follow the target line it applies to"),
    ("t:\nlocalhost: \"x\"\n-timeout: 5\nend\n", 3,
     "-timeout: use a whole number with s, m or h (330s, 5m, 1h) or none, not '-timeout: 5'"),
    ("t:\n-generaltimeout: 1d\nlocalhost: \"x\"\nend\n", 2, "-generaltimeout: use a whole "
     "number with s, m or h (330s, 5m, 1h) or none, not '-generaltimeout: 1d'"),
    ("t:\nlocalhost: \"x\"\n-timeout: 9999h\nend\n", 3, "timeout '9999h' is more than a year"),
    ("t:\nlocalhost: \"x\"\n-retries: 2\nend\n", 3,
     "unknown flag -retries (NetJobs has -generaltimeout, -minhosts and -timeout)"),
    ("t:\nlocalhost: \"x\"\nnot a target\nend\n", 3,
     "cannot read 'not a target': expected 'host: \"command\"', a -flag, or 'end'"),
    ("t:\nlocalhost: \"x\"\nt2:\nend\n", 3,
     "target 't2' has no command (is an 'end' line missing before it?)"),
    ("t:\nlocalhost: \"\"\nend\n", 2,
     "target 'localhost' has no command (is an 'end' line missing before it?)"),
    ("t:\nlocalhost: \"x\"\nend\nend\n", 4, "expected a test label ('name:') but found 'end'"),
    ("t:\nh: x\nend\n\nlocalhost: \"x\"\n", 5,
     "expected a test label ('name:') but found 'localhost: \"x\"'"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_NETJOBS)
def test_bad_netjobs_names_file_line_and_problem(tmp_path: Path, text: str, line: int,
                                                 message: str) -> None:
    path = write(tmp_path, "tests.txt", text)
    assert detect_kind(text) == "netjobs"
    assert error_of(path) == f"{path}:{line}: {message}"


# --- remote_runner -----------------------------------------------------------------------

@pytest.fixture
def rr_dir(tmp_path: Path) -> Path:
    """The sample configuration beside a freshly made payload directory tree."""
    shutil.copy(FIXTURES / "remote_runner_config.py", tmp_path / "config.py")
    shutil.copy(FIXTURES / "remote_runner_muddler.py", tmp_path / "muddler.py")
    (tmp_path / "script.sh").write_text("#!/bin/sh\n")
    (tmp_path / "payload" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "payload" / "top.txt").write_text("1")
    (tmp_path / "payload" / "deep" / "er" / "leaf.txt").write_text("2")
    return tmp_path


def test_remote_runner_config_maps_components(rr_dir: Path) -> None:
    ensemble = load_one(rr_dir / "config.py")
    assert ensemble.name == "config"
    assert ensemble.min_hosts == 0  # remote_runner never abandons a run
    assert [(c.name, c.host, c.stage, c.wait) for c in ensemble.components] == [
        ("script-1-10.0.0.1", "10.0.0.1", 0, True),
        ("script-1-10.0.0.2", "10.0.0.2", 0, True),
        ("script-2-10.0.0.1", "10.0.0.1", 1, True),  # start_index 1, 2, 5 -> stages 0, 1, 2
        ("script-2-10.0.0.2", "10.0.0.2", 1, True),
        ("local_script", "localhost", 2, False),
    ]
    first = ensemble.components[0]
    assert first.command == "./script.sh 1 'hello world'"  # relative: from base_dir
    assert first.base_dir == "/home/tester/run"
    assert sorted((f.local, f.remote) for f in first.files) == [
        (str(rr_dir / "payload" / "deep" / "er" / "leaf.txt"), "deep/er/leaf.txt"),
        (str(rr_dir / "payload" / "top.txt"), "top.txt"),
        (str(rr_dir / "script.sh"), "script.sh"),
    ]
    local = ensemble.components[4]
    assert local.command == f"{rr_dir / 'script.sh'} run locally"  # relative to the config
    assert (local.base_dir, local.files) == ("/tmp", [])


def test_remote_runner_muddler_rewrites_components(rr_dir: Path) -> None:
    ensemble = load_one(rr_dir / "config.py", muddler=rr_dir / "muddler.py")
    assert [c.command.split()[-1] for c in ensemble.components] == ["muddled"] * 5


def test_remote_runner_shims_are_importable_then_gone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    path = write(tmp_path, "imports.py", """
import remote_runner
import config_util
from remote_runner import Component as C, util
from remote_runner.config_util import recursive_files_dict
from config_classes import Config
assert isinstance(config, Config)
files = recursive_files_dict("d", "data")
assert files == util.recursive_files_dict("d", "data")
assert files == config_util.recursive_files_dict("d", "data")
c = C(name="k", host="h", executable="/bin/echo", args=["a", 1], start_index=3, wait=False,
      files=files)
config.add_component(c)
remote_runner.Component()
""")
    before = {name: sys.modules.get(name) for name in SHIM_MODULES}
    ensemble = load_one(path)
    assert {name: sys.modules.get(name) for name in SHIM_MODULES} == before
    component = ensemble.components[0]
    assert (component.name, component.command, component.stage, component.wait) == (
        "k", "/bin/echo a 1", 0, False)
    assert [(f.local, f.remote) for f in component.files] == [
        (str(tmp_path / "d" / "f"), "data/f")]


def test_remote_runner_runs_in_its_directory_and_prints_to_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "c.py", """
import os
print("cwd", os.getcwd())
config.add_component(Component(name="a", host="h", executable="x", start_index=0))
""")
    before = os.getcwd()
    load_ensembles(path)
    assert os.getcwd() == before
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"cwd {tmp_path}\n"


def test_remote_runner_names_shared_across_hosts_get_the_host(tmp_path: Path) -> None:
    """A name used once per host (as remote_runner's (name, host) rule allows) -> NAME@HOST."""
    path = write(tmp_path, "c.py", """
import copy
base = Component()
base.name = "task runner"
base.executable = "../bin/task"
base.start_index = 1
for host in ["h1", "h2"]:
    c = copy.deepcopy(base)
    c.host = host
    config.add_component(c)
""")
    components = load_one(path).components
    assert [(c.name, c.command) for c in components] == [
        ("task_runner@h1", "../bin/task"), ("task_runner@h2", "../bin/task")]
    assert [c.wait for c in components] == [True, True]  # older configurations set no `wait`


BAD_REMOTE_RUNNER = [
    # (configuration text, line, message)
    ("import os\nc = Component(\n", 2, "Python syntax error: '(' was never closed"),
    ("import os\nc = Component()\nc.nmae = 'x'\n", 3,
     "AttributeError: Component has no attribute 'nmae'; the attributes are args, base_dir, "
     "executable, files, host, name, start_index, wait"),
    ("import os\nComponent(port=5)\n", 2,
     "AttributeError: Component has no attribute 'port'; the attributes are args, base_dir, "
     "executable, files, host, name, start_index, wait"),
    ("import os\n\ndef helper():\n    raise ValueError('boom')\n\nhelper()\n", 4,
     "ValueError: boom"),
    ("import sys\nsys.exit(3)\n", 2, "the code called sys.exit(3)"),
    ("import os\nclass Stop(BaseException):\n    pass\nraise Stop('here')\n", 4,
     "Stop: here"),
    ("import os\nraise GeneratorExit\n", 2, "GeneratorExit"),
    ("import os\nx = undefined_name\n", 2, "NameError: name 'undefined_name' is not defined"),
    ("import os\nx = extra_options.apple\n", 2,
     "AttributeError: 'NoneType' object has no attribute 'apple' (extra_options is None "
     "without --extra-args and --arg-parser)"),
    ("import os\n", None, "the configuration adds no components (config.add_component)"),
    ("import os\nconfig = []\n", None, "`config` must stay the configuration object, not []"),
    ("import os\nc = Component()\nc.name = 'x'\nconfig.add_component(c)\n", 4,
     "component 'x' does not set host, executable, start_index"),
    ("import os\nconfig.add_component(Component(name='x', host='h', executable='e', "
     "start_index='first'))\n", 2, "component 'x': start_index must be a number, not 'first'"),
    ("import os\nconfig.add_component(Component(name='x', host='', executable='e', "
     "start_index=0))\n", 2, "component 'x': host must be a non-empty string, not ''"),
    ("import os\nconfig.add_component(Component(name='x', host='h', executable='e', "
     "start_index=0, args='-v'))\n", 2, "component 'x': args must be a list, not '-v'"),
    ("import os\nconfig.add_component(Component(name='x', host='h', executable='e', "
     "start_index=0, files=['a']))\n", 2,
     "component 'x': files must be a dict of local path -> remote path"),
    ("import os\nconfig.add_component(Component(name='x', host='h', executable='e', "
     "start_index=0, base_dir=5))\n", 2, "component 'x': base_dir must be a string or None"),
    ("import os\nc = Component(name='x', host='h', executable='e', start_index=0)\n"
     "config.add_component(c)\nconfig.add_component(c)\n", 4,
     "two components are named 'x' on host 'h'"),
    ("import os\nconfig.add_component(Component(name='x', host='h', executable='e', "
     "start_index=0, files={'absent': 'a'}))\n", 2,
     "component 'x': no such local file or directory: {dir}/absent"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_REMOTE_RUNNER)
def test_bad_remote_runner_names_file_line_and_problem(tmp_path: Path, text: str,
                                                       line: int | None, message: str) -> None:
    path = write(tmp_path, "cfg.py", text)
    where = f"{path}:{line}" if line is not None else str(path)
    assert error_of(path) == f"{where}: {message.format(dir=tmp_path)}"


BAD_MUDDLERS = [
    ("x = 1\n", None, "a muddler must define muddle(config)"),
    ("def muddle(config:\n", 1, "Python syntax error: '(' was never closed"),
    ("def muddle(config):\n    for c in config.all_components():\n        c.wait = 1 / 0\n", 3,
     "ZeroDivisionError: division by zero"),
    ("def muddle(config):\n    c = Component()\n    c.name = 'harness'\n"
     "    config.add_component(c)\n", 4, "component 'harness' does not set host, executable, "
                                         "start_index"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_MUDDLERS)
def test_bad_muddler_names_the_muddler_file_and_line(rr_dir: Path, text: str,
                                                     line: int | None, message: str) -> None:
    muddler = write(rr_dir, "bad_muddler.py", text)
    where = f"{muddler}:{line}" if line is not None else str(muddler)
    assert error_of(rr_dir / "config.py", muddler=muddler) == f"{where}: {message}"


def test_muddler_is_for_remote_runner_only(tmp_path: Path) -> None:
    path = write(tmp_path, "e.toml", ONE)
    assert error_of(path, muddler=tmp_path / "m.py") == (
        f"{path}: --muddler applies to remote_runner configurations; this file reads as toml")


def test_missing_muddler_file(rr_dir: Path) -> None:
    assert error_of(rr_dir / "config.py", muddler=rr_dir / "absent.py") == (
        f"{rr_dir / 'absent.py'}: no such file")


# --- the documentation --------------------------------------------------------------

def _code_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "ensembles.md").read_text()
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    return [body for kind, body in fenced if kind == language]


def test_documented_examples_are_the_tested_samples() -> None:
    assert _code_blocks("toml")[0] == (FIXTURES / "web_bench.toml").read_text()
    netjobs = [block for block in _code_blocks("") if block.startswith("test0:")]
    assert netjobs == [(FIXTURES / "netjobs_readme.txt").read_text()]


# --- arbitrary text ----------------------------------------------------------------------

_NETJOBS_LINES = st.sampled_from([
    "t:", "end", "-minhosts: all", "-minhosts: 2", "-minhosts: 0", "-generaltimeout: 5m",
    "-generaltimeout: none", "-timeout: 0s", "-timeout: 3 h", 'localhost: "x"', "a.b: y",
    'h-1: ""', "# c", "", "é: x", "_: y", "x", "-x", "-timeout: 99999999999999999999s",
])
_TOML_LINES = st.sampled_from([
    "[[component]]", "[stages]", "[component.env]", 'name = "a"', 'name = "b c"',
    'command = "x"', 'executable = "x"', "args = [1, true]", 'host = ["a", "a"]', 'host = "h"',
    "stage = 1", "stage = 1001", 'timeout = "0"', "timeout = inf", "timeout = nan",
    "min_hosts = 2", 'min_hosts = "all"', '1 = "finished"', '0 = "started"', "wait = false",
    'files = { "/" = "" }', "files = [{}]", "env = { A = 1 }", 'run_timeout = "1e9"',
    "x = " + "9" * 5000, "a = " + "[" * 2000,
])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_toml_and_netjobs_refuse_any_text_with_input_error_only(text: str) -> None:
    detect_kind(text)
    for parse in (lambda: parse_toml(text, source="t", base_dir=Path("/"), default_name="t"),
                  lambda: parse_netjobs(text, source="t")):
        with contextlib.suppress(InputError):
            parse()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TOML_LINES, max_size=16))
def test_toml_refuses_any_mix_of_its_lines_with_input_error_only(lines: list[str]) -> None:
    with contextlib.suppress(InputError):
        parse_toml("\n".join(lines), source="t", base_dir=Path("/"), default_name="t")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_NETJOBS_LINES, max_size=16))
def test_netjobs_refuses_any_mix_of_its_lines_with_input_error_only(lines: list[str]) -> None:
    with contextlib.suppress(InputError):
        parse_netjobs("\n".join(lines), source="t")


# ---- directories, resources, remote_runner's extra arguments ------------------------------

PEER_EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "peers" / "remote_runner" / \
    "example"


def test_toml_resources_and_a_default_base_dir(tmp_path: Path) -> None:
    ensemble = load_one(write(tmp_path, "r.toml", """
base_dir = "."
[[component]]
name = "a"
command = "true"
cores = 2
memory = "512M"
[[component]]
name = "b"
command = "true"
base_dir = "/srv/b"
"""))
    a, b = ensemble.components
    assert (a.cores, a.memory_bytes, a.base_dir) == (2, 512 * 1024**2, ".")
    assert (b.cores, b.memory_bytes, b.base_dir) == (None, None, "/srv/b")
    assert "'cores' must be a whole number from 1, not 0" in error_of(
        write(tmp_path, "c.toml", ONE + "cores = 0\n"))
    assert error_of(write(tmp_path, "m.toml", ONE + 'memory = "lots"\n')).endswith(
        "'memory': not a memory size: 'lots' (examples: \"512M\", \"8G\")")  # said once


def test_netjobs_commands_run_in_their_workers_directory() -> None:
    test0, _ = load_ensembles(FIXTURES / "netjobs_sample_config.txt")
    assert test0.components[0].base_dir == "."  # the worker's working directory


def test_remote_runner_example_with_extra_args_and_its_muddler() -> None:
    ensemble = load_one(PEER_EXAMPLE / "config.py", muddler=PEER_EXAMPLE / "arg_muddler.py",
                        extra_args="--apple Fuji",  # type: ignore[arg-type]
                        arg_parser=PEER_EXAMPLE / "extra_args_parser.py")
    first = next(c for c in ensemble.components if c.name == "script-1-172.25.87.96")
    assert first.command == ("./script.sh 1 hello --apple Fuji --bread sourdough --chese "
                             "cheddar muddled")
    assert (first.base_dir, first.wait) == ("/home/odain/testing", False)
    second = next(c for c in ensemble.components if c.name == "script-2-172.25.87.96")
    assert second.base_dir is None  # a fresh directory, its files in it
    assert sorted(f.remote for f in second.files) == sorted(
        ["file1", "file2", "sub1/file1", "sub2/file1", "sub2/file2", "script.sh"])


def test_remote_runner_extra_args_mistakes_are_one_line(tmp_path: Path) -> None:
    config = PEER_EXAMPLE / "config.py"
    assert error_of(config, extra_args="--apple Fuji") == (  # type: ignore[arg-type]
        "--extra-args needs --arg-parser: a file defining parse_args(extra_args, ssh_user), "
        "as in remote_runner")
    refused = error_of(config, extra_args="--banana 1",  # type: ignore[arg-type]
                       arg_parser=PEER_EXAMPLE / "extra_args_parser.py")
    assert refused.endswith("extra_args_parser.py: --extra-args '--banana 1': Example Remote "
                            "Runner custom arg_parser: error: unrecognized arguments: "
                            "--banana 1")
    empty = write(tmp_path, "parser.py", "x = 1\n")
    assert error_of(config, extra_args="x", arg_parser=empty) == (  # type: ignore[arg-type]
        f"{empty}: an arg parser must define parse_args(extra_args, ssh_user)")
    # An empty --extra-args is none at all, as in remote_runner: no parser is needed.
    without = error_of(config, extra_args="")  # type: ignore[arg-type]
    assert without == error_of(config) and "extra_options is None" in without
    toml = write(tmp_path, "a.toml", ONE)
    assert "--extra-args applies to remote_runner configurations" in error_of(
        toml, extra_args="x")  # type: ignore[arg-type]

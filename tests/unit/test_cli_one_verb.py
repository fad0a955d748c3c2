"""`shoal VERB ...` makes the command of VERB alone (typer's making of every verb's command
cost each `shoal run` 17 ms): what it runs, and what it says, are those of the whole app."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from shoal.cli import main as cli_main


def _whole() -> Any:
    return typer.main.get_command(cli_main.app)


def _option_names(command: Any) -> list[tuple[str, ...]]:
    return [tuple(getattr(param, "opts", ())) for param in command.params]


@pytest.mark.parametrize(("args", "verb"), [
    (["run", "jobs.txt", "-j", "2"], "run"),
    (["--debug", "status"], "status"),
    (["--server", "http://h:1", "--token", "t", "jobs", "--json"], "jobs"),
    (["--server=http://h:1", "token", "list"], "token"),
    (["--token", "--debug", "wait"], "wait"),  # --debug is --token's value, as click reads it
    ([], None),
    (["--help"], None),
    (["--version", "run"], None),
    (["-h", "run"], None),
    (["--install-completion"], None),
])
def test_the_verb_is_the_first_word_after_the_roots_options(args: list[str],
                                                              verb: str | None) -> None:
    assert cli_main.verb_of(args) == verb


def test_each_verb_gets_the_command_the_whole_app_has() -> None:
    whole = _whole()
    assert len(whole.commands) > 15
    for name, command in whole.commands.items():
        narrowed: Any = typer.main.get_command(cli_main.app_for([name, "--help"]))
        assert list(narrowed.commands) == [name]
        assert narrowed.commands[name].help == command.help
        assert _option_names(narrowed.commands[name]) == _option_names(command)
        assert sorted(getattr(narrowed.commands[name], "commands", {})) == sorted(
            getattr(command, "commands", {}))
        assert _option_names(narrowed) == _option_names(whole)  # the root's own options


def test_a_lazy_verb_makes_no_other_command() -> None:
    for name in cli_main.LAZY_COMMANDS:
        narrowed: Any = typer.main.get_command(cli_main.app_for([name]))
        assert narrowed.commands == {}


@pytest.mark.parametrize("args", [[], ["--help"], ["stauts"], ["--bogus", "run"]])
def test_no_verb_or_an_unknown_one_gets_the_whole_app(args: list[str]) -> None:
    assert cli_main.app_for(args) is cli_main.app


def test_shell_completion_gets_the_whole_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_SHOAL_COMPLETE", "bash_complete")
    assert cli_main.app_for(["status"]) is cli_main.app


def test_a_mistyped_verb_is_still_told_the_name_near_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["stauts"]) == 2
    assert "Did you mean 'status'?" in capsys.readouterr().err


def test_the_whole_app_is_left_as_it_was() -> None:
    before = len(cli_main.app.registered_commands), len(cli_main.app.registered_groups)
    cli_main.app_for(["status"])
    cli_main.app_for(["run"])
    assert (len(cli_main.app.registered_commands), len(cli_main.app.registered_groups)) == before


def test_main_called_with_words_leaves_the_collector_alone(
        capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    assert gc.isenabled()
    cli_main.main(["run", "--bogus"])
    assert gc.isenabled()
    capsys.readouterr()


def test_the_console_scripts_main_gives_the_collector_back(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    monkeypatch.setattr("sys.argv", ["shoal", "run", "--bogus"])
    try:
        assert cli_main.main() == 2
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # start-up's objects, passed over from now on
    finally:
        gc.unfreeze()  # this test process's objects go back to the collector
    capsys.readouterr()


def test_the_options_skipped_before_the_verb_are_the_roots_own() -> None:
    """verb_of keeps its own list of the root's options (reading them from typer would make
    the commands it saves making): a root option added later must be named there too."""
    kept = [param for param in _whole().params if param.expose_value and not param.is_eager]
    assert sorted(opt for param in kept if not getattr(param, "is_flag", False)
                  for opt in param.opts) == sorted(cli_main._ROOT_VALUE_OPTIONS)
    assert sorted(opt for param in kept if getattr(param, "is_flag", False)
                  for opt in param.opts) == sorted(cli_main._ROOT_FLAGS)

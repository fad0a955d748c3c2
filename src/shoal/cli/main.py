"""The `shoal` command: global options, the verbs, and the process's exit code.

The server, worker and embedded-runner verbs pull in heavy modules (the web stack); they
are imported only when invoked, so that the client verbs, run thousands of times from
scripts, start fast.
"""

import copy
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from shoal.cli import (
    Session,
    add,
    admin,
    arrays,
    file,
    jobs,
    limits,
    modify,
    session_of,
    tokens,
    workers,
)
from shoal.cli.errors import EXIT_BAD_INPUT, report
from shoal.core.collection import hold_collection, resume_collection
from shoal.core.errors import ShoalError

# name -> (module, function, one-line help). Each function is a typer-style command.
LAZY_COMMANDS = {
    "run": ("shoal.cli.run", "run_command", "Run a file of jobs on this machine, no server."),
    "server": ("shoal.cli.serve", "server_command",
               "Run the server, the coordinator; or stop it, or show how it is."),
    "worker": ("shoal.cli.serve", "worker_command", "Run a worker: take jobs and run them."),
    "up": ("shoal.cli.up", "up_command", "Start workers on other hosts over SSH."),
    "down": ("shoal.cli.up", "down_command", "Stop the workers `shoal up` started."),
    "ensemble": ("shoal.cli.ensemble", "ensemble_app",
                 "Run commands pinned to hosts, started in stages at the same instant."),
    "alloc": ("shoal.cli.alloc", "alloc_app",
              "Start workers through Slurm or another engine as queued jobs need them."),
    "report": ("shoal.cli.report", "report_command",
               "Plots of a group, the queue or a `shoal run`: an HTML page or a PNG."),
}


class ShoalGroup(TyperGroup):
    """The verb group: the lazy verbs are listed by name and loaded only when invoked."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*LAZY_COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:  # listed in help, not loaded
            help_text = LAZY_COMMANDS[cmd_name][2]
            command = TyperCommand(name=cmd_name, help=help_text, short_help=help_text)
        return command

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in LAZY_COMMANDS and args[0] not in self.commands:
            self.commands[args[0]] = load_command(args[0], args[1:])
        if args and args[0] == "run":  # `--listen` alone; a command's own options
            from shoal.cli.run import run_arguments

            args[1:] = run_arguments(args[1:], self.commands["run"])
        return super().resolve_command(ctx, args)


def load_command(name: str, rest: Sequence[str] = ()) -> Any:
    if name == "server" and rest[:1] and rest[0] in admin.SERVER_SUBCOMMANDS:
        # `shoal server stop|info` talk to a running server. Running one takes no
        # arguments, only options, so these words cannot mean anything else there.
        return typer.main.get_command(admin.server_app)
    module_name, function_name, _ = LAZY_COMMANDS[name]
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ShoalError(f"'shoal {name}' is not available: {exc}") from exc
    if isinstance(function, typer.Typer):  # a verb group: `shoal ensemble run`
        return typer.main.get_command(function)
    single = typer.Typer(add_completion=False)
    single.command(name)(function)
    command = typer.main.get_command(single)
    if name == "server":
        command.epilog = ("To stop the running server: shoal server stop. "
                          "To show it: shoal server info [--json].")
    return command


app = typer.Typer(
    name="shoal",
    cls=ShoalGroup,
    help="Run many shell commands on many machines.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def show_version(value: bool) -> None:
    if value:
        import shoal

        print(f"shoal {shoal.__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option(
        metavar="URL", help="The server's URL or shoal:// connection string (else "
                            "SHOAL_SERVER, else $SHOAL_HOME).")] = None,
    token: Annotated[str | None, typer.Option(
        metavar="TOKEN", help="The access token (else SHOAL_TOKEN, else $SHOAL_HOME).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=show_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Run many shell commands on many machines."""
    session = session_of(ctx)
    session.debug = debug
    check_global_options(server, token)
    session.server, session.token = server, token
    if ctx.invoked_subcommand != "run":  # `shoal run` resumes it when its set-up is done
        resume_collection()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_BAD_INPUT)


def check_global_options(server: str | None, token: str | None) -> None:
    """--server and --token, checked as given, in their names: an address that cannot be
    dialled, or a token that cannot be sent, is a usage error before any verb runs."""
    if server or token:
        from shoal.home import check_server_address, check_token

        if server:
            check_server_address(server, "--server")
        if token:
            check_token(token, "--token")


# Everything after the command's first word belongs to the command: `shoal add ls -l`.
app.command("add", context_settings={"allow_interspersed_args": False})(add.add)
app.command("arrays")(arrays.arrays)
app.command("status")(jobs.status)
app.command("jobs")(jobs.jobs)
app.command("wait")(jobs.wait)
app.command("logs")(jobs.logs)
app.command("kill")(jobs.kill)
app.command("retry")(jobs.retry)
app.command("rm")(jobs.remove)
app.command("mod")(modify.modify)
app.command("workers")(workers.workers)
app.command("limit", cls=limits.LimitCommand)(limits.limit)
app.command("limits")(limits.limits)
app.command("drain")(admin.drain)
app.command("backup")(admin.backup)
app.command("whoami")(tokens.whoami)
app.add_typer(tokens.token_app)
app.add_typer(file.file_app)


# The root's options before the verb: those that take a value, and the flags. --version and
# --help act on their own, so they are not skipped.
_ROOT_VALUE_OPTIONS = ("--server", "--token")
_ROOT_FLAGS = ("--debug",)


def verb_of(args: Sequence[str]) -> str | None:
    """The verb `args` invoke, as the root group reads them: the first word after its
    options; None when another option comes first."""
    index = 0
    while index < len(args):
        word = args[index]
        if word in _ROOT_VALUE_OPTIONS:
            index += 2
        elif word in _ROOT_FLAGS or word.startswith(tuple(f"{name}=" for name in
                                                          _ROOT_VALUE_OPTIONS)):
            index += 1
        else:
            return None if word.startswith("-") else word
    return None


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app with only the verb that `args` invoke registered: typer makes each verb's
    command from its function's signature, 17 ms for all of them, when one is used. With
    no verb, an unknown one, or shell completion under way, the whole app: help lists every
    verb, and an unknown one is told the names near it."""
    verb = verb_of(args)
    if verb is None or "_SHOAL_COMPLETE" in os.environ:
        return app
    commands = [info for info in app.registered_commands if info.name == verb]
    groups = [info for info in app.registered_groups
              if info.typer_instance is not None and info.typer_instance.info.name == verb]
    if not (commands or groups or verb in LAZY_COMMANDS):
        return app
    narrowed = copy.copy(app)
    narrowed.registered_commands = commands
    narrowed.registered_groups = groups
    return narrowed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    session = Session()
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the process is this command's: see hold_collection
        hold_collection()
    try:
        command = typer.main.get_command(app_for(args))
        try:
            result = command.main(
                args=args,
                prog_name="shoal",
                standalone_mode=False,
                obj=session,
            )
        except BaseException as exc:  # every way out becomes one line and an exit code
            return report(exc, debug=session.debug)
        finally:
            session.close()
    finally:
        resume_collection()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

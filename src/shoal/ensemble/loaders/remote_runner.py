"""remote_runner's Python configuration files (MIT-LL SPARTA, spar_python/remote_runner).

A configuration is a Python program: it runs, with full access to this machine, in a
namespace holding `config`, `Component`, `util`, `options` and `extra_options`, and fills
`config` with config.add_component(...). A muddler (--muddler FILE) is another program
defining muddle(config), called afterwards to rewrite the components. Running either is
running the user's code, exactly as remote_runner itself does.
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import io
import math
import os
import sys
import threading
import traceback
import types
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from shoal.core.errors import InputError
from shoal.ensemble.loaders.common import (
    build_component,
    build_ensemble,
    build_file_copy,
    check_line_lengths,
    command_from,
    local_path,
    missing_local,
    quoted,
    read_text,
    remote_path,
    safe_name,
)
from shoal.ensemble.loaders.compat import config_classes, config_util
from shoal.ensemble.loaders.compat import remote_runner as remote_runner_module
from shoal.ensemble.loaders.compat.config_classes import Component as ConfigComponent
from shoal.ensemble.loaders.compat.config_classes import Config
from shoal.ensemble.spec import LOCALHOST, Component, Ensemble

# Importable while a configuration or muddler runs, then removed again.
SHIM_MODULES: dict[str, types.ModuleType] = {
    "remote_runner": remote_runner_module,
    "remote_runner.config_classes": config_classes,
    "remote_runner.config_util": config_util,
    "config_classes": config_classes,
    "config_util": config_util,
}
REQUIRED = ("name", "host", "executable", "start_index")
# The working directory and sys.modules belong to the whole process: one load at a time.
_PROCESS_STATE = threading.Lock()


def load_remote_runner(path: Path, text: str, *, muddler: Path | None = None,
                       extra_args: str | None = None,
                       arg_parser: Path | None = None) -> list[Ensemble]:
    """Run the configuration (and the muddler), then map its components to one ensemble.

    With `extra_args`, the `arg_parser` file's parse_args(extra_args, ssh_user) gives
    `extra_options` to both, as remote_runner's --extra-args and --arg-parser do. An empty
    `extra_args` is none at all, as remote_runner's `if options.extra_args` has it."""
    extra_args = extra_args or None
    if extra_args is not None and arg_parser is None:
        raise InputError("--extra-args needs --arg-parser: a file defining "
                         "parse_args(extra_args, ssh_user), as in remote_runner")
    files = _SourceFiles(path, muddler, arg_parser)
    check_line_lengths(text, str(path))
    muddler_text = read_text(muddler) if muddler is not None else ""
    if muddler is not None:
        check_line_lengths(muddler_text, str(muddler))
    parser_text = read_text(arg_parser) if arg_parser is not None else ""
    if arg_parser is not None:
        check_line_lengths(parser_text, str(arg_parser))
    options = _options(files.config, files.muddler, extra_args, files.arg_parser)
    with _PROCESS_STATE, _shim_modules(), contextlib.redirect_stdout(sys.stderr):
        extra_options = None
        if extra_args is not None:
            extra_options = _parse_extra_args(parser_text, extra_args, options, files)
        run_config = _compiled(text, files.config, files)
        namespace = _namespace(files.config, options, extra_options, config=Config())
        with _working_directory(files.config.parent):  # as remote_runner runs configurations
            run_config(namespace)
        config = namespace["config"]  # remote_runner takes whatever the name holds at the end
        if not isinstance(config, Config):
            raise files.error(f"`config` must stay the configuration object, not {quoted(config)}",
                              str(files.config))
        if files.muddler is not None:
            _muddle(config, _compiled(muddler_text, files.muddler, files), files, options,
                    extra_options)
    return [_Mapper(config, files).ensemble()]


def _parse_extra_args(parser_text: str, extra_args: str, options: types.SimpleNamespace,
                      files: _SourceFiles) -> Any:
    """What the arg parser's parse_args(extra_args, ssh_user) returns: `extra_options`."""
    assert files.arg_parser is not None
    filename = str(files.arg_parser)
    namespace: dict[str, Any] = {"__name__": "__remote_runner_arg_parser__",
                                 "__file__": filename, "__builtins__": builtins}
    _compiled(parser_text, files.arg_parser, files)(namespace)
    parse_args = namespace.get("parse_args")
    if not callable(parse_args):
        raise files.error("an arg parser must define parse_args(extra_args, ssh_user)",
                          filename)
    said = io.StringIO()  # argparse explains a refusal on stderr, then exits
    try:
        with contextlib.redirect_stderr(said):
            return parse_args(extra_args, options.ssh_user)
    except SystemExit as error:
        lines = [line for line in said.getvalue().strip().splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"sys.exit({quoted(error.code)})"
        raise files.error(f"--extra-args {quoted(extra_args)}: {why}", filename) from None
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # whatever the user's code raises is its error
        raise _user_code_error(error, filename, files) from None


class _SourceFiles:
    """The configuration and muddler, absolute for running, shown as the user named them."""

    def __init__(self, config: Path, muddler: Path | None,
                 arg_parser: Path | None = None) -> None:
        self.config = config.absolute()
        self.muddler = muddler.absolute() if muddler is not None else None
        self.arg_parser = arg_parser.absolute() if arg_parser is not None else None
        self._shown = {str(self.config): str(config)}
        if muddler is not None:
            self._shown[str(self.muddler)] = str(muddler)
        if arg_parser is not None:
            self._shown[str(self.arg_parser)] = str(arg_parser)

    def shown(self, filename: str) -> str:
        return self._shown.get(filename, filename)

    def error(self, message: str, filename: str, line: int | None = None) -> InputError:
        return InputError(message, source=self.shown(filename), line=line)


def _options(path: Path, muddler: Path | None, extra_args: str | None = None,
             arg_parser: Path | None = None) -> types.SimpleNamespace:
    """remote_runner's command-line options as a configuration sees them (its defaults)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = os.environ.get("USER", "")
    return types.SimpleNamespace(
        config_file=str(path), ssh_user=user, ssh_pass=None, log_level="INFO", screen="runner",
        kill_first=True, terminate=True, always_copy=False, no_zombie=False,
        muddler=str(muddler.absolute()) if muddler else None, extra_args=extra_args,
        arg_parser=str(arg_parser) if arg_parser else None, remote_done_dir=None)


def _namespace(path: Path, options: types.SimpleNamespace, extra_options: Any = None,
               **extra: Any) -> dict[str, Any]:
    return {
        "__name__": "__remote_runner_config__",
        "__file__": str(path),
        "__builtins__": builtins,
        "Component": ConfigComponent,
        "util": config_util,
        "options": options,
        "extra_options": extra_options,  # None without --extra-args, as in remote_runner
        "xrange": range,  # configurations were written for Python 2
        **extra,
    }


@contextlib.contextmanager
def _shim_modules() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in SHIM_MODULES}
    sys.modules.update(SHIM_MODULES)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    try:
        previous: str | None = os.getcwd()
    except OSError:  # the current directory was removed: nowhere to come back to
        previous = None
    os.chdir(directory)
    try:
        yield
    finally:
        if previous is not None:
            os.chdir(previous)


def _compiled(text: str, path: Path, files: _SourceFiles) -> Callable[[dict[str, Any]], None]:
    """Compile a file; return a function running it in a namespace, errors as InputError."""
    filename = str(path)
    try:
        code = compile(text, filename, "exec")
    except SyntaxError as error:
        raise files.error(f"Python syntax error: {error.msg}", filename, error.lineno) from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise files.error(f"cannot compile: {error}", filename) from None

    def run(namespace: dict[str, Any]) -> None:
        try:
            exec(code, namespace)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # SystemExit, GeneratorExit and the user's own too
            raise _user_code_error(error, filename, files) from None

    return run


def _muddle(config: Config, run_muddler: Callable[[dict[str, Any]], None], files: _SourceFiles,
            options: types.SimpleNamespace, extra_options: Any) -> None:
    assert files.muddler is not None
    filename = str(files.muddler)
    namespace = _namespace(files.muddler, options, extra_options)
    run_muddler(namespace)
    muddle = namespace.get("muddle")
    if not callable(muddle):
        raise files.error("a muddler must define muddle(config)", filename)
    try:
        muddle(config)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise _user_code_error(error, filename, files) from None


def _user_code_error(error: BaseException, filename: str, files: _SourceFiles) -> InputError:
    """One line naming the deepest line of `filename` the error passed through."""
    line = None
    for frame, number in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename == filename:
            line = number
    if isinstance(error, SystemExit):
        return files.error(f"the code called sys.exit({quoted(error.code)})", filename, line)
    hint = ""
    if isinstance(error, AttributeError) and "'NoneType'" in str(error) \
            and "extra_options" in _source_line(filename, line):
        hint = " (extra_options is None without --extra-args and --arg-parser)"
    return files.error(_describe(error) + hint, filename, line)


def _source_line(filename: str, line: int | None) -> str:
    if line is None:
        return ""
    import linecache

    return linecache.getline(filename, line)


def _describe(error: BaseException) -> str:
    """`Type: message` on one line, however the user's exception renders itself."""
    try:
        text = str(error)
    except Exception:
        text = ""
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Mapper:
    """The components config holds, as one shoal ensemble named after the file."""

    def __init__(self, config: Config, files: _SourceFiles) -> None:
        self.config = config
        self.files = files
        self.config_dir = files.config.parent

    def where(self, component: ConfigComponent | None) -> tuple[str, int | None]:
        """The file and line that added `component`: the configuration's or the muddler's."""
        added_at = self.config.added_at(component) if component is not None else None
        if added_at is None:
            return self.files.shown(str(self.files.config)), None
        return self.files.shown(added_at[0]), added_at[1]

    def fail(self, component: ConfigComponent | None, message: str) -> NoReturn:
        source, line = self.where(component)
        raise InputError(message, source=source, line=line)

    def ensemble(self) -> Ensemble:
        components = list(self.config.all_components())
        if not components:
            self.fail(None, "the configuration adds no components (config.add_component)")
        for component in components:
            self.check(component)
        stage_of = {index: stage for stage, index in
                    enumerate(sorted({c.start_index for c in components}))}
        names = self.names(components)
        mapped = [self.component(c, name, stage_of[c.start_index])
                  for c, name in zip(components, names, strict=True)]
        # remote_runner waits for every wait=True component whatever its exit status and
        # never abandons a run: no minimum number of successes.
        return build_ensemble({"name": self.files.config.stem, "min_hosts": 0,
                               "components": mapped}, source=self.where(None)[0])

    def check(self, component: ConfigComponent) -> None:
        missing = [name for name in REQUIRED if not hasattr(component, name)]
        label = f"component {quoted(getattr(component, 'name', ''))}"
        if missing:
            self.fail(component, f"{label} does not set {', '.join(missing)}")
        for attribute in ("name", "host", "executable"):
            value = getattr(component, attribute)
            if not isinstance(value, str) or not value.strip():
                self.fail(component, f"{label}: {attribute} must be a non-empty string, not "
                                     f"{quoted(value)}")
        start_index = component.start_index
        # An int is always finite, and may be too large for math.isfinite to convert.
        if (isinstance(start_index, bool) or not isinstance(start_index, int | float)
                or (isinstance(start_index, float) and not math.isfinite(start_index))):
            self.fail(component, f"{label}: start_index must be a number, not "
                                 f"{quoted(start_index)}")
        if component.base_dir is not None and not isinstance(component.base_dir, str):
            self.fail(component, f"{label}: base_dir must be a string or None")
        if isinstance(component.args, str | bytes | Mapping) or not _iterable(component.args):
            self.fail(component, f"{label}: args must be a list, not {quoted(component.args)}")
        if not isinstance(component.files, Mapping) or not all(
                isinstance(key, str) and isinstance(value, str) and key and value
                for key, value in component.files.items()):
            self.fail(component, f"{label}: files must be a dict of local path -> remote path")

    def names(self, components: list[ConfigComponent]) -> list[str]:
        """Names as given; a name used on several hosts becomes NAME@HOST on each."""
        uses = Counter(c.name for c in components)  # linear: there may be thousands
        names = [safe_name(f"{c.name}@{c.host}" if uses[c.name] > 1 else c.name)
                 for c in components]
        seen: set[str] = set()
        for component, name in zip(components, names, strict=True):
            if name in seen:
                self.fail(component, f"two components are named {quoted(component.name)} on "
                                     f"host {quoted(component.host)}")
            seen.add(name)
        return names

    def component(self, component: ConfigComponent, name: str, stage: int) -> Component:
        source, line = self.where(component)
        label = f"component {quoted(component.name)}"
        files = [build_file_copy(local_path(local, self.config_dir), remote_path(remote),
                                 source=source, line=line, label=label)
                 for local, remote in component.files.items()]
        missing = missing_local(copy.local for copy in files)
        if missing:
            self.fail(component, f"component {quoted(component.name)}: no such local file or "
                                 f"directory: {missing[0]}")
        fields = {
            "name": name,
            "host": component.host,
            "command": command_from(self.executable(component), self.args(component, label)),
            "base_dir": component.base_dir,
            "files": files,
            "stage": stage,
            "wait": bool(getattr(component, "wait", True)),  # older versions had no `wait`
        }
        return build_component(fields, source=source, line=line)

    def args(self, component: ConfigComponent, label: str) -> list[str]:
        try:
            return [str(arg) for arg in component.args]
        except Exception as error:  # an object with no text, or an iterator that fails
            self.fail(component, f"{label}: args: {_describe(error)}")

    def executable(self, component: ConfigComponent) -> str:
        """Absolute stays; relative is from the config's directory on localhost, else from
        base_dir (where the command runs), so a bare name is not looked up in PATH."""
        executable: str = component.executable
        if os.path.isabs(executable):
            return executable
        if component.host == LOCALHOST:
            return local_path(executable, self.config_dir)
        return executable if executable.startswith(("./", "../")) else f"./{executable}"


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


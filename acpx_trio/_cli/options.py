"""Global options of one ``acpx-trio`` invocation (:class:`Options`), resolved from parsed
arguments; shared by the turn commands (``run``) and the inspection commands (``info``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from acpx_trio._errors import AcpxUsageError
from acpx_trio._store.config_files import ConfigLayers, check_cwd, load_layers
from acpx_trio._store.userpaths import resolve_path, state_dir_path

__all__ = [
    "OUTPUT_FORMATS",
    "STATE_DIR_ENV",
    "CommandParser",
    "Options",
    "UsageError",
    "default_state_dir",
    "resolve_options",
]

STATE_DIR_ENV = "ACPX_TRIO_STATE_DIR"
#: The commands that use none of the config's values (a file's bad value does not stop them).
CONFIG_FREE_COMMANDS = frozenset({"reap", "leases", "status", "cancel", "set", "set-mode"})
#: The commands that never use the state dir (it is not checked for them).
STATE_FREE_COMMANDS = frozenset({"config", "agents"})
#: The commands that run a prompt turn in the agent's working directory.
TURN_COMMANDS = frozenset({"prompt", "exec"})
#: ``--format``: ``text`` (default), ``json`` (NDJSON; ``--json``), ``quiet`` (reply only).
OUTPUT_FORMATS: tuple[str, ...] = ("text", "json", "quiet")


class CommandParser(argparse.ArgumentParser):
    """A command's parser takes its options and positionals in any order (so a global option
    may follow a positional: ``sessions close KEY --state-dir X``), except that after ``--``
    every argument is positional; the top-level parser, which dispatches to the commands,
    parses as usual."""

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        # after "--" everything is positional: argparse's intermixed mode gets that wrong
        if leaf and not self._intermixing and "--" not in (args or ()):
            self._intermixing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._intermixing = False
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """One line, as every other usage error (argparse prints its usage block)."""
        raise UsageError(f"{message} (usage: {self.prog} --help)")


class UsageError(Exception):
    """A usage error detected after argument parsing (exit 2)."""


def utf8_text(what: str, value: str) -> str:
    """``value`` if it is UTF-8 text; else :class:`UsageError` naming ``what`` and showing
    the bytes.  The owner's wire, the state files and the agent's JSON carry nothing else:
    a byte the shell passed through (``$'\\xff'``) is refused here, in one line, never a
    traceback later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape")
        raise UsageError(f"{what} {shown!r} is not UTF-8 text: acpx-trio takes UTF-8 "
                         "text, keys and paths") from None
    return value


def default_state_dir() -> Path:
    """``$ACPX_TRIO_STATE_DIR``, else the platform's per-user state dir for ``acpx-trio``."""
    env = utf8_text(f"${STATE_DIR_ENV}", os.environ.get(STATE_DIR_ENV, "")).strip()
    if env:
        return Path(env)
    import platformdirs  # only here: it costs a few ms at start-up

    return Path(platformdirs.user_state_dir("acpx-trio"))


class Options(msgspec.Struct, kw_only=True):
    """Resolved global options of one invocation.  ``cwd_given``: ``--cwd`` was passed.
    ``raw_config``: the user file, the project file and ``--config`` merged (``layers`` says
    where each value came from)."""

    state_dir: Path
    cwd: Path
    cwd_given: bool
    raw_config: dict[str, Any]
    json: bool
    verbose: bool
    format: str = "text"
    layers: ConfigLayers | None = None

    @property
    def quiet(self) -> bool:
        return self.format == "quiet"


def _state_dir(given: str | None) -> tuple[Path, Path]:
    """The state dir as given (``~`` expanded, absolute) and resolved: ``--state-dir``, else
    the default.  An empty ``--state-dir`` (an unset variable: ``--state-dir "$DIR"``) or one
    that cannot be resolved (a symbolic link loop, an unknown ``~user``) is a
    :class:`UsageError` naming where it came from."""
    if given is None:
        env = bool(os.environ.get(STATE_DIR_ENV, "").strip())
        where, path = f"${STATE_DIR_ENV}" if env else "the state dir", default_state_dir()
    else:
        where = "--state-dir"
        try:
            path = state_dir_path(given, where)  # the rule's one home (also the API's)
        except AcpxUsageError as exc:
            raise UsageError(str(exc)) from None
    resolved = resolve_path(path, lambda why: UsageError(f"{where} {path}: {why}"))
    return Path(os.path.abspath(path.expanduser())), resolved


def _uses_config(ns: argparse.Namespace) -> bool:
    """Whether the command reads the config's values: not the clean-up and warm-owner
    commands (``reap`` above all must run whatever a config file holds), nor ``config init``
    (which is how a user replaces a broken file)."""
    command = getattr(ns, "command", None)
    if command == "config":
        return getattr(ns, "action", "show") != "init"
    return command not in CONFIG_FREE_COMMANDS


def resolve_options(ns: argparse.Namespace) -> Options:
    """Global options from parsed arguments.  Blocking (reads the config files): call it
    before the event loop starts.  ``--json`` is ``--format json``; both given and
    disagreeing is a :class:`UsageError`.  A ``--cwd`` that is not a directory is a
    :class:`UsageError`; for a turn command without ``--cwd``, a config file's ``cwd`` that
    is not one is a :class:`~acpx_trio.ConfigError` naming the file (the inspection commands,
    ``reap`` first, still run), as is any invalid value in a file."""
    spelled, state_dir = _state_dir(getattr(ns, "state_dir", None))
    given = getattr(ns, "cwd", None)
    cwd = resolve_path(Path(given or Path.cwd()),
                       lambda why: UsageError(f"--cwd {given}: {why}"))
    if not os.path.isdir(cwd):  # False on any OSError (Path.is_dir raises ENAMETOOLONG)
        raise UsageError(f"--cwd {cwd} is not a directory")
    layers = load_layers(cwd, getattr(ns, "config", None), check=_uses_config(ns))
    if given is None and getattr(ns, "command", None) in TURN_COMMANDS:
        check_cwd(layers, cwd)  # their agent's working directory: the config's, if it sets one
    fmt: str = getattr(ns, "format", None) or "text"
    if getattr(ns, "json", False):
        if fmt not in ("text", "json") or getattr(ns, "format", None) == "text":
            raise UsageError(f"--json contradicts --format {fmt}")
        fmt = "json"
    if getattr(ns, "command", None) not in STATE_FREE_COMMANDS:
        # the lookup as given, links on the way included (the resolved path has none left):
        # a link another user may replace, or a parent others can write, is StateFileError
        # (after the config files, whose errors come first and load nothing more)
        from acpx_trio._store.fsio import check_ancestors

        check_ancestors(spelled)
    return Options(state_dir=state_dir, cwd=cwd,
                   cwd_given=given is not None, raw_config=dict(layers.raw),
                   json=fmt == "json", verbose=bool(getattr(ns, "verbose", False)),
                   format=fmt, layers=layers)

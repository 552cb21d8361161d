"""The ``acpx-trio`` command line's entry: its arguments, and the exit status of whatever ran.

Exit codes (as acpx's): 0 ok, 1 runtime or protocol error, 2 usage or config error,
3 timeout, 4 no such session, 5 permission denied or unanswerable, 129 hung up (SIGHUP),
130 interrupted (SIGINT), 143 terminated (SIGTERM).

Parsing loads neither Trio nor the runtime: ``--help``, ``--version``, a usage error and a
configuration error cost an interpreter and this module.  A parsed command runs in
:mod:`acpx_trio._cli.run` (the turn commands and their guarantees); ``prompt --session KEY``
runs the turn in the state dir's warm owner instead (see :mod:`acpx_trio._cli.warm`: the
agent stays warm between invocations).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acpx_trio._cli.entry import hold_interrupts, release_interrupts
from acpx_trio._cli.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for
from acpx_trio._cli.options import (
    OUTPUT_FORMATS,
    STATE_DIR_ENV,
    CommandParser,
    UsageError,
    default_state_dir,
    resolve_options,
    utf8_text,
)
from acpx_trio._cli.text import first_line, printable
from acpx_trio._errors import AcpRuntimeError, AcpxError, ConfigError
from acpx_trio._store.config import PERMISSION_MODES

__all__ = ["build_parser", "default_state_dir", "main"]


# -- argument parsing -------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a global option may be given before or after the command name.
    # str, not Path: Path("") is ".", and an empty --state-dir must be refused, not become
    # the current directory (resolve_options checks it)
    p.add_argument("--state-dir", type=str, default=argparse.SUPPRESS, metavar="DIR",
                   help=f"state directory (default: ${STATE_DIR_ENV} or the per-user state dir)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="config file (JSON, or TOML by .toml suffix), over the user file and "
                        "the project's .acpx-trio.toml")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=argparse.SUPPRESS,
                   help="output: text (default), json (NDJSON, as --json) or quiet (the "
                        "reply text only)")
    p.add_argument("--cwd", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                   help="working directory of the agent (default: the config's cwd, else .)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output: one JSON object a line (NDJSON)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="report lifecycle steps and all agent status updates on stderr")


def _ttl(text: str) -> float:
    from acpx_trio._owner.wire import MAX_SECONDS  # the wire's bound, loaded only for --ttl

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0 and <= {MAX_SECONDS:g} (0 = forever)")
    return value


def _add_warm_commands(sub: Any, prompt: argparse.ArgumentParser) -> None:
    """``--ttl``/``--no-wait`` on ``prompt``, and the commands that talk to the warm owner
    (run by :mod:`acpx_trio._cli.warm`, which only those commands load)."""
    prompt.add_argument("--ttl", type=_ttl, default=None, metavar="SECONDS",
                        help="with --session: keep the session's agent warm this long after "
                             "its last turn (default: config queueOwnerTtlSeconds, else 300; "
                             "0 = forever)")
    prompt.add_argument("--no-wait", action="store_true",
                        help="with --session: queue the prompt, print its queue position and "
                             "return")
    cancel = sub.add_parser("cancel", help="Cancel the running turn of a warm session.",
                            description="Cancel the running turn of a warm session (nothing "
                            "to cancel is a success).")
    _common(cancel)
    cancel.add_argument("--session", required=True, metavar="KEY")
    status = sub.add_parser("status", help="The warm owner and its sessions.",
                            description="Owner pid, and per warm session: agent pid, queue "
                            "depth, idle time and TTL.")
    _common(status)
    status.add_argument("--session", default=None, metavar="KEY")
    set_ = sub.add_parser("set", help="Set a config option (or the model) of a warm session.",
                          description="Set the agent's config option KEY to VALUE on a warm "
                          "session (KEY model: its model option, or the legacy set_model). "
                          "An unknown key or value exits 2 naming the choices.")
    _common(set_)
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("value", metavar="VALUE")
    set_.add_argument("--session", required=True, metavar="KEY")
    mode = sub.add_parser("set-mode", help="Set the session mode of a warm session.",
                          description="session/set_mode on a warm session; a mode the agent "
                          "does not offer exits 2.")
    _common(mode)
    mode.add_argument("mode", metavar="MODE")
    mode.add_argument("--session", required=True, metavar="KEY")


def _add_agent_list_options(parser: argparse.ArgumentParser, agent_help: str) -> None:
    """``--agent NAME`` / ``--agent-command CMD`` on ``sessions`` and ``logout``: calls on the
    agent itself (run by :mod:`acpx_trio._cli.protocol_cmds`); with ``sessions list``, the
    agent's own sessions (``session/list``) instead of ours.  ``agent_help``: what
    ``--agent`` does there."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--agent", dest="list_agent", default=None, metavar="NAME",
                       help=agent_help)
    group.add_argument("--agent-command", dest="list_agent_command", default=None,
                       metavar="CMD", help="like --agent, for this ACP agent command line")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``acpx-trio``."""
    from acpx_trio._version import __version__

    parser = CommandParser(
        prog="acpx-trio",
        description="Drive ACP coding agents from a Trio runtime that never leaks a process.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage/config, 3 timeout, 4 no session, "
        "5 permission, 129 hung up (SIGHUP), 130 interrupted (SIGINT), 143 terminated "
        "(SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"acpx-trio {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def turn_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        agent = p.add_mutually_exclusive_group()
        agent.add_argument("--agent", default=None, metavar="NAME",
                           help="agent name (mock, codex, claude, gemini or one from config); "
                                "default: mock, the bundled agent")
        agent.add_argument("--agent-command", default=None, metavar="CMD",
                           help="run this command line as the agent (it must speak ACP on stdio)")
        p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="give up after SECONDS (agent start-up and the turn; exit 3)")
        perm = p.add_mutually_exclusive_group()
        perm.add_argument("--permission-mode", choices=PERMISSION_MODES, default=None,
                          help="how agent permission requests are answered "
                               "(default: the config's, else approve-reads)")
        perm.add_argument("--approve-all", action="store_const", const="approve-all",
                          dest="permission_mode", help="same as --permission-mode approve-all")
        p.add_argument("-f", "--file", default=None, metavar="FILE",
                       help="read the prompt from FILE (- = stdin)")
        p.add_argument("--no-fs", action="store_true",
                       help="do not offer file access: fs/* is not advertised and refused")
        p.add_argument("--no-terminal", action="store_true",
                       help="do not offer terminals: terminal/* is not advertised and refused")
        p.add_argument("--model", default=None, metavar="MODEL",  # issue 21 (protocol)
                       help="select MODEL (the agent's config option of category model) "
                            "before the turn; an unknown model exits 2 naming the choices")
        p.add_argument("text", nargs="*", help="the prompt (default: read from stdin)")
        return p

    prompt = turn_command("prompt", "Send a prompt to a persistent session; stream the reply.")
    prompt.add_argument("--session", default=None, metavar="KEY",
                        help="session key: the turn runs in the state dir's warm owner, which "
                             "keeps the agent alive between prompts (without it: session "
                             "cli:default, in this process)")
    turn_command("exec", "One-shot prompt in a fresh session that is closed afterwards.")
    _add_warm_commands(sub, prompt)

    sessions = sub.add_parser("sessions", help="List, show or close stored sessions.",
                              description="List, show or close stored sessions. Closing a "
                              "session makes the next prompt of its key start a new one.")
    _common(sessions)
    sessions.add_argument("action", nargs="?", default="list",
                          choices=["list", "show", "close", "history", "delete"])
    sessions.add_argument("key", nargs="?", help="session key (for show and close); the "
                          "agent's session id for delete --agent")
    _add_agent_list_options(sessions, "with list: the sessions agent NAME itself knows "
                            "(session/list; --cwd DIR: only those in DIR); with delete: "
                            "session/delete at agent NAME")  # issue 21 (protocol)
    logout = sub.add_parser("logout", help="Log out of an agent (ACP logout, when offered).",
                            description="ACP logout: the agent ends its authenticated state; "
                            "its next session needs credentials again.")
    _common(logout)
    _add_agent_list_options(logout, "the agent to log out of (this or --agent-command is "
                            "required)")

    agents = sub.add_parser("agents", help="Built-in and configured agents and their commands.")
    _common(agents)

    doctor = sub.add_parser("doctor", help="Check that agents are installed and answer ACP.")
    _common(doctor)
    doctor.add_argument("--agent", action="append", default=None, metavar="NAME",
                        help="check only this agent (repeatable); default: every agent")
    doctor.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="deadline per agent for start-up and initialize (default: the "
                             "config's timeoutSeconds, else 60)")
    doctor.add_argument("--deep", action="store_true",
                        help="also open and close a real session (authenticate included)")

    config = sub.add_parser("config", help="Show the effective config or write a starter file.",
                            description="show: every effective setting and the file it came "
                            "from (credentials masked). init: write a commented starter file "
                            "(the user config.toml, or .acpx-trio.toml with --project).")
    _common(config)
    config.add_argument("action", nargs="?", default="show", choices=["show", "init"])
    config.add_argument("--project", action="store_true",
                        help="init: write .acpx-trio.toml in the working directory")
    config.add_argument("--force", action="store_true",
                        help="init: replace an existing file")

    leases = sub.add_parser("leases", help="Process leases: what was started, is it alive.")
    _common(leases)
    leases.add_argument("--all", action="store_true", help="include closed and lost leases")

    reap = sub.add_parser("reap", help="Terminate orphaned agent processes of this gateway.")
    _common(reap)
    reap.add_argument("--dry-run", action="store_true",
                      help="only print what would be terminated and why; change nothing")
    return parser


def _check_warm_only(ns: argparse.Namespace) -> None:
    """``--ttl`` and ``--no-wait`` say how the warm owner keeps a session: without
    ``--session`` there is none, so they are a :class:`UsageError`, not silently ignored;
    an empty ``--model`` is refused here on every path, before any agent starts."""
    if ns.command == "prompt" and ns.session is None:
        given = [name for name, on in (("--ttl", ns.ttl is not None), ("--no-wait", ns.no_wait))
                 if on]
        if given:
            raise UsageError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} "
                             "--session KEY (the warm owner keeps a session only by its key)")
    model = getattr(ns, "model", None)
    if model is not None and not model.strip():  # every path, before any agent starts
        raise UsageError("--model: must name a model (it is empty)")


#: Options naming a local file to read (``-f``, ``--config``): only its content goes on;
#: its name may be any bytes the file system takes.
_LOCAL_PATHS = frozenset({"file", "config"})


def _check_text(ns: argparse.Namespace) -> None:
    """Every other argument must be UTF-8 text: it goes on the owner's wire, into the state
    files or to the agent (JSON), which carry nothing else; one that is not is refused here
    (:func:`~acpx_trio._cli.options.utf8_text`), before anything starts."""
    for name, value in vars(ns).items():
        if name in _LOCAL_PATHS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str | Path):
                utf8_text("argument", str(item))


def _leaf(exc: BaseException) -> BaseException:
    """The only exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _fail(message: str) -> None:
    with contextlib.suppress(OSError):  # a terminal that hung up hears nothing more
        print(f"acpx-trio: {printable(first_line(message))}", file=sys.stderr, flush=True)


def _silence_failed_output(exc: BaseException) -> None:
    """After an ``OutputError``: its stream's descriptor points at ``/dev/null`` from now on,
    so the exit's own flush of what is left neither fails again nor changes the exit
    status."""
    output = sys.modules.get("acpx_trio._cli.output")  # loaded by every command that writes
    if output is None or not isinstance(exc, output.OutputError) or exc.fd is None:
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, exc.fd)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    hold_interrupts()
    try:
        try:
            ns = build_parser().parse_args(argv)
            _check_text(ns)
            verbose = bool(getattr(ns, "verbose", False))
            logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                                format="acpx-trio: %(message)s")
            _check_warm_only(ns)
            opts = resolve_options(ns)  # before the event loop: it reads files
            import trio  # only now: --help, --version and a usage error never load it

            from acpx_trio._cli.run import dispatch
        finally:
            release_interrupts()  # a Ctrl-C held meanwhile is raised here
        return trio.run(dispatch, ns, opts, restrict_keyboard_interrupt_to_checkpoints=True)
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, UsageError | ConfigError):
            _fail(str(exc))
            return EXIT_USAGE
        if isinstance(exc, AcpRuntimeError | AcpxError):
            _silence_failed_output(exc)
            _fail(f"{exc.code}: {exc}")
            return exit_code_for(exc.code)
        if isinstance(exc, KeyboardInterrupt):
            _fail("interrupted")
            return EXIT_INTERRUPTED
        if isinstance(exc, BrokenPipeError):
            # stdout was closed by its reader (e.g. `| head`): not an error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
        raise

"""The ``acpx-trio`` command line: prompt agents, inspect sessions, leases and agents, reap.

Exit codes (as acpx's): 0 ok, 1 runtime or protocol error, 2 usage or config error,
3 timeout, 4 no such session, 5 permission denied or unanswerable, 130 interrupted (SIGINT),
143 terminated (SIGTERM).

``prompt --session KEY`` runs the turn in the state dir's warm owner instead (see
:mod:`acpx_trio._cli.warm`: the agent stays warm between invocations).

Guarantees of ``prompt`` (without ``--session``) and ``exec``: the reply streams to stdout as
it arrives; however the command ends (end of turn, error, timeout, Ctrl-C, SIGTERM) the
agent's process tree is gone when it exits and its lease is final.  The first Ctrl-C during a
turn sends ``session/cancel`` (the agent gets a bounded time to stop, then is killed); a
SIGTERM or a Ctrl-C outside a turn closes the agent (SIGTERM, ``killGraceSeconds``, SIGKILL)
without waiting for it to honour a cancel; any second signal (Ctrl-C or SIGTERM) skips the
kill grace: the agent's and its terminals' trees are SIGKILLed now
(:mod:`acpx_trio._cli.kill_now`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import shlex
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from acpx_trio._cli.exits import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    event_exit,
    exit_code_for,
)
from acpx_trio._cli.options import (
    OUTPUT_FORMATS,
    STATE_DIR_ENV,
    CommandParser,
    Options,
    UsageError,
    default_state_dir,
    resolve_options,
)
from acpx_trio._errors import AcpRuntimeError, AcpxError, ConfigError
from acpx_trio._events import ErrorEvent
from acpx_trio._store.config import (
    DEFAULT_STOP_TIMEOUT_SECONDS,
    PERMISSION_MODES,
)

if TYPE_CHECKING:  # Trio and the output loaded only by commands that run (never by --help)
    import trio

    from acpx_trio._cli.output import TurnPrinter

__all__ = ["default_state_dir", "main"]

#: Agent name under which ``--agent-command`` is registered for one invocation.
CUSTOM_AGENT = "custom"
#: Session key of ``prompt`` without ``--session`` (run in-process, not in the warm owner).
DEFAULT_SESSION = "cli:default"
#: Upper bound of the shielded clean-up after a turn (close the session, forget the record).
CLEANUP_SECONDS = DEFAULT_STOP_TIMEOUT_SECONDS
_log = logging.getLogger("acpx_trio.cli")



def _is_timeout(exc: AcpxError) -> bool:
    """A start-up step that hit its deadline.  The runtime reports it as
    ``ACP_SESSION_INIT_FAILED`` without a cause, so the message is the only clue."""
    import trio

    if isinstance(exc.__cause__, trio.TooSlowError):
        return True
    return exc.code == "ACP_SESSION_INIT_FAILED" and " did not answer " in exc.message and (
        " within " in exc.message)


# -- argument parsing -------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a global option may be given before or after the command name.
    p.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR",
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


def _add_agent_list_options(parser: argparse.ArgumentParser) -> None:
    """``--agent NAME`` / ``--agent-command CMD`` on ``sessions`` and ``logout``: calls on the
    agent itself (run by :mod:`acpx_trio._cli.protocol_cmds`); with ``sessions list``, the
    agent's own sessions (``session/list``) instead of ours."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--agent", dest="list_agent", default=None, metavar="NAME",
                       help="with list: the sessions agent NAME itself knows (session/list; "
                            "--cwd DIR: only those in DIR)")
    group.add_argument("--agent-command", dest="list_agent_command", default=None,
                       metavar="CMD", help="like --agent, for this ACP agent command line")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``acpx-trio``."""
    from acpx_trio._version import __version__

    parser = CommandParser(
        prog="acpx-trio",
        description="Drive ACP coding agents from a Trio runtime that never leaks a process.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage/config, 3 timeout, 4 no session, "
        "5 permission, 130 interrupted (SIGINT), 143 terminated (SIGTERM).",
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
    _add_agent_list_options(sessions)  # issue 21 (protocol)
    logout = sub.add_parser("logout", help="Log out of an agent (ACP logout, when offered).",
                            description="ACP logout: the agent ends its authenticated state; "
                            "its next session needs credentials again.")
    _common(logout)
    _add_agent_list_options(logout)

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


# -- prompt / exec ----------------------------------------------------------------------------
class _Interrupts:
    """Signal policy of a turn command (see the module docstring)."""

    def __init__(self, printer: TurnPrinter) -> None:
        import trio

        self.printer = printer
        self.work = trio.CancelScope()
        self.signum: int | None = None
        self.count = 0
        #: While a turn runs: send ``session/cancel``.
        self.cancel_turn: Callable[[], Awaitable[None]] | None = None
        #: Once the service runs: SIGKILL our launches now (the second signal).
        self.kill_now: Callable[[], Awaitable[object]] | None = None
        self.closing = False
        self.killing = False

    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    async def _call(self, op: Callable[[], Awaitable[object]]) -> None:
        try:
            await op()
        except AcpxError as exc:  # the runtime is already closing: nothing left to do
            _log.debug("%s after an interrupt failed: %s", op, exc)

    async def watch(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            self.count += 1
            if self.signum is None:
                self.signum = signum
            if self.count >= 2 and self.kill_now is not None and not self.killing:
                self.killing = True
                self.printer.note("signalled again: killing the agent now (no grace)")
                nursery.start_soon(self._call, self.kill_now)
            if self.closing:
                continue  # already stopping (bounded, and sped up above)
            cancel = self.cancel_turn
            if signum == signal.SIGINT and self.count == 1 and cancel is not None:
                self.printer.note("interrupted: cancelling the turn "
                                  "(press Ctrl-C again to stop the agent)")
                nursery.start_soon(self._call, cancel)
                continue
            what = "terminated" if signum == signal.SIGTERM else (
                "interrupted again" if self.count > 1 else "interrupted")
            self.printer.note(f"{what}: stopping the agent")
            self.closing = True
            # `work` encloses the runtime service and its root nursery: cancelling it stops
            # the turn driver and the agent process tasks at once (their clean-up kills the
            # tree; no waiting for the agent to honour a cancel), then the service's shielded
            # stop finalises the leases.
            self.work.cancel()


def _turn_config(ns: argparse.Namespace, opts: Options) -> tuple[dict[str, Any], str]:
    """The plugin config for this turn command and the agent name to use."""
    raw = dict(opts.raw_config)
    agent: str = ns.agent or "mock"
    if ns.agent_command is not None:
        try:
            argv = shlex.split(ns.agent_command)
        except ValueError as exc:
            raise UsageError(f"--agent-command: {exc}") from exc
        if not argv:
            raise UsageError("--agent-command must not be empty")
        agents = raw.get("agents")
        raw["agents"] = {**(agents if isinstance(agents, dict) else {}),
                         CUSTOM_AGENT: {"command": argv[0], "args": argv[1:]}}
        agent = CUSTOM_AGENT
    if ns.timeout is not None:
        if not ns.timeout > 0 or ns.timeout == float("inf"):
            raise UsageError(f"--timeout must be a positive number of seconds, got {ns.timeout}")
        raw["timeoutSeconds"] = ns.timeout
    if ns.permission_mode is not None:
        raw["permissionMode"] = ns.permission_mode
    if ns.no_fs:
        raw["fs"] = False
    if ns.no_terminal:
        raw["terminal"] = False
    if opts.cwd_given or "cwd" not in raw:
        raw["cwd"] = str(opts.cwd)
    return raw, agent


def _report_error(printer: TurnPrinter, exc: AcpxError) -> None:
    """The error on stderr (with its detail) and, with ``--json``, as an error event that
    carries the rpc code, data and detail."""
    event = ErrorEvent.from_error(exc)
    if printer.json_mode:
        printer.json(event)
    printer.failure(event.code, event.message, event.detail, event.rpc_data)




async def _stream_turn(runtime: Any, handle: Any, text: str, printer: TurnPrinter) -> int:
    code = EXIT_ERROR
    async with aclosing(runtime.run_turn(handle=handle, text=text)) as events:
        async for ev in events:
            ended = event_exit(ev, printer)
            code = code if ended is None else ended
    printer.finish()
    return code


async def _turn_session(
    *, raw: dict[str, Any], agent: str, session_key: str, oneshot: bool, text: str,
    opts: Options, printer: TurnPrinter, ctl: _Interrupts, model: str | None = None,
) -> int:
    import trio

    from acpx_trio._cli.kill_now import kill_own_launches
    from acpx_trio._service.open_service import open_runtime_service
    from acpx_trio._store.sessions import SessionStore

    mode: Literal["persistent", "oneshot"] = "oneshot" if oneshot else "persistent"
    try:
        async with open_runtime_service(workspace_dir=opts.cwd, state_dir=opts.state_dir,
                                        plugin_config=raw, logger=_log) as service:
            runtime = service.require_runtime()
            config = service.config
            assert config is not None
            gateway = service.gateway_instance_id
            if gateway is not None:
                ctl.kill_now = functools.partial(kill_own_launches, Path(opts.state_dir),
                                                 gateway)
            if opts.verbose:
                printer.note(f"starting agent {agent} in {config.cwd}")
            try:
                handle = await runtime.ensure_session(session_key=session_key, agent=agent,
                                                      mode=mode)
                if model is not None:  # issue 21 (protocol)
                    await runtime.set_model(handle=handle, model=model)  # type: ignore[attr-defined]
                if opts.verbose:
                    printer.note(f"session {session_key}: agent {handle.agent} pid "
                                 f"{handle.agent_pid}, ACP session {handle.backend_session_id}")
                    printer.note("turn started")

                async def cancel() -> None:
                    await runtime.cancel(handle=handle, reason="interrupted (SIGINT)")

                ctl.cancel_turn = cancel
                try:
                    return await _stream_turn(runtime, handle, text, printer)
                finally:
                    ctl.cancel_turn = None
            finally:
                if oneshot:  # the agent dies with the service; the record must go too
                    with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                        await SessionStore(config.state_dir).delete(session_key)
    except ConfigError as exc:
        _report_error(printer, exc)
        return EXIT_USAGE
    except AcpxError as exc:
        _report_error(printer, exc)
        return EXIT_TIMEOUT if _is_timeout(exc) else exit_code_for(exc.code)


async def _turn_command(ns: argparse.Namespace, opts: Options, *, oneshot: bool) -> int:
    import trio

    from acpx_trio._cli.output import Output, TurnPrinter
    from acpx_trio._cli.prompt_text import prompt_text as _prompt_text

    raw, agent = _turn_config(ns, opts)
    text = await _prompt_text(ns)
    session_key = f"exec:{uuid.uuid4().hex[:16]}" if oneshot else (ns.session or DEFAULT_SESSION)
    output = Output()
    printer = TurnPrinter(output, json_mode=opts.json, verbose=opts.verbose, quiet=opts.quiet)
    ctl = _Interrupts(printer)
    code = EXIT_ERROR
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.run)
            nursery.start_soon(ctl.watch, signals, nursery)
            with ctl.work:
                code = await _turn_session(raw=raw, agent=agent, session_key=session_key,
                                           oneshot=oneshot, text=text, opts=opts,
                                           printer=printer, ctl=ctl, model=ns.model)
            if ctl.work.cancelled_caught or (ctl.signum is not None and code == EXIT_INTERRUPTED):
                code = ctl.exit_code()
            printer.finish()
            with trio.move_on_after(CLEANUP_SECONDS):
                await output.drain()
            nursery.cancel_scope.cancel()
    return code


# -- entry point ------------------------------------------------------------------------------
async def _dispatch(ns: argparse.Namespace, opts: Options) -> int:
    if ns.command == "prompt" and ns.session is not None:
        from acpx_trio._cli.prompt_text import prompt_text as _prompt_text
        from acpx_trio._cli.warm import warm_prompt

        raw, agent = _turn_config(ns, opts)
        return await warm_prompt(ns, opts, raw=raw, agent=agent, text=await _prompt_text(ns))
    if ns.command in ("prompt", "exec"):
        return await _turn_command(ns, opts, oneshot=ns.command == "exec")
    if ns.command in ("set", "set-mode"):
        from acpx_trio._cli.warm import control_command

        if ns.command == "set-mode":
            return await control_command(ns.session, "mode", ns.mode, None, opts)
        action = "model" if ns.key == "model" else "option"
        return await control_command(ns.session, action, ns.value,
                                     None if action == "model" else ns.key, opts)
    if ns.command in ("cancel", "status"):
        from acpx_trio._cli import warm as _cli_warm

        if ns.command == "cancel":
            return await _cli_warm.cancel_command(ns.session, opts)
        return await _cli_warm.status_command(ns.session, opts)
    from acpx_trio._cli import info as _cli_info
    from acpx_trio._cli import protocol_cmds as _cli_protocol  # issue 21 (protocol)
    if _cli_protocol.wants_agent_list(ns):
        return await _cli_protocol.agent_sessions_command(ns, opts)
    if ns.command == "sessions" and ns.action == "delete":
        raise UsageError("sessions delete ID needs --agent NAME (or --agent-command CMD): it "
                         "deletes the agent's own session; `sessions close KEY` ends ours")
    if ns.command == "sessions":
        return await _cli_info.sessions_command(ns.action, ns.key, opts)
    if ns.command == "agents":
        return await _cli_info.agents_command(opts)
    if ns.command == "doctor":
        if ns.timeout is not None and not ns.timeout > 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {ns.timeout}")
        return await _cli_info.doctor_command(ns.agent, ns.timeout, opts, deep=ns.deep)
    if ns.command == "leases":
        return await _cli_info.leases_command(ns.all, opts)
    if ns.command == "config":
        from acpx_trio._cli.config_cmd import config_command

        return await config_command(ns.action, opts, project=ns.project, force=ns.force)
    if ns.command == "reap":
        from acpx_trio._cli.reap import reap_command

        return await reap_command(state_dir=opts.state_dir, dry_run=ns.dry_run,
                                  json_mode=opts.json)
    raise UsageError(f"unknown command {ns.command!r}")


def _leaf(exc: BaseException) -> BaseException:
    """The only exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _fail(message: str) -> None:
    from acpx_trio._cli.output import first_line, printable

    print(f"acpx-trio: {printable(first_line(message))}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    ns = build_parser().parse_args(argv)
    verbose = bool(getattr(ns, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="acpx-trio: %(message)s")
    try:
        opts = resolve_options(ns)  # before the event loop: it reads files
        import trio  # only now: --help, --version and a usage error never load it

        return trio.run(_dispatch, ns, opts)
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, UsageError | ConfigError):
            _fail(str(exc))
            return EXIT_USAGE
        if isinstance(exc, AcpRuntimeError | AcpxError):
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

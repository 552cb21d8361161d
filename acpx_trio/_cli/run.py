"""What runs inside the event loop once a command line is parsed: the dispatch of every
command, and the turn commands ``prompt`` (without ``--session``) and ``exec``.

Guarantees of ``prompt`` (without ``--session``) and ``exec``: the reply streams to stdout as
it arrives; however the command ends (end of turn, error, timeout, Ctrl-C, SIGTERM) the
agent's process tree is gone when it exits and its lease is final.  The first Ctrl-C during a
turn sends ``session/cancel`` (the agent gets a bounded time to stop, then is killed); a
SIGTERM or a Ctrl-C outside a turn closes the agent (SIGTERM, ``killGraceSeconds``, SIGKILL)
without waiting for it to honour a cancel; any second signal (Ctrl-C or SIGTERM) skips the
kill grace: the agent's and its terminals' trees are SIGKILLed now
(:mod:`acpx_trio._service.kill_now`).

Only :func:`acpx_trio._cli.main.main` imports this module, after parsing: Trio and the
output load here, never for ``--help``, ``--version`` or a usage error.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal

import trio

from acpx_trio._cli.exits import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    STOP_SIGNALS,
    event_exit,
    exit_code_for,
    signal_exit,
)
from acpx_trio._cli.options import Options, UsageError
from acpx_trio._cli.output import Output, TurnPrinter, finish_output
from acpx_trio._cli.prompt_text import prompt_text as _prompt_text
from acpx_trio._errors import AcpxError, ConfigError
from acpx_trio._events import ErrorEvent
from acpx_trio._store.config import DEFAULT_STOP_TIMEOUT_SECONDS

__all__ = ["dispatch"]

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
    if isinstance(exc.__cause__, trio.TooSlowError):
        return True
    return exc.code == "ACP_SESSION_INIT_FAILED" and " did not answer " in exc.message and (
        " within " in exc.message)


# -- prompt / exec ----------------------------------------------------------------------------
class _Interrupts:
    """Signal policy of a turn command (see the module docstring)."""

    def __init__(self, printer: TurnPrinter) -> None:
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
        return signal_exit(self.signum)

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
            self.printer.output.unbound()  # the turn's end is read whatever stdout does
            if self.count >= 2 and self.kill_now is not None and not self.killing:
                self.killing = True
                self.printer.note("signalled again: killing the agent now (no grace)")
                nursery.start_soon(self._call, self.kill_now)
            if self.closing:
                self.work.cancel()  # the wait for stdout, once the turn is over
                continue  # already stopping (bounded, and sped up above)
            cancel = self.cancel_turn
            if signum == signal.SIGINT and self.count == 1 and cancel is not None:
                self.printer.note("interrupted: cancelling the turn "
                                  "(press Ctrl-C again to stop the agent)")
                nursery.start_soon(self._call, cancel)
                continue
            what = ("terminated" if signum == signal.SIGTERM else "hung up"
                    if signum == signal.SIGHUP else
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
            if printer.output.full:  # stdout lags: the agent waits on its pipe meanwhile
                await printer.output.wait_room()
    printer.finish()
    return code


async def _turn_session(
    *, raw: dict[str, Any], agent: str, session_key: str, oneshot: bool, text: str,
    opts: Options, printer: TurnPrinter, ctl: _Interrupts, model: str | None = None,
) -> int:
    from acpx_trio._service.kill_now import kill_own_launches
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
    raw, agent = _turn_config(ns, opts)
    text = await _prompt_text(ns)
    session_key = f"exec:{uuid.uuid4().hex[:16]}" if oneshot else (ns.session or DEFAULT_SESSION)
    output = Output()
    printer = TurnPrinter(output, json_mode=opts.json, verbose=opts.verbose, quiet=opts.quiet)
    ctl = _Interrupts(printer)
    code = EXIT_ERROR
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
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
            ctl.work = trio.CancelScope()  # a signal now ends the wait for stdout
            if ctl.closing:  # and so does one that came already (while the turn ended)
                ctl.work.cancel()
            with ctl.work:
                code = await finish_output(output, code)
            if ctl.work.cancelled_caught or (ctl.signum is not None and output.unwritten):
                code = ctl.exit_code()  # interrupted, and the output is not all out
                await output.flush_notes()
            nursery.cancel_scope.cancel()
    return code


async def _known_secrets(opts: Options) -> list[str] | None:
    """The credentials the config knows (``auth``, MCP servers) and the environment's, for
    a command that needs no config: ``None`` (the environment's alone) when the config does
    not resolve (such a command still works then)."""
    from acpx_trio._cli.info import _resolve
    from acpx_trio._store.transcript import config_credentials

    try:
        return config_credentials(await _resolve(opts.raw_config, opts))
    except ConfigError:
        return None


async def dispatch(ns: argparse.Namespace, opts: Options) -> int:
    """Run the parsed command (in the event loop); its exit code."""
    if ns.command == "prompt" and ns.session is not None:
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
                                  json_mode=opts.json, secrets=await _known_secrets(opts))
    raise UsageError(f"unknown command {ns.command!r}")
